"""The `spoken_digits` data set: SYNTHETIC spoken digits by eSpeak NG, unheard voices in test.

Speech is synthesised with eSpeak NG (`dl.data.espeak`: the library and its voices ship in
the pip package `espeakng-loader`; nothing is downloaded) and resampled to 8 kHz, the
telephone band of connected-digit benchmarks such as Aurora 2. Speakers differ by eSpeak's
~100 voice variants ("m1" ... "m8", "f1" ... "f5", "Alex", "whisper", "klatt", ...), an
English accent (8: en, en-029, en-gb-scotland, en-gb-x-gbclan, en-gb-x-gbcwmd, en-gb-x-rp,
en-us, en-us-nyc), speaking rate, pitch, intonation range, loudness, and added white noise.

Splits share no voice variant: a permutation of the variants with seed 0 gives 20% of them
(rounded up) to `test` and the rest to `train`, so the test measures recognition of unheard
voices. Accents are drawn in both splits. Hold a validation part out of `train` yourself
(its voices are then heard ones).

Configs:
- `isolated`: one digit word ("zero" ... "nine") per example, classification; recordings up
  to 1 s (8,000 samples). 3,000 train / 1,000 test.
- `strings`: connected strings of 3-7 digits, transcription; recordings up to 3 s (24,000
  samples), with 0-20 ms of extra pause between words. 2,000 train / 500 test.

Each example:
- `audio` (int16, max samples): the recording, zero-padded after `num_samples`;
- `num_samples` (int32): the recording's length: leading silence (random), the speech,
  trailing silence (random), all with the added noise;
- `label`: `isolated`: ClassLabel of the digit; `strings`: int32 (7,) digits, -1 padded;
- `num_digits` (int32, `strings` only): how many digits `label` holds;
- `transcript` (text): the words spoken, e.g. "three one four";
- `voice` (text): the eSpeak voice, accent+variant, e.g. "en-us+m3"; `variant` (text): "m3";
- `rate` (int32, words/min), `pitch` (int32, 0-99), `snr_db` (float32): how it was said.

Generated deterministically from the config's seed (`generate`): the same seed gives the
same audio bytes. Label this data SYNTHETIC wherever a result on it is reported.
"""

import dataclasses
import importlib.util
import math
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders, espeak
from dl.data.builders import base

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = (
  "en",
  "en-029",
  "en-gb-scotland",
  "en-gb-x-gbclan",
  "en-gb-x-gbcwmd",
  "en-gb-x-rp",
  "en-us",
  "en-us-nyc",
)
SAMPLE_RATE = 8000
MAX_DIGITS = 7
TEST_VOICE_FRACTION = 0.2
SPLITS = ("train", "test")
# Examples per split of each config (tests make them smaller).
SPLIT_SIZES = {
  "isolated": {"train": 3000, "test": 1000},
  "strings": {"train": 2000, "test": 500},
}
_INSTALL = "pip install espeakng-loader==0.2.4"
_TRIM_LEVEL = 0.01  # of the peak: where speech starts and ends
_MAX_TAIL_SECONDS = 0.15
_TRIES = 4  # syntheses of an utterance too long for its recording, each faster


@dataclasses.dataclass(kw_only=True)
class SpokenDigitsConfig(tfds.core.BuilderConfig):
  """What one config speaks and how long its recordings may be.

  Attributes:
    min_digits, max_digits: digits per example (1 and 1: isolated words).
    max_seconds: the recordings' padded length.
    rates: (lowest, highest) speaking rate in words per minute.
    word_gaps: (lowest, highest) extra pause between words, in 10 ms units.
    snrs_db: (lowest, highest) signal-to-noise ratio of the added white noise.
    seed: seeds everything drawn (the voice split has its own fixed seed).
  """

  min_digits: int = 1
  max_digits: int = 1
  max_seconds: float = 1.0
  rates: tuple[int, int] = (120, 220)
  word_gaps: tuple[int, int] = (0, 0)
  snrs_db: tuple[float, float] = (15.0, 40.0)
  seed: int = 0

  @property
  def max_samples(self) -> int:
    return round(self.max_seconds * SAMPLE_RATE)


ISOLATED = SpokenDigitsConfig(name="isolated", description="one digit word per example")
STRINGS = SpokenDigitsConfig(
  name="strings",
  description="connected strings of 3-7 digits",
  min_digits=3,
  max_digits=MAX_DIGITS,
  max_seconds=3.0,
  rates=(150, 230),
  word_gaps=(0, 2),
  seed=1,
)


