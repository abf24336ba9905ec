"""The privacy DP-SGD spends, from Google's `dp_accounting`, for the sampling it ran with.

A DP-SGD run is `steps` compositions of one event: a subsampled Gaussian mechanism with
noise multiplier sigma on batches drawn at rate q.

- Poisson sampling truncated to `max_batch_size` (`dl.trust.privacy.sampling`, dl's default for DP)
  is `TruncatedSubsampledGaussianDpEvent(N, q, max_batch_size, sigma)`, which the PLD
  accountant (privacy loss distributions: the tight one, and dl's default) supports.
- Plain Poisson sampling is `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`, for the PLD
  and the RDP (Renyi) accountant. RDP's figure is looser (e.g. 9.01 against PLD's 8.20 for
  q = 64/1293, sigma 1, 600 steps, delta 1e-5). For a truncated run it describes the untruncated
  sampler, which ran identically except on steps that overflowed (`overflow_probability`).
- Fixed-size shuffled batches (`dp_sampling="shuffle"`) have no accountant here: their
  records carry `epsilon_if_poisson`, the Poisson figure, which their guarantee does not have.

PLD runs on a grid of `VALUE_DISCRETIZATION` in privacy loss; its estimate is pessimistic
(an upper bound) and within 1e-4 of the finer default grid on the runs dl reports.
"""

import contextlib
import functools
import logging
import math

from dl.training import protocols

ACCOUNTANTS = ("pld", "rdp")
VALUE_DISCRETIZATION = 1e-3


def dp_event(
  sampling_rate: float,
  noise_multiplier: float,
  *,
  num_examples: int | None = None,
  max_batch_size: int | None = None,
):
  """One DP-SGD update as a `dp_accounting.DpEvent`.

  Args:
    sampling_rate: q, each example's chance to be in a logical batch, in (0, 1].
    noise_multiplier: noise standard deviation over the clipping norm, > 0.
    num_examples: N, the training examples (needed with `max_batch_size`).
    max_batch_size: the truncation of Poisson batches; None for untruncated Poisson sampling.
  """
  import dp_accounting  # Here: dp_accounting (and the scipy it loads) adds ~1 s to `import dl`.

  _check(sampling_rate=sampling_rate)
  if max_batch_size is None:
    return dp_accounting.PoissonSampledDpEvent(
      sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
  if num_examples is None:
    raise ValueError("a truncated Poisson event needs num_examples (the training examples).")
  return dp_accounting.TruncatedSubsampledGaussianDpEvent(
    num_examples, sampling_rate, max_batch_size, noise_multiplier
  )


def accountant(name: str = "pld"):
  """A fresh `dp_accounting` accountant: "pld" (`PLDAccountant`) or "rdp" (`RdpAccountant`)."""
  from dp_accounting import pld, rdp

  if name == "pld":
    return pld.PLDAccountant(value_discretization_interval=VALUE_DISCRETIZATION)
  if name == "rdp":
    return rdp.RdpAccountant()
  raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {name!r}.")


@functools.cache
def epsilon(
  sampling_rate: float,
  noise_multiplier: float,
  steps: int,
  delta: float,
  *,
  accountant_name: str = "pld",
  num_examples: int | None = None,
  max_batch_size: int | None = None,
) -> float:
  """The epsilon of `steps` DP-SGD updates at `delta`.

  Args:
    sampling_rate: as for `dp_event`.
    noise_multiplier: as for `dp_event`.
    num_examples: as for `dp_event`.
    max_batch_size: as for `dp_event`.
    steps: noisy updates so far (logical batches).
    delta: the delta of (epsilon, delta)-DP, in (0, 1).
    accountant_name: "pld" or "rdp" (RDP cannot account for truncation).

  Returns:
    Epsilon (0.0 before the first step; inf when `noise_multiplier` is 0).
  """
  _check(sampling_rate=sampling_rate, delta=delta)
  if accountant_name == "rdp" and max_batch_size is not None:
    raise ValueError(
      "the RDP accountant has no truncated Poisson event; use accountant 'pld', or "
      "max_batch_size=None for the untruncated sampler's figure."
    )
  if steps == 0:
    return 0.0
  if noise_multiplier <= 0:
    return float("inf")
  if accountant_name == "pld":  # What `PLDAccountant` computes, with one step's PLD kept.
    one_step = _pld_of_one_step(sampling_rate, noise_multiplier, num_examples, max_batch_size)
    return float(one_step.self_compose(steps).get_epsilon_for_delta(delta))
  event = dp_event(
    sampling_rate, noise_multiplier, num_examples=num_examples, max_batch_size=max_batch_size
  )
  counter = accountant(accountant_name)
  with _quiet_absl():
    counter.compose(event, steps)
    return float(counter.get_epsilon(delta))


@functools.cache
def _pld_of_one_step(
  sampling_rate: float,
  noise_multiplier: float,
  num_examples: int | None,
  max_batch_size: int | None,
):
  """The privacy loss distribution of one update, as `PLDAccountant` builds it."""
  from dp_accounting.pld import privacy_loss_distribution as pld

  if max_batch_size is None:
    return pld.from_gaussian_mechanism(
      noise_multiplier,
      sampling_prob=sampling_rate,
      value_discretization_interval=VALUE_DISCRETIZATION,
    )
  if num_examples is None:
    raise ValueError("a truncated Poisson event needs num_examples (the training examples).")
  return pld.from_truncated_subsampled_gaussian_mechanism(
    dataset_size=num_examples,
    sampling_probability=sampling_rate,
    truncated_batch_size=max_batch_size,
    noise_multiplier=noise_multiplier,
    value_discretization_interval=VALUE_DISCRETIZATION,
  )


def calibrate_noise_multiplier(
  target_epsilon: float,
  delta: float,
  sampling_rate: float,
  steps: int,
  *,
  accountant_name: str = "pld",
  num_examples: int | None = None,
  max_batch_size: int | None = None,
) -> float:
  """The smallest noise multiplier whose run of `steps` updates spends at most
  `target_epsilon` at `delta` (`dp_accounting.calibrate_dp_mechanism`)."""
  import dp_accounting

  _check(sampling_rate=sampling_rate, delta=delta)
  if target_epsilon <= 0:
    raise ValueError(f"target_epsilon must be > 0; got {target_epsilon}.")

  if accountant_name == "rdp" and max_batch_size is not None:
    raise ValueError("the RDP accountant has no truncated Poisson event; use accountant 'pld'.")

  def calibrate(name, bracket, truncation):
    def make_event(sigma):
      one = dp_event(sampling_rate, sigma, num_examples=num_examples, max_batch_size=truncation)
      return dp_accounting.SelfComposedDpEvent(one, steps)

    with _quiet_absl():
      return float(
        dp_accounting.calibrate_dp_mechanism(
          lambda: accountant(name), make_event, target_epsilon, delta, bracket, tol=1e-4
        )
      )

  # RDP (untruncated) is fast and looser than PLD: its answer is a good upper guess for PLD's,
  # which spares PLD the slow low-noise end of the search (the bracket grows if need be).
  rdp_sigma = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(1e-2, 1.0), None)
  if accountant_name == "rdp":
    return rdp_sigma
  bracket = dp_accounting.LowerEndpointAndGuess(rdp_sigma / 2, rdp_sigma)
  return calibrate(accountant_name, bracket, max_batch_size)


