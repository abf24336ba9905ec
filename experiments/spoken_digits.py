r"""Spoken digits (SYNTHETIC speech): keywords and digit strings of unheard voices, and noise.

python experiments/spoken_digits.py --workdir workdirs/spoken_digits

Data: `spoken_digits` (dl/data/builders/spoken_digits.py), eSpeak NG speech at 8 kHz; the test
voice variants are never heard in training. Models take raw int16 audio: log-mels are
computed on the device as their first layer (`dl.models.LogMel`).

1. Keyword CNN (`dl.models.KeywordCNN`) on `isolated` digits through `dl.fit`; 10% of the
   train examples (train voices) held out choose the checkpoint by accuracy; test scored once.
2. CTC recogniser (`dl.models.CTCRecognizer`: conv front end, 2-layer bidirectional GRU) on
   `strings` of 3-7 digits through `dl.fit` with `dl.apps.speech.ctc_objective`; validation WER
   (greedy, `dl.apps.speech.TranscriptErrorRates`) chooses the checkpoint; test WER/CER (jiwer) of
   greedy and beam-search decoding, once.
3. Baseline in the same run: the keyword CNN applied to evenly split segments of each test
   string's speech (found by frame energy), with the true digit count (an oracle the CTC
   model does not get) and with the count estimated from the speech's duration.
4. Noise: white noise added to the test audio at 20, 10, 5 and 0 dB SNR (relative to each
   recording's power); keyword accuracy and string WER at each.
Writes `results.md`, `transcripts.png` (test spectrograms with decoded transcripts) and each
model's checkpoints and metrics in the workdir; a rerun resumes from them. `--tiny`: a few
steps on a few examples (a smoke run; its numbers mean nothing).
"""

import argparse
import dataclasses
import os
import platform
import time

import jax
import matplotlib
import numpy as np
import optax

import dl
from dl.apps import speech
from dl.data import sources

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

INPUTS = ("audio", "num_samples")
SNRS_DB = (None, 20.0, 10.0, 5.0, 0.0)  # None: the test audio as it is
FRAME = 80  # samples per 10 ms frame at 8 kHz, for finding speech by energy


@dataclasses.dataclass(frozen=True)
class Settings:
  """The study's knobs (each default written once)."""

  seed: int = 0
  validation_fraction: float = 0.1
  keyword_features: int = 16
  keyword_epochs: int = 12
  keyword_batch: int = 64
  keyword_lr: float = 3e-3
  ctc_conv: int = 32
  ctc_hidden: int = 96
  ctc_layers: int = 2
  ctc_epochs: int = 12
  ctc_batch: int = 32
  ctc_lr: float = 2e-3
  beam_width: int = 8
  limit: int | None = None  # examples per split (tiny runs)
  max_steps: int | None = None  # steps per model (tiny runs)


TINY = Settings(
  keyword_features=4,
  keyword_batch=16,
  ctc_conv=4,
  ctc_hidden=8,
  ctc_layers=1,
  ctc_batch=16,
  beam_width=2,
  limit=48,
  max_steps=3,
)


def load(config: str, split: str, limit: int | None) -> dict[str, np.ndarray]:
  """A split's model inputs and labels (and voices), at most `limit` examples."""
  arrays = dl.data.load(f"spoken_digits/{config}", split)
  keys = ["num_samples", "label"] + (["num_digits"] if config == "strings" else [])
  as_int32 = {k: arrays[k][:limit].astype(np.int32) for k in keys}
  return {"audio": arrays["audio"][:limit], "variant": arrays["variant"][:limit], **as_int32}