class SpokenDigits(base.Builder):
  """SYNTHETIC spoken digits (eSpeak NG), isolated or connected; test voices unheard."""

  DESCRIPTION = """
SYNTHETIC spoken digits: eSpeak NG (from the espeakng-loader wheel) speaking isolated digits
or connected strings of 3-7 digits with ~100 voice variants, 8 English accents, random rate,
pitch, loudness and white noise (SNR 15-40 dB), at 8 kHz. Train and test use disjoint voice
variants (test: 20% of them, unheard in train). Generated deterministically from a seed.
"""
  CITATION = """
@misc{espeakng,
  title = {eSpeak NG: an open source speech synthesizer},
  howpublished = {\\url{https://github.com/espeak-ng/espeak-ng}},
  note = {Version 1.52, as shipped in the espeakng-loader 0.2.4 wheel}
}
"""
  BUILDER_CONFIGS = [ISOLATED, STRINGS]
  DEFAULT_CONFIG_NAME = "isolated"
  HOMEPAGE = "https://github.com/espeak-ng/espeak-ng"
  SUPERVISED_KEYS = ("audio", "label")

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The features of one example of the config (see `features`)."""
    return features(self.builder_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # Synthesised by eSpeak NG from the espeakng-loader wheel.
    _check_installed(self.name)
    sizes = SPLIT_SIZES[self.builder_config.name]
    return {
      split: self._generate_examples(self.builder_config, split, sizes[split]) for split in SPLITS
    }

  def _generate_examples(
    self, config: SpokenDigitsConfig, split: str, num_examples: int
  ) -> Iterator[tuple[int, dict]]:
    """Yields (index, example) for the split's examples."""
    examples = generate(config, split, num_examples)
    for i in range(num_examples):
      yield i, {key: values[i] for key, values in examples.items()}


def features(config: SpokenDigitsConfig) -> dict[str, tfds.features.FeatureConnector]:
  """The features of one example of `config` (see the module docstring)."""
  if config.max_digits > 1:
    label = {
      "label": tfds.features.Tensor(shape=(MAX_DIGITS,), dtype=np.int32),
      "num_digits": tfds.features.Scalar(dtype=np.int32),
    }
  else:
    label = {"label": tfds.features.ClassLabel(names=list(DIGITS))}
  return {
    "audio": tfds.features.Tensor(shape=(config.max_samples,), dtype=np.int16),
    "num_samples": tfds.features.Scalar(dtype=np.int32),
    **label,
    "transcript": tfds.features.Text(),
    "voice": tfds.features.Text(),
    "variant": tfds.features.Text(),
    "rate": tfds.features.Scalar(dtype=np.int32),
    "pitch": tfds.features.Scalar(dtype=np.int32),
    "snr_db": tfds.features.Scalar(dtype=np.float32),
  }


def split_variants(variants: tuple[str, ...] | None = None) -> dict[str, tuple[str, ...]]:
  """The voice variants of each split: {"train": ..., "test": ...}, disjoint and sorted."""
  variants = tuple(sorted(variants if variants is not None else espeak.voice_variants()))
  num_test = math.ceil(TEST_VOICE_FRACTION * len(variants))
  order = np.random.default_rng(builders.SPLIT_SEED).permutation(len(variants))
  return {
    "train": tuple(sorted(variants[i] for i in order[num_test:])),
    "test": tuple(sorted(variants[i] for i in order[:num_test])),
  }


def generate(
  config: SpokenDigitsConfig, split: str, num_examples: int, *, seed: int | None = None
) -> dict[str, np.ndarray]:
  """The examples of a split, drawn from `seed` (default: the config's): same seed, same bytes.

  Args:
    config: `ISOLATED`, `STRINGS` or a config of your own.
    split: "train" or "test": whose voice variants speak (`split_variants`).
    num_examples: how many examples.
    seed: overrides `config.seed`.

  Returns:
    Feature name -> array with `num_examples` rows (the features of the module docstring;
    text as numpy str arrays).

  Raises:
    DataPackageMissingError: `espeakng-loader` is not installed.
  """
  _check_installed("spoken_digits")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  seed = config.seed if seed is None else seed
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  plans = [_plan(config, split_variants()[split], rng) for _ in range(num_examples)]
  speech = _speak(plans, config.max_samples)
  rows = [_record(plan, clip, config, rng) for plan, clip in zip(plans, speech, strict=True)]
  return {key: np.array([row[key] for row in rows]) for key in rows[0]} if rows else {}


