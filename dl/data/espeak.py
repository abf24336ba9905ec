"""SYNTHETIC speech from eSpeak NG, driven through `ctypes`; no system package, no download.

The pip package `espeakng-loader` ships the eSpeak NG library (`libespeak-ng.so`) and its
voice data. `synthesize` speaks text with a voice such as "en-us+m3" (an English accent,
then one of the ~100 voice variants of `espeak-ng-data/voices/!v`, `voice_variants()`), at a
rate in words per minute and a pitch, and returns int16 audio at eSpeak's 22,050 Hz or
resampled (`scipy.signal.resample_poly`).

Determinism: eSpeak NG keeps state between utterances that no call resets (the pitch
"flutter" index of its wave generator is a static variable in `wavegen.c`) and seeds its
noise from the clock when initialised. So each `synthesize` call runs the library in a fresh
Python process (this file, run as a script: it imports only numpy) and seeds the
noise of every utterance (`espeak_ng_SetRandSeed`): the same utterances in the same order
give the same samples, byte for byte.

The C calls (eSpeak NG 1.52, `speak_lib.h`): `espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS=2,
0, data_path, 0)` returns the sample rate; `espeak_SetSynthCallback` receives the samples;
`espeak_SetVoiceByName`; `espeak_SetParameter` with espeakRATE (1), espeakPITCH (3),
espeakRANGE (4) and espeakWORDGAP (7, in units of 10 ms); `espeak_Synth`; `espeak_Synchronize`.
"""

import ctypes
import dataclasses
import fractions
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

PACKAGE = "espeakng-loader"
NATIVE_SAMPLE_RATE = 22050
_SYNCHRONOUS = 2
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7
_POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(
  ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_RUN_AS_SCRIPT = (
  "import runpy, sys; script = sys.argv.pop(1); runpy.run_path(script, run_name='__main__')"
)


@dataclasses.dataclass(frozen=True)
class Utterance:
  """What to say, and how.

  Attributes:
    text: the words, e.g. "three one four".
    voice: an eSpeak voice name, language then variant, e.g. "en-us+m3" or "en+f2".
    rate: speaking rate in words per minute (eSpeak accepts 80-450).
    pitch: base pitch, 0-99 (50 is the voice's own).
    pitch_range: intonation range, 0-99 (50 is the voice's own; 0 is monotone).
    word_gap: extra pause between words, in units of 10 ms.
    seed: seeds eSpeak's noise generator for this utterance.
  """

  text: str
  voice: str
  rate: int = 175
  pitch: int = 50
  pitch_range: int = 50
  word_gap: int = 0
  seed: int = 0


def data_path() -> str:
  """The folder of eSpeak NG's voice data inside the installed `espeakng-loader`."""
  import espeakng_loader  # pylint: disable=import-outside-toplevel

  return espeakng_loader.get_data_path()


def voice_variants() -> tuple[str, ...]:
  """The voice variants eSpeak NG ships (file names in `voices/!v`: "m1", "f3", "Alex", ...)."""
  return tuple(sorted(os.listdir(os.path.join(data_path(), "voices", "!v"))))


def synthesize(
  utterances: Sequence[Utterance], sample_rate: int = NATIVE_SAMPLE_RATE
) -> list[np.ndarray]:
  """Speaks each utterance, in order, in a fresh process (see the module docstring).

  Args:
    utterances: what to say and how.
    sample_rate: the rate of the returned audio in Hz: eSpeak's own 22,050, or another one
      reached by polyphase resampling.

  Returns:
    One int16 array of samples per utterance.

  Raises:
    RuntimeError: when eSpeak NG fails (e.g. an unknown voice), with its message.
  """
  request = {"utterances": [dataclasses.asdict(u) for u in utterances]}
  done = subprocess.run(
    [sys.executable, "-c", _RUN_AS_SCRIPT, os.path.abspath(__file__)],
    input=json.dumps(request).encode(),
    capture_output=True,
    check=False,
  )
  if done.returncode:
    raise RuntimeError(
      f"eSpeak NG synthesis failed (exit status {done.returncode}): "
      f"{done.stderr.decode(errors='replace').strip()}"
    )
  stream = io.BytesIO(done.stdout)
  lengths = np.load(stream)
  samples = np.load(stream)
  clips = np.split(samples, np.cumsum(lengths)[:-1]) if len(lengths) else []
  return [_resample(clip, sample_rate) for clip in clips]


class _Engine:
  """The eSpeak NG library, loaded and initialised in this process."""

  def __init__(self):
    import espeakng_loader  # pylint: disable=import-outside-toplevel

    self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
    self.lib.espeak_Synth.argtypes = [
      ctypes.c_void_p,
      ctypes.c_size_t,
      ctypes.c_uint,
      ctypes.c_int,
      ctypes.c_uint,
      ctypes.c_uint,
      ctypes.c_void_p,
      ctypes.c_void_p,
    ]
    self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate != NATIVE_SAMPLE_RATE:
      raise RuntimeError(f"espeak_Initialize returned {rate}; expected {NATIVE_SAMPLE_RATE} Hz.")
    self.chunks: list[np.ndarray] = []
    self.callback = _CALLBACK(self._receive)  # kept alive as long as the engine
    self.lib.espeak_SetSynthCallback(self.callback)

  def _receive(self, samples, count: int, events) -> int:
    del events
    if count > 0:
      self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
    return 0  # 0: go on synthesising

  def say(self, u: Utterance) -> np.ndarray:
    """The int16 samples of one utterance at 22,050 Hz."""
    if self.lib.espeak_SetVoiceByName(u.voice.encode()) != 0:
      raise RuntimeError(f"eSpeak NG has no voice {u.voice!r}; expected e.g. 'en+m3'.")
    for parameter, value in (
      (_RATE, u.rate),
      (_PITCH, u.pitch),
      (_RANGE, u.pitch_range),
      (_WORDGAP, u.word_gap),
    ):
      self.lib.espeak_SetParameter(parameter, int(value), 0)
    self.lib.espeak_ng_SetRandSeed(int(u.seed))
    self.chunks = []
    text = u.text.encode()
    status = self.lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
    self.lib.espeak_Synchronize()
    if status != 0:
      raise RuntimeError(f"espeak_Synth failed with status {status} for {u!r}.")
    return np.concatenate(self.chunks) if self.chunks else np.zeros((0,), np.int16)


def _resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """int16 samples from 22,050 Hz to `sample_rate` (polyphase filter), rounded."""
  if sample_rate == NATIVE_SAMPLE_RATE:
    return samples
  import scipy.signal  # pylint: disable=import-outside-toplevel

  ratio = fractions.Fraction(sample_rate, NATIVE_SAMPLE_RATE)
  resampled = scipy.signal.resample_poly(
    samples.astype(np.float64), ratio.numerator, ratio.denominator
  )
  return np.clip(np.round(resampled), -32768, 32767).astype(np.int16)


def _serve() -> None:
  """Reads a request (JSON) on stdin; writes lengths then samples (.npy) on stdout."""
  request = json.load(sys.stdin)
  try:
    engine = _Engine()
    clips = [engine.say(Utterance(**u)) for u in request["utterances"]]
  except RuntimeError as e:
    sys.exit(str(e))  # The parent shows this message.
  out = sys.stdout.buffer
  np.save(out, np.array([len(c) for c in clips], np.int64))
  np.save(out, np.concatenate(clips) if clips else np.zeros((0,), np.int16))
  out.flush()


if __name__ == "__main__":
  _serve()
