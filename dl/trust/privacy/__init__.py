"""Differential privacy: DP-SGD, the sampling its accounting assumes, the accounting, an audit.

- `dp_train_step` (`sgd`): per-example clipping and Gaussian noise, a pure step like
  `dl.train_step`, compiled the same ways.
- `PoissonData` (`sampling`): Poisson-sampled batches, padded to a fixed size and masked,
  truncated (rarely) as the accountant assumes.
- `epsilon`, `calibrate_noise_multiplier`, `BudgetHook` (`accounting`): `dp_accounting`'s
  PLD (default) and RDP accountants for the events the run was made of.
- `audit` : the one-run empirical lower bound on epsilon of Steinke, Nasr and Jagielski.
"""

from dl.trust.privacy import audit
from dl.trust.privacy.accounting import (
  ACCOUNTANTS,
  BudgetHook,
  calibrate_noise_multiplier,
  dp_event,
  epsilon,
)
from dl.trust.privacy.sampling import (
  PoissonBatches,
  PoissonData,
  max_batch_size,
  overflow_probability,
)
from dl.trust.privacy.sgd import dp_train_step

__all__ = [
  "ACCOUNTANTS",
  "BudgetHook",
  "PoissonBatches",
  "PoissonData",
  "audit",
  "calibrate_noise_multiplier",
  "dp_event",
  "dp_train_step",
  "epsilon",
  "max_batch_size",
  "overflow_probability",
]
