"""An empirical lower bound on epsilon from one training run (Steinke, Nasr, Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (arXiv:2305.08846): m canary examples are each
put into the training data or left out by a fair coin; after one run the auditor scores every
canary (here: minus its loss, since a trained-on example tends to have a lower loss), guesses
"in" for the `k_in` highest scores and "out" for the `k_out` lowest, and abstains on the rest.
An (epsilon, delta)-DP training run cannot make many more correct guesses than randomized
response with epsilon allows; the largest epsilon whose null hypothesis the observed count
rejects at the stated confidence is a lower bound on the run's true epsilon. The p-value and
the search are the paper's Algorithm 2 (its Theorem 5.2 for delta > 0).

  train, canaries, included = insert_canaries(arrays, 256, num_classes=10, seed=0)
  ... train on `train` ...
  scores = -per_example_loss(state, canaries)
  result = lower_bound(scores, included, delta=1e-5)

A canary here is a training example whose label is replaced by a wrong one drawn at random:
a model learns it only by remembering it, the case privacy is about.
"""

import dataclasses

import numpy as np

Arrays = dict[str, np.ndarray]


def insert_canaries(
  arrays: Arrays, num_canaries: int, *, num_classes: int, seed: int, label_key: str = "label"
) -> tuple[Arrays, Arrays, np.ndarray]:
  """(training arrays, the canaries, which canaries were included).

  `num_canaries` examples of `arrays`, chosen by `seed`, are given a wrong label drawn at
  random; each is kept in the training arrays (included) or removed by a fair coin. The other
  examples stay as they are.
  """
  n = len(arrays[label_key])
  if not 0 < num_canaries <= n:
    raise ValueError(f"num_canaries must be in [1, {n}] (the examples); got {num_canaries}.")
  rng = np.random.default_rng(seed)
  chosen = rng.choice(n, num_canaries, replace=False)
  labels = np.asarray(arrays[label_key])[chosen]
  wrong = (labels + rng.integers(1, num_classes, num_canaries)) % num_classes
  canaries = {k: np.asarray(v)[chosen] for k, v in arrays.items()}
  canaries[label_key] = wrong.astype(labels.dtype)
  included = rng.random(num_canaries) < 0.5
  keep = np.ones(n, bool)
  keep[chosen] = False
  train = {
    k: np.concatenate([np.asarray(v)[keep], canaries[k][included]]) for k, v in arrays.items()
  }
  return train, canaries, included


def p_value(num_canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
  """P(at least `correct` of `guesses` right) under the null hypothesis that training is
  (epsilon, delta)-DP, with `num_canaries` canaries (the paper's Algorithm 2)."""
  if not 0 <= correct <= guesses <= num_canaries:
    raise ValueError(
      f"need 0 <= correct <= guesses <= canaries; got {correct}, {guesses}, {num_canaries}."
    )
  from scipy import stats  # Here: scipy.stats adds ~0.5 s to `import dl`.

  q = 1 / (1 + np.exp(-epsilon))  # randomized response's accuracy at epsilon
  beta = stats.binom.sf(correct - 1, guesses, q)
  alpha, total = 0.0, 0.0
  for i in range(1, correct + 1):
    total += stats.binom.pmf(correct - i, guesses, q)
    alpha = max(alpha, total / i)
  return float(min(beta + alpha * delta * 2 * num_canaries, 1.0))


def epsilon_lower_bound(
  num_canaries: int, guesses: int, correct: int, *, delta: float, confidence: float = 0.95
) -> float:
  """The largest epsilon that `correct` of `guesses` rejects at `confidence` (0.0 if none)."""
  alpha = 1 - confidence
  low, high = 0.0, 1.0  # p_value(low) < alpha <= p_value(high), when low > 0
  if p_value(num_canaries, guesses, correct, 0.0, delta) >= alpha:
    return 0.0
  while p_value(num_canaries, guesses, correct, high, delta) < alpha:
    high *= 2
    if high > 1e3:
      return float("inf")
  for _ in range(40):
    mid = (low + high) / 2
    if p_value(num_canaries, guesses, correct, mid, delta) < alpha:
      low = mid
    else:
      high = mid
  return low


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """One audit: the guesses made, how many were right, and the bound they give."""

  num_canaries: int
  guesses: int
  correct: int
  confidence: float
  epsilon_lower_bound: float


def lower_bound(
  scores: np.ndarray,
  included: np.ndarray,
  *,
  delta: float,
  k_in: int | None = None,
  k_out: int | None = None,
  confidence: float = 0.95,
) -> AuditResult:
  """Audits one run from its canaries' membership scores (higher: more likely trained on).

  Args:
    scores: (m,) one score per canary, e.g. minus its loss under the trained model.
    included: (m,) which canaries were in the training data.
    delta: the delta of the guarantee being audited.
    k_in: how many top scores to guess as in (default m // 8: fixed before looking, as the
      bound requires).
    k_out: how many bottom scores to guess as out (default m // 8, fixed likewise).
    confidence: of the lower bound.
  """
  scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
  m = len(scores)
  if included.shape != (m,):
    raise ValueError(
      f"scores and included must both be (m,); got {scores.shape}, {included.shape}."
    )
  k_in = m // 8 if k_in is None else k_in
  k_out = m // 8 if k_out is None else k_out
  if k_in + k_out > m:
    raise ValueError(f"k_in + k_out ({k_in + k_out}) must be at most the {m} canaries.")
  order = np.argsort(scores, kind="stable")
  correct = int(included[order[m - k_in :]].sum()) if k_in else 0
  correct += int((~included[order[:k_out]]).sum())
  guesses = k_in + k_out
  bound = epsilon_lower_bound(m, guesses, correct, delta=delta, confidence=confidence)
  return AuditResult(m, guesses, correct, confidence, bound)


def membership_scores(state, model, objective, canaries: Arrays) -> np.ndarray:
  """(m,) minus each canary's loss under `state` (eval mode): the audit's scores."""
  import jax.numpy as jnp

  from dl import inference

  outputs = inference.outputs(state, model, canaries)
  loss_m, _ = objective(jnp.asarray(outputs), {k: jnp.asarray(v) for k, v in canaries.items()})
  return -np.asarray(loss_m, np.float64)
