"""Speech: the SYNTHETIC spoken-digit builder, the log-mel front end, CTC decoding and training."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.signal

import dl
from dl.apps import speech
from dl.data.builders import spoken_digits
from dl.models import speech as speech_models

pytest.importorskip("espeakng_loader")
librosa_filters = pytest.importorskip("librosa.filters")

TINY_SIZES = {"isolated": {"train": 6, "test": 4}, "strings": {"train": 2, "test": 2}}


@pytest.fixture(autouse=True)
def fast_random_compile():
  """Non-partitionable threefry: compiling parameter init is ~6x faster on CPU (same math)."""
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture
def tiny_builds(monkeypatch, tmp_path):
  """Tiny splits in a data dir of their own (the session's must not hold stand-ins)."""
  monkeypatch.setenv("DL_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setattr(spoken_digits, "SPLIT_SIZES", TINY_SIZES)


def _variants(arrays) -> set[str]:
  return {v.decode() for v in arrays["variant"]}


def test_splits_share_no_voice_variant_and_the_seed_fixes_the_audio(tiny_builds):
  variants = spoken_digits.split_variants()
  assert not set(variants["train"]) & set(variants["test"])
  assert len(variants["train"]) + len(variants["test"]) >= 100  # eSpeak NG's ~100 variants
  splits = {s: dl.data.load("spoken_digits/isolated", s) for s in ("train", "test")}
  for split, arrays in splits.items():
    assert _variants(arrays) <= set(variants[split])
    assert arrays["audio"].shape == (TINY_SIZES["isolated"][split], 8000)
    assert arrays["audio"].dtype == np.int16
    assert np.all((arrays["num_samples"] > 0) & (arrays["num_samples"] <= 8000))
    for audio, n in zip(arrays["audio"], arrays["num_samples"]):
      assert not audio[n:].any() and np.abs(audio[:n]).max() > 100
    words = [spoken_digits.DIGITS[d] for d in arrays["label"]]
    assert words == [t.decode() for t in arrays["transcript"]]
  assert not _variants(splits["train"]) & _variants(splits["test"])
  # The builder's bytes are `generate`'s from the config's seed (TFDS shuffles the order);
  # another seed changes them.
  again = spoken_digits.generate(spoken_digits.ISOLATED, "test", TINY_SIZES["isolated"]["test"])
  assert _rows(again["audio"]) == _rows(splits["test"]["audio"])
  other = spoken_digits.generate(spoken_digits.ISOLATED, "test", 4, seed=7)
  assert not set(_rows(other["audio"])) & set(_rows(again["audio"]))


def _rows(audio_NxS: np.ndarray) -> list[bytes]:
  return sorted(row.tobytes() for row in audio_NxS)


def test_digit_strings_config(tiny_builds):
  arrays = dl.data.load("spoken_digits/strings", "test")
  assert arrays["audio"].shape == (2, 24000) and arrays["label"].shape == (2, 7)
  for label, count, transcript in zip(arrays["label"], arrays["num_digits"], arrays["transcript"]):
    assert 3 <= count <= 7 and np.all(label[:count] >= 0) and np.all(label[count:] == -1)
    assert speech.labels_to_text(label) == transcript.decode()
  assert _variants(arrays) <= set(spoken_digits.split_variants()["test"])


def _numpy_log_mel(audio_N: np.ndarray, front_end: speech_models.LogMel) -> np.ndarray:
  """The reference: float64 frames, scipy's Hann window, numpy's FFT, librosa's filterbank."""
  y = audio_N.astype(np.float64) / 32768.0
  n_fft, hop = front_end.n_fft, front_end.hop_length
  frames = np.stack([y[s : s + n_fft] for s in range(0, len(y) - n_fft + 1, hop)])
  power = np.abs(np.fft.rfft(frames * scipy.signal.get_window("hann", n_fft), axis=1)) ** 2
  bank = librosa_filters.mel(
    sr=front_end.sample_rate, n_fft=n_fft, n_mels=front_end.n_mels, fmin=front_end.fmin
  )
  return np.log(power @ bank.T.astype(np.float64) + 1e-6)


def test_log_mel_front_end_matches_librosa_filterbank():
  front_end = speech_models.LogMel(normalize=False)
  bank = speech_models.mel_filterbank(8000, 256, 40, 20.0, None)
  np.testing.assert_array_equal(
    bank, librosa_filters.mel(sr=8000, n_fft=256, n_mels=40, fmin=20.0, dtype=np.float32)
  )
  rng = np.random.default_rng(0)
  t = np.arange(4000) / 8000
  tone = 8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 300, 4000)
  audio = np.stack([tone, rng.normal(0, 3000, 4000)]).astype(np.int16)
  num_samples = np.array([4000, 2500], np.int32)
  features, frames = jax.jit(front_end.apply)({}, audio, num_samples)
  assert frames.tolist() == [47, 29]  # 1 + (n - 256) // 80 frames wholly inside
  for i in range(2):
    reference = _numpy_log_mel(audio[i, : num_samples[i]], front_end)
    np.testing.assert_allclose(features[i, : frames[i]], reference, atol=1e-5, rtol=0)
  assert not np.asarray(features[1, 29:]).any()
  normalized, _ = speech_models.LogMel().apply({}, audio, num_samples)
  np.testing.assert_allclose(np.mean(normalized[1, :29], axis=0), 0.0, atol=1e-4)


def test_models_take_raw_audio_and_ignore_padding():
  rng = np.random.default_rng(1)
  audio = rng.normal(0, 2000, (2, 1200)).astype(np.int16)
  num_samples = np.array([700, 700], np.int32)
  audio[0, 700:] = 0  # the same recording, then zeros or noise after its end
  audio[1, :700] = audio[0, :700]
  cnn = speech_models.KeywordCNN(features=4, hidden=8)
  variables = jax.jit(cnn.init)(jax.random.PRNGKey(0), audio, num_samples)
  logits = jax.jit(cnn.apply)(variables, audio, num_samples)
  assert logits.shape == (2, 10)
  np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
  # The CTC model: more padding after the same recordings changes nothing (its strided
  # convolutions pad explicitly, so frames do not shift with the array's length).
  num_samples = np.array([1200, 700], np.int32)
  longer = np.pad(audio[:1], ((0, 0), (0, 500)))
  ctc = speech_models.CTCRecognizer(conv_features=4, hidden=8, num_layers=1)
  variables = jax.jit(ctc.init)(jax.random.PRNGKey(0), audio, num_samples)
  short = jax.jit(ctc.apply)(variables, audio, num_samples)
  assert short["logits"].shape == (2, 3, 11)  # 12 frames, halved twice
  assert short["num_frames"].tolist() == [3, 2]  # 12 and 6 frames, halved twice (rounded up)
  long = jax.jit(ctc.apply)(variables, np.concatenate([longer, longer]), num_samples[:1].repeat(2))
  np.testing.assert_allclose(short["logits"][0], long["logits"][0, :3], atol=1e-5)


def _logits(frames: list[int], vocab: int = 11) -> np.ndarray:
  """Logits whose argmax at frame t is frames[t] (by a margin of 10)."""
  return 10.0 * np.eye(vocab, dtype=np.float32)[frames]


def test_ctc_greedy_decoding_of_hand_built_logits():
  # tokens: blank 0, digit d = d + 1. "3 3 _ 3 1 1 _ 5" -> 3 3 1 5 -> digits 2 2 0 4; the last
  # valid frame of the second example is 6, so its trailing "9" is padding.
  first = _logits([3, 3, 0, 3, 1, 1, 0, 5])
  second = _logits([0, 8, 8, 8, 0, 0, 10, 10])
  tokens, lengths = jax.jit(speech.greedy_decode)(np.stack([first, second]), np.array([8, 6]))
  assert lengths.tolist() == [4, 1]
  assert tokens.tolist() == [[3, 3, 1, 5, -1, -1, -1, -1], [8, -1, -1, -1, -1, -1, -1, -1]]
  assert speech.tokens_to_text(tokens[0]) == "two two zero four"
  beam, _ = speech.beam_search_decode(jax.nn.log_softmax(first), beam_width=4)
  assert beam == (3, 3, 1, 5)
  # The objective: CTC on the right label is far below the loss on a wrong one.
  outputs = {"logits": jnp.stack([first, first]), "num_frames": jnp.array([8, 8])}
  batch = {"label": np.array([[2, 2, 0, 4, -1], [2, 0, 4, -1, -1]])}
  loss, metrics = jax.jit(speech.ctc_objective)(outputs, batch)
  assert loss[0] < 0.1 and loss[1] > 5.0
  assert metrics["string_accuracy"].tolist() == [1.0, 0.0]


def test_beam_search_finds_the_most_probable_labelling():
  """Exhaustive: the labelling whose frame paths sum highest, which best path can miss."""
  num_t, vocab = 5, 3
  rng = np.random.default_rng(0)
  for _ in range(3):
    log_probs = np.asarray(jax.nn.log_softmax(rng.normal(0, 1.5, (num_t, vocab))), np.float64)
    totals = {}
    for path in itertools.product(range(vocab), repeat=num_t):
      collapsed = tuple(t for i, t in enumerate(path) if t and (i == 0 or path[i - 1] != t))
      logp = sum(log_probs[t, v] for t, v in enumerate(path))
      totals[collapsed] = np.logaddexp(totals.get(collapsed, -np.inf), logp)
    best = max(totals, key=totals.get)
    found, logp = speech.beam_search_decode(log_probs, beam_width=64)
    assert found == best
    np.testing.assert_allclose(logp, totals[best], rtol=1e-9)
  # Each frame: blank 0.6, "1" 0.4. The best path is blank-blank (0.36): greedy says "";
  # the paths "1_", "_1" and "11" sum to 0.64, so the most probable labelling is "1".
  log_probs = np.log(np.array([[0.6, 0.4, 1e-12], [0.6, 0.4, 1e-12]]))
  _, greedy_length = speech.greedy_decode(log_probs[None], np.array([2]))
  assert greedy_length.tolist() == [0]
  found, logp = speech.beam_search_decode(log_probs, beam_width=4)
  assert found == (1,) and np.isclose(np.exp(logp), 0.64)


def test_error_rates_by_jiwer():
  rates = speech.error_rates(["one two three", "four"], ["one three", "four"])
  # CER counts spaces: "two " is 4 of the 17 reference characters.
  assert rates == {"wer": 0.25, "cer": pytest.approx(4 / 17), "string_accuracy": 0.5}
  with pytest.raises(ValueError, match="one hypothesis per reference"):
    speech.error_rates(["one"], [])


class FrameClassifier(nn.Module):
  """The smallest CTC model: 10 ms frames of raw samples -> per-frame logits.

  (`dl.fit` initialises a model op by op, so a model with few ops keeps this test short.)
  """

  @nn.compact
  def __call__(self, audio, num_samples):
    frames = audio.reshape(audio.shape[0], -1, 80).astype(jnp.float32) / 32768.0
    return {"logits": nn.Dense(11)(frames), "num_frames": num_samples // 80}


def test_ctc_objective_trains_through_fit_and_reports_wer(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
    "audio": rng.normal(0, 2000, (4, 1200)).astype(np.int16),
    "num_samples": np.array([1200, 1200, 1000, 800], np.int32),
    "label": np.array([[3, 1, -1], [4, -1, -1], [1, 5, 9], [2, 6, -1]], np.int32),
  }
  model = dl.Linen(FrameClassifier(), inputs=("audio", "num_samples"))
  task = dl.task(
    model=model,
    objective=speech.ctc_objective,
    optimizer=optax.adam(1e-2),
    train=arrays,
    eval=arrays,
  )
  state, history = dl.fit(
    task,
    str(tmp_path),
    num_steps=1,
    batch_size=4,
    best_metric="wer",
    best_mode="min",
    progress=False,
    tensorboard=False,
    hooks=[speech.TranscriptErrorRates(model, {"eval": arrays})],
  )
  record = history["eval"][-1]
  assert {"loss", "wer", "cer", "string_accuracy"} <= set(record) and record["wer"] >= 0.0
  assert np.isfinite(history["train"][-1]["loss"])
  decoded = speech.transcribe(state, model, arrays, beam_width=2)
  assert len(decoded) == 4 and all(1 <= t <= 10 for tokens in decoded for t in tokens)
