"""Model FLOPs, the chip's peak, and how much of it a run used (MFU).

The loop's train records carry three figures from this module:

  model_flops_per_step       FLOPs of one optimizer step: the model's own analytic count
                             (`train_flops(batch_shape)` of a model, through the
                             trainable's `flops_per_step(batch_size)`), else XLA's count of
                             the lowered one-step program (`xla_flops`).
  tflops_per_sec_per_device  model_flops_per_step x steps / seconds / devices / 1e12.
  mfu                        that over the per-device peak (`peak_flops_per_device`); left
                             out where the peak is unknown.

XLA's `cost_analysis()` counts the body of a `lax.scan` once, whatever its length
(jax-ml/jax#18672), so the count comes from the program of one step, never from the fused
k-step program. It is taken from the lowered program, before XLA optimizes it, so it costs
no compile (a fused run never compiles the one-step program) and does not change with the
backend's fusions. It counts all the step computes (the optimizer update, any remat
recomputation), not only the model's matrix products, so it reads a little higher than an
analytic model count. A `jax.jit` program is lowered whole, before XLA splits it over a
mesh, so its count is the whole step's; a `jax.pmap` program is one device's part, which
`xla_flops(..., per_device=True)` multiplies by the devices the program spans.

`CompileClock` adds up the seconds JAX spends tracing, lowering and compiling (or loading
from the persistent compilation cache) while it is running, from JAX's own monitoring
events.
"""

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

# Dense (no structured sparsity) bf16 matrix-unit peaks per chip, as the vendors give them.
# NVIDIA's datasheets list bf16 Tensor Core TFLOPS "with sparsity": the dense peak is half.
# Matched in order on `device.device_kind` (lower case): the first pattern contained wins.
PEAKS: tuple[tuple[str, float, str], ...] = (
  # nvidia.com/en-us/data-center/h100 datasheet: BF16 1,979 (SXM), 1,671 (NVL), 1,513 (PCIe)
  # TFLOPS with sparsity. device_kind of the SXM part: "NVIDIA H100 80GB HBM3".
  ("h100 nvl", 835e12, "NVIDIA H100 NVL, dense bf16"),
  ("h100 pcie", 756e12, "NVIDIA H100 PCIe, dense bf16"),
  ("h100", 989e12, "NVIDIA H100 SXM, dense bf16"),
  # nvidia.com/en-us/data-center/h200 datasheet: BF16 1,979 (SXM), 1,671 (NVL) with sparsity.
  ("h200 nvl", 835e12, "NVIDIA H200 NVL, dense bf16"),
  ("h200", 989e12, "NVIDIA H200 SXM, dense bf16"),
  # nvidia.com/en-us/data-center/a100 datasheet: BF16 312 TFLOPS (624 with sparsity), SXM
  # and PCIe alike.
  ("a100", 312e12, "NVIDIA A100, dense bf16"),
  # cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e: peak bf16 compute per chip. JAX names
  # v5e "TPU v5 lite", v5p "TPU v5" and v6e "TPU v6 lite".
  ("tpu v4", 275e12, "TPU v4, bf16"),
  ("tpu v5 lite", 197e12, "TPU v5e, bf16"),
  ("tpu v5e", 197e12, "TPU v5e, bf16"),
  ("tpu v5", 459e12, "TPU v5p, bf16"),
  ("tpu v6 lite", 918e12, "TPU v6e (Trillium), bf16"),
  ("tpu v6e", 918e12, "TPU v6e (Trillium), bf16"),
)

CPU_MATMUL_SIZE = 2048
MEASURED_CPU = (
  f"measured CPU matmul peak (jitted f32 {CPU_MATMUL_SIZE}x{CPU_MATMUL_SIZE}, best of 3)"
)