class BudgetHook(protocols.Hook):
  """Adds the privacy spent so far at `delta` to every train record.

  "epsilon" for Poisson-sampled runs (the chosen accountant; truncation included with PLD);
  "epsilon_if_poisson" for shuffled fixed-size batches, which that figure does not cover.

  Args:
    num_examples: N, the training examples.
    sampling_rate: q, an example's chance to be in a logical batch (B * accum_steps / N).
    noise_multiplier: DP-SGD's noise standard deviation over its clipping norm.
    delta: the delta of (epsilon, delta)-DP.
    accum_steps: micro-steps per noisy update.
    max_batch_size: the truncation of Poisson batches (None: untruncated).
    accountant_name: "pld" or "rdp".
    poisson: whether the batches are Poisson-sampled (False: shuffled, not covered).

  Attributes:
    KEYS: the record keys it writes, ("epsilon", "epsilon_if_poisson"): the first for
      Poisson-sampled runs, the second for shuffled ones.
  """

  KEYS = ("epsilon", "epsilon_if_poisson")

  def __init__(
    self,
    *,
    num_examples: int,
    sampling_rate: float,
    noise_multiplier: float,
    delta: float,
    accum_steps: int = 1,
    max_batch_size: int | None = None,
    accountant_name: str = "pld",
    poisson: bool = True,
  ):
    self.event = {
      "accountant_name": accountant_name,
      "num_examples": num_examples,
      "max_batch_size": max_batch_size if poisson else None,
    }
    self.sampling_rate, self.noise_multiplier, self.delta = sampling_rate, noise_multiplier, delta
    self.accum_steps = accum_steps
    self.key = self.KEYS[0] if poisson else self.KEYS[1]

  def on_log(self, step: int, record: dict) -> dict:
    del record
    updates = step // self.accum_steps
    spent = epsilon(self.sampling_rate, self.noise_multiplier, updates, self.delta, **self.event)
    return {self.key: spent}


def _check(*, sampling_rate: float, delta: float = 0.5) -> None:
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}.")
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1); got {delta}.")


@contextlib.contextmanager
def _quiet_absl():
  """Silences dp_accounting's warnings for RDP orders it excludes (the bound stays valid)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def log_overflow(num_examples: int, sampling_rate: float, max_batch_size: int, steps: int) -> str:
  """One line on how often the padded batch is too small for a run of `steps` updates."""
  from dl.trust.privacy.sampling import overflow_probability

  per_step = overflow_probability(num_examples, sampling_rate, max_batch_size)
  run = 1 - math.exp(steps * math.log1p(-per_step)) if per_step < 1 else 1.0
  return (
    f"Poisson batches of expected size {sampling_rate * num_examples:.1f} padded to "
    f"{max_batch_size}: a step truncates with probability {per_step:.2e}, some step of "
    f"{steps} with probability {run:.2e} (the accounting includes it)."
  )