def model_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The numeric arrays a task trains on (the voice names stay out)."""
  return {k: arrays[k] for k in (*INPUTS, "label")}


def schedule(lr: float, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(num_steps // 20, 1), num_steps)


def fit_config(s: Settings, steps: int, batch: int, steps_per_epoch: int, **kw) -> dl.FitConfig:
  """Evaluate (and choose checkpoints) once per epoch; quiet in tiny runs."""
  return dl.FitConfig(
    num_steps=steps,
    batch_size=batch,
    eval_batch_size=250,
    seed=s.seed,
    eval_every=max(steps_per_epoch, 1),
    log_every=max(steps_per_epoch, 1),
    progress=s.max_steps is None,
    tensorboard=False,
    **kw,
  )


def train_keywords(s: Settings, train, test, workdir: str):
  """The keyword CNN through dl.fit: (task, best state, test record)."""
  fit_train, validation = sources.split_validation(model_arrays(train), s.validation_fraction)
  per_epoch = len(fit_train["label"]) // s.keyword_batch
  steps = s.max_steps or s.keyword_epochs * per_epoch
  task = dl.task(
    model=dl.Linen(dl.models.KeywordCNN(features=s.keyword_features), inputs=INPUTS),
    objective=dl.core.objectives.classification,
    optimizer=optax.adamw(schedule(s.keyword_lr, steps), weight_decay=1e-4),
    train=fit_train,
    eval=validation,
    test=model_arrays(test),
    class_names=speech.DIGIT_WORDS,
    name="KeywordCNN/spoken_digits",
  )
  config = fit_config(s, steps, s.keyword_batch, per_epoch)
  _, history = dl.fit(task, workdir, config)
  best = dl.restore(task, workdir, step="best", fit=config)
  return task, best, history["test"][-1]


def train_ctc(s: Settings, train, test, workdir: str):
  """The CTC recogniser through dl.fit, checkpoints chosen by validation WER."""
  fit_train, validation = sources.split_validation(model_arrays(train), s.validation_fraction)
  per_epoch = len(fit_train["label"]) // s.ctc_batch
  steps = s.max_steps or s.ctc_epochs * per_epoch
  model = dl.Linen(
    dl.models.CTCRecognizer(
      conv_features=s.ctc_conv, hidden=s.ctc_hidden, num_layers=s.ctc_layers, cell="gru"
    ),
    inputs=INPUTS,
  )
  task = dl.task(
    model=model,
    objective=speech.ctc_objective,
    optimizer=optax.chain(
      optax.clip_by_global_norm(5.0), optax.adamw(schedule(s.ctc_lr, steps), weight_decay=1e-4)
    ),
    train=fit_train,
    eval=validation,
    test=model_arrays(test),
    name="CTCRecognizer/spoken_digits",
  )
  hook = speech.TranscriptErrorRates(model, {"eval": validation, "test": model_arrays(test)})
  config = fit_config(s, steps, s.ctc_batch, per_epoch, best_metric="wer", best_mode="min")
  _, history = dl.fit(task, workdir, config, hooks=[hook])
  best = dl.restore(task, workdir, step="best", fit=config)
  return task, best, history["test"][-1]


def add_noise(arrays, snr_db: float | None, seed: int) -> dict[str, np.ndarray]:
  """The arrays with white noise at `snr_db` over each recording's valid samples."""
  if snr_db is None:
    return arrays
  rng = np.random.default_rng(seed)
  audio = arrays["audio"].astype(np.float64)
  valid = np.arange(audio.shape[1])[None, :] < arrays["num_samples"][:, None]
  power = np.sum(np.square(audio) * valid, axis=1) / arrays["num_samples"]
  noise = rng.normal(size=audio.shape) * np.sqrt(power / 10 ** (snr_db / 10))[:, None]
  noisy = np.clip(np.round(audio + noise * valid), -32768, 32767).astype(np.int16)
  return {**arrays, "audio": noisy}


def keyword_accuracy(task, state, arrays) -> float:
  return dl.evaluate(state, task.model, model_arrays(arrays), 250, task.objective)["accuracy"]


def string_error_rates(task, state, arrays, beam_width: int = 0) -> dict[str, float]:
  """WER/CER (jiwer) of the CTC model's transcripts of `arrays`."""
  decoded = speech.transcribe(state, task.model, arrays, beam_width=beam_width)
  references = [speech.labels_to_text(row) for row in arrays["label"]]
  return speech.error_rates(references, [speech.tokens_to_text(t) for t in decoded])