def peak_flops_per_device(
  device: jax.Device | None = None, configured: float = 0.0
) -> tuple[float | None, str]:
  """(peak FLOP/s of one device, where that figure comes from); (None, why) if unknown.

  Args:
    device: the device (default `jax.devices()[0]`).
    configured: a peak the user gives (> 0 wins over everything else).
  """
  if configured > 0:
    return configured, "configured (peak_flops_per_device)"
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for pattern, peak, label in PEAKS:
    if pattern in kind:
      return peak, f"table: {label} ({device.device_kind!r})"
  if device.platform == "cpu":
    return measured_cpu_peak(), MEASURED_CPU
  return None, f"unknown device kind {device.device_kind!r}: no mfu (set peak_flops_per_device)"


@functools.cache  # once per process: the machine does not change under it
def measured_cpu_peak() -> float:
  """FLOP/s of a jitted f32 matmul on the first CPU device, the best of 3 timed runs."""
  n = CPU_MATMUL_SIZE
  a = jax.device_put(np.ones((n, n), np.float32), jax.devices("cpu")[0])
  matmul = jax.jit(jnp.matmul).lower(a, a).compile()
  best = np.inf
  for _ in range(3):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def xla_flops(step: Any, *args: Any, per_device: bool = False) -> float | None:
  """XLA's FLOPs of `step(*args)`, from its lowered program: the whole step's.

  Args:
    step: a `jax.jit` or `jax.pmap` function. Lowering it for arguments (or shapes) it was
      already called with reuses jit's trace; nothing is compiled.
    *args: its arguments, arrays or `jax.ShapeDtypeStruct`s.
    per_device: `step` is one device's program (`jax.pmap`): the count is multiplied by
      the devices the arguments span.

  Returns:
    The count, or None when the backend gives none.
  """
  costs = step.lower(*args).cost_analysis()
  if isinstance(costs, (list, tuple)):  # older jax: one dict per program
    costs = costs[0] if costs else None
  flops = (costs or {}).get("flops")
  if flops is None or flops < 0:
    return None
  return float(flops) * (num_devices(args) if per_device else 1)


def num_devices(tree: Any) -> int:
  """How many devices the arrays of `tree` span (1 for host values)."""
  devices = set()
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      devices |= set(sharding.device_set)
  return max(len(devices), 1)


def rates(
  flops_per_step: float, steps: int, seconds: float, devices: int, peak: float | None
) -> dict[str, float]:
  """{"tflops_per_sec_per_device", "mfu" (when `peak` is known)} of `steps` in `seconds`."""
  per_device = flops_per_step * steps / seconds / devices
  out = {"tflops_per_sec_per_device": per_device / 1e12}
  if peak:
    out["mfu"] = per_device / peak
  return out


class CompileClock:
  """Seconds JAX spends tracing, lowering and compiling while the clock runs, on this thread.

  Use as a context manager around the calls to time (each may compile on its first call);
  `take()` returns the seconds gathered since the last `take()`. Reads JAX's events
  "/jax/core/compile/jaxpr_trace_duration" (outermost traces only),
  ".../jaxpr_to_mlir_module_duration" and ".../backend_compile_duration" (XLA's compile, or
  the load from the persistent compilation cache); `start()`/`stop()` register and remove
  the listener.
  """

  EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
  )

  def __init__(self):
    self._seconds = 0.0
    self._running_on: int | None = None
    self._listener: Callable | None = None

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if self._running_on == threading.get_ident() and event in self.EVENTS:
      self._seconds += duration

  def start(self) -> None:
    """Starts listening to JAX's compile events."""
    self._listener = self._on_event
    jax.monitoring.register_event_duration_secs_listener(self._listener)

  def stop(self) -> None:
    """Stops listening (where this jax can unregister a listener)."""
    # Older jax cannot unregister: the listener stays, idle (it counts only while running).
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if self._listener is not None and unregister is not None:
      unregister(self._listener)
    self._listener = None

  def __enter__(self) -> "CompileClock":
    self._running_on = threading.get_ident()
    return self

  def __exit__(self, *exc) -> None:
    self._running_on = None

  def take(self) -> float:
    """The compile seconds counted since the last `take`, and restarts the count."""
    seconds, self._seconds = self._seconds, 0.0
    return seconds