def _plan(config: SpokenDigitsConfig, variants: tuple[str, ...], rng: np.random.Generator) -> dict:
  """What one example says and how (drawn from `rng`)."""
  count = int(rng.integers(config.min_digits, config.max_digits + 1))
  digits = rng.integers(0, 10, count)
  variant = variants[int(rng.integers(len(variants)))]
  return {
    "digits": digits,
    "utterance": espeak.Utterance(
      text=" ".join(DIGITS[d] for d in digits),
      voice=f"{ACCENTS[int(rng.integers(len(ACCENTS)))]}+{variant}",
      rate=int(rng.integers(config.rates[0], config.rates[1] + 1)),
      pitch=int(rng.integers(20, 81)),
      pitch_range=int(rng.integers(20, 81)),
      word_gap=int(rng.integers(config.word_gaps[0], config.word_gaps[1] + 1)),
      seed=int(rng.integers(2**31)),
    ),
    "variant": variant,
  }


def _speak(plans: list[dict], max_samples: int) -> list[np.ndarray]:
  """The trimmed speech of each plan; an utterance too long for the recording is spoken again,
  faster (its plan's rate is updated)."""
  speech: list[np.ndarray | None] = [None] * len(plans)
  todo = list(range(len(plans)))
  for _ in range(_TRIES):
    clips = espeak.synthesize([plans[i]["utterance"] for i in todo], SAMPLE_RATE)
    too_long = []
    for i, clip in zip(todo, clips, strict=True):
      speech[i] = _trim(clip)
      if len(speech[i]) > max_samples:
        u = plans[i]["utterance"]
        rate = math.ceil(u.rate * len(speech[i]) / max_samples * 1.05)
        plans[i]["utterance"] = dataclasses.replace(u, rate=rate)
        too_long.append(i)
    if not too_long:
      return speech
    todo = too_long
  raise RuntimeError(
    f"{len(todo)} utterances stayed longer than {max_samples} samples after {_TRIES} tries "
    f"(e.g. {plans[todo[0]]['utterance']}); raise max_seconds."
  )


def _trim(clip: np.ndarray) -> np.ndarray:
  """The clip from its first to its last sample above 1% of its peak."""
  loud = np.nonzero(np.abs(clip.astype(np.int32)) > _TRIM_LEVEL * np.abs(clip).max())[0]
  return clip[loud[0] : loud[-1] + 1] if len(loud) else clip[:0]


def _record(
  plan: dict, speech: np.ndarray, config: SpokenDigitsConfig, rng: np.random.Generator
) -> dict:
  """One example: the speech at a random offset and loudness, with white noise, padded."""
  u = plan["utterance"]
  slack = config.max_samples - len(speech)
  offset = int(rng.integers(0, slack + 1))
  tail = int(rng.integers(0, min(slack - offset, int(_MAX_TAIL_SECONDS * SAMPLE_RATE)) + 1))
  num_samples = offset + len(speech) + tail
  peak = 32767 * 10 ** (rng.uniform(-20.0, -1.0) / 20)
  voice = speech.astype(np.float64) * peak / max(np.abs(speech).max(), 1)
  snr_db = float(rng.uniform(*config.snrs_db))
  power = np.mean(np.square(voice)) if len(voice) else 0.0
  audio = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), num_samples)
  audio[offset : offset + len(speech)] += voice
  padded = np.zeros((config.max_samples,), np.int16)
  padded[:num_samples] = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
  digits = plan["digits"]
  if config.max_digits > 1:
    label = {"label": np.pad(digits, (0, MAX_DIGITS - len(digits)), constant_values=-1)}
    label = {"label": label["label"].astype(np.int32), "num_digits": np.int32(len(digits))}
  else:
    label = {"label": np.int64(digits[0])}
  return {
    "audio": padded,
    "num_samples": np.int32(num_samples),
    **label,
    "transcript": u.text,
    "voice": u.voice,
    "variant": plan["variant"],
    "rate": np.int32(u.rate),
    "pitch": np.int32(u.pitch),
    "snr_db": np.float32(snr_db),
  }


def _check_installed(dataset: str) -> None:
  """Raises DataPackageMissingError unless `espeakng-loader` is installed."""
  if importlib.util.find_spec("espeakng_loader") is None:
    raise builders.missing_package_error(dataset, espeak.PACKAGE, _INSTALL)