def speech_span(audio: np.ndarray, num_samples: int) -> tuple[int, int]:
  """(start, end) samples of the frames whose energy is within 30 dB of the loudest frame."""
  frames = audio[: num_samples // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
  energy_db = 10 * np.log10(np.mean(np.square(frames), axis=1) + 1e-9)
  loud = np.flatnonzero(energy_db > energy_db.max() - 30.0)
  return int(loud[0] * FRAME), int((loud[-1] + 1) * FRAME)


def even_segments(arrays, counts: np.ndarray, window: int) -> dict[str, np.ndarray]:
  """Each string's speech cut into counts[i] equal segments, each padded to `window` samples."""
  pieces, lengths = [], []
  for audio, n, count in zip(arrays["audio"], arrays["num_samples"], counts):
    start, end = speech_span(audio, int(n))
    for edges in np.array_split(np.arange(start, end), max(int(count), 1)):
      piece = audio[edges[0] : edges[-1] + 1][:window]
      pieces.append(np.pad(piece, (0, window - len(piece))))
      lengths.append(len(piece))
  return {"audio": np.stack(pieces), "num_samples": np.array(lengths, np.int32)}


def segment_baseline(keyword_task, keyword_state, arrays, counts) -> dict[str, float]:
  """WER/CER of the keyword CNN's digits for evenly split segments of each string."""
  window = keyword_task.inputs["audio"][0][0]
  segments = even_segments(arrays, counts, window)
  digits = np.argmax(dl.predict(keyword_task, keyword_state, segments), axis=-1)
  hypotheses, start = [], 0
  for count in counts:
    count = max(int(count), 1)
    hypotheses.append(speech.labels_to_text(digits[start : start + count]))
    start += count
  references = [speech.labels_to_text(row) for row in arrays["label"]]
  return speech.error_rates(references, hypotheses)


def estimated_counts(train, test) -> np.ndarray:
  """Digits per test string from its speech duration (mean seconds per digit on train)."""

  def durations(arrays):
    return np.array(
      [np.diff(speech_span(a, int(n)))[0] for a, n in zip(*(arrays[k] for k in INPUTS))]
    )

  per_digit = np.sum(durations(train)) / np.sum(train["num_digits"])
  return np.clip(np.round(durations(test) / per_digit), 1, 7).astype(int)


def per_voice_accuracy(task, state, arrays) -> list[tuple[str, float, int]]:
  """(variant, keyword accuracy, examples) for each test voice variant, worst first."""
  predicted = np.argmax(dl.predict(task, state, {k: arrays[k] for k in INPUTS}), axis=-1)
  correct = predicted == arrays["label"]
  variants = np.array([v.decode() for v in arrays["variant"]])
  rows = [
    (v, float(correct[variants == v].mean()), int(np.sum(variants == v))) for v in set(variants)
  ]
  return sorted(rows, key=lambda row: (row[1], row[0]))


def draw(path: str, task, state, arrays, beam_width: int, count: int = 4) -> None:
  """Log-mel spectrograms of test strings, titled with the reference and the decodings."""
  shown = {k: arrays[k][:count] for k in (*INPUTS, "label")}
  greedy = speech.transcribe(state, task.model, shown)
  beam = speech.transcribe(state, task.model, shown, beam_width=beam_width)
  features, frames = jax.jit(dl.models.LogMel(normalize=False).apply)(
    {}, shown["audio"], shown["num_samples"]
  )
  fig, axes = plt.subplots(count, 1, figsize=(10, 2.3 * count))
  for i, ax in enumerate(np.atleast_1d(axes)):
    ax.imshow(np.asarray(features[i, : frames[i]]).T, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(
      f"truth: {speech.labels_to_text(shown['label'][i])}  |  greedy: "
      f"{speech.tokens_to_text(greedy[i])}  |  beam {beam_width}: {speech.tokens_to_text(beam[i])}",
      fontsize=9,
    )
    ax.set_ylabel("mel band")
  np.atleast_1d(axes)[-1].set_xlabel("frame (10 ms)")
  fig.suptitle("spoken_digits strings test, unheard voices (SYNTHETIC speech, eSpeak NG)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run(workdir: str, s: Settings = Settings()) -> dict:
  """Trains both models, scores them, the baseline and the noise levels; writes the results.

  Returns:
    {"keyword": test record, "ctc": {...}, "baseline": {...}, "noise": [...], ...}.
  """
  start = time.perf_counter()
  data = {
    (c, sp): load(c, sp, s.limit) for c in ("isolated", "strings") for sp in ("train", "test")
  }
  prepared = time.perf_counter() - start
  kw_task, kw_state, kw_test = train_keywords(
    s, data["isolated", "train"], data["isolated", "test"], os.path.join(workdir, "keyword_cnn")
  )
  kw_seconds = time.perf_counter() - start - prepared
  ctc_task, ctc_state, ctc_test = train_ctc(
    s, data["strings", "train"], data["strings", "test"], os.path.join(workdir, "ctc")
  )
  ctc_seconds = time.perf_counter() - start - prepared - kw_seconds
  strings_test = data["strings", "test"]
  results = {
    "keyword": kw_test,
    "ctc_greedy": string_error_rates(ctc_task, ctc_state, strings_test),
    "ctc_beam": string_error_rates(ctc_task, ctc_state, strings_test, s.beam_width),
    "ctc_step": ctc_test["step"],
    "baseline_oracle": segment_baseline(
      kw_task, kw_state, strings_test, strings_test["num_digits"]
    ),
    "baseline_estimated": segment_baseline(
      kw_task,
      kw_state,
      strings_test,
      estimated_counts(data["strings", "train"], strings_test),
    ),
    "voices": per_voice_accuracy(kw_task, kw_state, data["isolated", "test"]),
    "noise": [
      {
        "snr_db": snr,
        "keyword_accuracy": keyword_accuracy(
          kw_task, kw_state, add_noise(data["isolated", "test"], snr, s.seed + 1)
        ),
        **string_error_rates(ctc_task, ctc_state, add_noise(strings_test, snr, s.seed + 2)),
      }
      for snr in SNRS_DB
    ],
    "sizes": {f"{c}/{sp}": len(a["label"]) for (c, sp), a in data.items()},
    "seconds": {"data": prepared, "keyword": kw_seconds, "ctc": ctc_seconds},
  }
  draw(os.path.join(workdir, "transcripts.png"), ctc_task, ctc_state, strings_test, s.beam_width)
  results["seconds"]["total"] = time.perf_counter() - start
  markdown = results_markdown(results, s)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown)
  print(markdown)
  return results


def results_markdown(r: dict, s: Settings) -> str:
  """The tables of the README's "Spoken digits" section."""
  kw, greedy, beam = r["keyword"], r["ctc_greedy"], r["ctc_beam"]
  oracle, estimated = r["baseline_oracle"], r["baseline_estimated"]

  def row(name, rates):
    return f"| {name} | {rates['wer']:.2%} | {rates['cer']:.2%} | {rates['string_accuracy']:.1%} |"

  worst = ", ".join(f"{v} {a:.0%} (of {n})" for v, a, n in r["voices"][:5])
  seconds = r["seconds"]
  machine = (
    f"{platform.machine()} {os.cpu_count()} cores, {jax.device_count()} "
    f"{jax.default_backend()} device(s)"
  )
  wall = (
    f"data {seconds['data']:.0f} s, keyword CNN {seconds['keyword']:.0f} s, CTC "
    f"{seconds['ctc']:.0f} s, all {seconds['total']:.0f} s"
  )
  lines = [
    f"SYNTHETIC speech (eSpeak NG). Sizes: {r['sizes']}. Seed {s.seed}; {machine}. Wall: {wall}.",
    "",
    "| isolated digits, unheard voices | test accuracy |",
    "|---|---|",
    f"| keyword CNN (best validation checkpoint, step {kw['step']}) | {kw['accuracy']:.2%} |",
    "",
    f"Worst test voice variants (keyword CNN): {worst}.",
    "",
    "| digit strings (3-7 digits), unheard voices | WER | CER | strings exactly right |",
    "|---|---|---|---|",
    row(f"CTC BiGRU, greedy (best validation WER, step {r['ctc_step']})", greedy),
    row(f"CTC BiGRU, prefix beam search (width {s.beam_width})", beam),
    row("baseline: keyword CNN on evenly split segments, true digit count (oracle)", oracle),
    row("baseline: keyword CNN on evenly split segments, count from duration", estimated),
    "",
    "| added white noise (SNR) | keyword accuracy | CTC greedy WER | CTC greedy CER |",
    "|---|---|---|---|",
  ]
  for n in r["noise"]:
    snr = "none (test audio as built)" if n["snr_db"] is None else f"{n['snr_db']:.0f} dB"
    lines.append(f"| {snr} | {n['keyword_accuracy']:.2%} | {n['wer']:.2%} | {n['cer']:.2%} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/spoken_digits")
  parser.add_argument("--tiny", action="store_true", help="a few steps on a few examples")
  args = parser.parse_args()
  run(args.workdir, TINY if args.tiny else Settings())


if __name__ == "__main__":
  main()
