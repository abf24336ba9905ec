"""Speech models that take raw audio: a log-mel front end in JAX, a keyword CNN, a CTC model.

Every model here reads raw audio and its length, `(audio_BxN, num_samples_B)`: int16 samples
(scaled by 1/32768) or floats in [-1, 1], zero-padded after `num_samples`. The features are
computed on the device as the first layer (`LogMel`), so a trained or exported model is fed
recordings, not spectrograms.

`LogMel`: frames of `n_fft` samples every `hop_length` (no centre padding), a periodic Hann
window, the power spectrum, a mel filterbank from librosa (`librosa.filters.mel`, Slaney
mel scale and area normalisation: the same matrix as `librosa.feature.melspectrogram`), then
the log. Only frames that lie wholly within `num_samples` count; the others are zeroed and
`num_frames` says how many are valid. With `normalize`, each mel band is standardised over
an utterance's valid frames (cepstral mean and variance normalisation), which removes the
recording's loudness and channel.

- `KeywordCNN`: log-mel -> 3x3 conv blocks with max pooling -> mean over valid frames ->
  (B, num_classes) logits. Isolated words.
- `CTCRecognizer`: log-mel -> optional strided conv front end (each layer halves time) ->
  bidirectional LSTM/GRU over valid frames (`RNNEncoder`) -> per-frame logits over
  `vocab_size` tokens, token 0 the CTC blank. Returns {"logits": (B, T, V), "num_frames":
  (B,)} for a CTC objective (`dl.apps.speech.ctc_objective`) and decoders.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dl.models.rnn import RNNEncoder

_LOG_FLOOR = 1e-6  # added to mel energies of [-1, 1] audio before the log
_INT16_SCALE = 1.0 / 32768.0


@functools.cache
def mel_filterbank(
  sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
  """librosa's mel filterbank, (n_mels, n_fft // 2 + 1) float32 (Slaney scale and norm).

  Raises:
    ImportError: librosa is not installed (`pip install librosa`, or dl's `speech` extra).
  """
  try:
    import librosa.filters  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "dl's speech front end takes its mel filterbank from librosa, which is not installed. "
      "Install it with: pip install librosa (or pip install 'dl[speech]')."
    ) from e
  return librosa.filters.mel(
    sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
  )


@functools.cache
def hann_window(n_fft: int) -> np.ndarray:
  """The periodic Hann window of `n_fft` samples (as `scipy.signal.get_window("hann", n)`)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def num_frames(num_samples_B: jax.Array, n_fft: int, hop_length: int, max_frames: int) -> jax.Array:
  """Frames that lie wholly within each recording (at least 1, at most `max_frames`)."""
  frames_B = 1 + (num_samples_B.astype(jnp.int32) - n_fft) // hop_length
  return jnp.clip(frames_B, 1, max_frames)


def as_waveform(audio_BxN: jax.Array) -> jax.Array:
  """float32 samples in [-1, 1]: int16 scaled by 1/32768, floats as they are."""
  if jnp.issubdtype(audio_BxN.dtype, jnp.integer):
    return audio_BxN.astype(jnp.float32) * _INT16_SCALE
  return audio_BxN.astype(jnp.float32)


class LogMel(nn.Module):
  """Raw audio -> log-mel spectrogram of its valid frames (see the module docstring).

  Attributes:
    sample_rate: of the audio, in Hz.
    n_fft: samples per frame (and FFT size).
    hop_length: samples between frame starts.
    n_mels: mel bands.
    fmin, fmax: lowest and highest frequency of the filterbank (fmax None: sample_rate / 2).
    normalize: standardise each band over an utterance's valid frames.
  """

  sample_rate: int = 8000
  n_fft: int = 256
  hop_length: int = 80
  n_mels: int = 40
  fmin: float = 20.0
  fmax: float | None = None
  normalize: bool = True

  def __call__(self, audio_BxN: jax.Array, num_samples_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (features_BxTxM, num_frames_B): padded frames are 0 and not counted."""
    _check_audio(audio_BxN, num_samples_B, self.n_fft)
    wave_BxN = as_waveform(audio_BxN)
    num_t = 1 + (wave_BxN.shape[1] - self.n_fft) // self.hop_length
    starts_T = jnp.arange(num_t) * self.hop_length
    frames_BxTxK = wave_BxN[:, starts_T[:, None] + jnp.arange(self.n_fft)[None, :]]
    window_1x1xK = hann_window(self.n_fft)[None, None, :]
    spectrum_BxTxF = jnp.fft.rfft(frames_BxTxK * window_1x1xK, axis=-1)
    power_BxTxF = jnp.square(spectrum_BxTxF.real) + jnp.square(spectrum_BxTxF.imag)
    bank_MxF = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)
    mel_BxTxM = jnp.einsum("btf,mf->btm", power_BxTxF, bank_MxF)
    log_BxTxM = jnp.log(mel_BxTxM + _LOG_FLOOR)
    frames_B = num_frames(num_samples_B, self.n_fft, self.hop_length, num_t)
    valid_BxTx1 = (jnp.arange(num_t)[None, :] < frames_B[:, None])[..., None]
    if self.normalize:
      log_BxTxM = _standardize(log_BxTxM, valid_BxTx1, frames_B)
    return jnp.where(valid_BxTx1, log_BxTxM, 0.0), frames_B


def _standardize(x_BxTxM: jax.Array, valid_BxTx1: jax.Array, frames_B: jax.Array) -> jax.Array:
  """Each band minus its mean over valid frames, over its standard deviation there."""
  count_Bx1x1 = frames_B.astype(jnp.float32)[:, None, None]
  mean_Bx1xM = jnp.sum(jnp.where(valid_BxTx1, x_BxTxM, 0.0), 1, keepdims=True) / count_Bx1x1
  centred_BxTxM = jnp.where(valid_BxTx1, x_BxTxM - mean_Bx1xM, 0.0)
  var_Bx1xM = jnp.sum(jnp.square(centred_BxTxM), 1, keepdims=True) / count_Bx1x1
  return centred_BxTxM * jax.lax.rsqrt(var_Bx1xM + 1e-5)


def _check_audio(audio_BxN: jax.Array, num_samples_B: jax.Array, n_fft: int) -> None:
  """Raises a ValueError unless audio is (B, N >= n_fft) and num_samples (B,)."""
  if audio_BxN.ndim != 2 or audio_BxN.shape[1] < n_fft:
    raise ValueError(
      f"audio must be (batch, samples) with at least n_fft={n_fft} samples; got shape "
      f"{audio_BxN.shape}."
    )
  if num_samples_B.shape != audio_BxN.shape[:1]:
    raise ValueError(
      f"num_samples must be (batch,) = {audio_BxN.shape[:1]}, one length per recording; got "
      f"shape {num_samples_B.shape}."
    )


def _front_end(front_end: LogMel | None) -> LogMel:
  """The given front end, else the default one."""
  return LogMel() if front_end is None else front_end


def _halved(frames_B: jax.Array) -> jax.Array:
  """Valid frames after a pooling or stride that halves time (SAME padding: rounded up)."""
  return (frames_B + 1) // 2


def _zero_padded_frames(x_BxTx___: jax.Array, frames_B: jax.Array) -> jax.Array:
  """`x` with the frames (axis 1) past each example's valid ones set to 0.

  Zeroing them after each layer keeps a valid frame's output the same however much padding
  follows: max pooling and convolutions at the edge see zeros, as at the array's end.
  """
  valid_BxT = jnp.arange(x_BxTx___.shape[1])[None, :] < frames_B[:, None]
  valid = valid_BxT.reshape(valid_BxT.shape + (1,) * (x_BxTx___.ndim - 2))
  return jnp.where(valid, x_BxTx___, 0.0)


class KeywordCNN(nn.Module):
  """Keyword classifier on raw audio: log-mel -> conv blocks -> mean over valid frames.

  Attributes:
    num_classes: number of output logits (keywords).
    features: channels of the first conv block; each later block doubles them.
    num_blocks: conv blocks, each 3x3 conv + ReLU + 2x2 max pooling.
    hidden: units of the dense layer before the logits.
    dropout: dropout rate before the output layer.
    front_end: the `LogMel` front end (None: `LogMel()`, 8 kHz, 40 bands).
  """

  num_classes: int = 10
  features: int = 16
  num_blocks: int = 3
  hidden: int = 64
  dropout: float = 0.1
  front_end: LogMel | None = None

  @nn.compact
  def __call__(
    self, audio_BxN: jax.Array, num_samples_B: jax.Array, *, train: bool = False
  ) -> jax.Array:
    """Returns logits_BxC."""
    x_BxTxM, frames_B = _front_end(self.front_end)(audio_BxN, num_samples_B)
    x = x_BxTxM[..., None]
    for block in range(self.num_blocks):
      x = _zero_padded_frames(nn.relu(nn.Conv(self.features * 2**block, (3, 3))(x)), frames_B)
      x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
      frames_B = _halved(frames_B)
    x_BxTxD = x.reshape(x.shape[0], x.shape[1], -1)
    pooled_BxD = jnp.sum(_zero_padded_frames(x_BxTxD, frames_B), 1)
    pooled_BxD = pooled_BxD / frames_B.astype(jnp.float32)[:, None]
    h_BxH = nn.relu(nn.Dense(self.hidden)(pooled_BxD))
    h_BxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxH)
    return nn.Dense(self.num_classes)(h_BxH)


class CTCRecognizer(nn.Module):
  """Sequence recogniser on raw audio for CTC: per-frame logits, token 0 the blank.

  Attributes:
    vocab_size: output tokens, the blank (0) included: 11 for the ten digits.
    conv_features: channels of the conv front end (0: none; the RNN reads the log-mels).
    conv_layers: 3x3 conv layers with stride 2 in time and frequency (each halves time).
    cell: "lstm" or "gru".
    hidden: units per direction of each recurrent layer.
    num_layers: stacked bidirectional recurrent layers.
    dropout: dropout rate between layers and before the output layer.
    front_end: the `LogMel` front end (None: `LogMel()`, 8 kHz, 40 bands).
  """

  vocab_size: int = 11
  conv_features: int = 32
  conv_layers: int = 2
  cell: str = "gru"
  hidden: int = 96
  num_layers: int = 2
  dropout: float = 0.1
  front_end: LogMel | None = None

  @nn.compact
  def __call__(
    self, audio_BxN: jax.Array, num_samples_B: jax.Array, *, train: bool = False
  ) -> dict[str, jax.Array]:
    """Returns {"logits": logits_BxTxV, "num_frames": (B,) valid frames of them}."""
    x_BxTxM, frames_B = _front_end(self.front_end)(audio_BxN, num_samples_B)
    if self.conv_features:
      x = x_BxTxM[..., None]
      for _ in range(self.conv_layers):
        # Explicit padding: SAME would pad the start by 0 or 1 as the length is even or odd,
        # shifting every frame when only the amount of padding after the audio changes.
        conv = nn.Conv(self.conv_features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = nn.relu(conv(x))
        frames_B = _halved(frames_B)
        x = _zero_padded_frames(x, frames_B)
      x_BxTxM = x.reshape(x.shape[0], x.shape[1], -1)
    h_BxTxH = RNNEncoder(
      cell=self.cell,
      hidden=self.hidden,
      num_layers=self.num_layers,
      bidirectional=True,
      dropout=self.dropout,
    )(x_BxTxM, frames_B, train=train)
    h_BxTxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxTxH)
    return {"logits": nn.Dense(self.vocab_size)(h_BxTxH), "num_frames": frames_B}
