"""Attributions: which input pixels or features a model's class score depends on.

Vanilla gradients, SmoothGrad (Smilkov et al. 2017), Integrated Gradients (Sundararajan et
al. 2017) and Grad-CAM (Selvaraju et al. 2017) for any Flax module used as
`model.apply(variables, x, train=False) -> logits_BxC`. Each is jitted and batched over
examples; the model is read, never edited (Grad-CAM intercepts the chosen layer's output
with `nn.intercept_methods`).

The score of example b is its logit of class `targets[b]`. Gradients of the batch's summed
score give every example's own gradient, since at evaluation examples do not interact.

  variables = {"params": state.params, **state.model_state}
  ig_BxHxWxC = dl.trust.explain.integrated_gradients(model, variables, x_BxHxWxC, labels_B)
  cam_BxHxW = dl.trust.explain.grad_cam(model, variables, x_BxHxWxC, labels_B, layer="Conv_1")
  dl.trust.explain.save_overlays("maps.png", x_BxHxWxC, {"Grad-CAM": cam_BxHxW})
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Variables = Mapping[str, Any]
METHODS = ("trapezoid", "riemann")


def class_scores(
  model: nn.Module, variables: Variables, inputs_BxS: jax.Array, targets_B: jax.Array
) -> jax.Array:
  """(B,) the logit of each example's target class."""
  logits_BxC = model.apply(variables, inputs_BxS, train=False)
  return jnp.take_along_axis(logits_BxC, targets_B[:, None].astype(jnp.int32), axis=1)[:, 0]


def _input_grads(model, variables, inputs_BxS, targets_B) -> jax.Array:
  """Each example's gradient of its own class score with respect to its input."""
  return jax.grad(lambda x: class_scores(model, variables, x, targets_B).sum())(inputs_BxS)


@functools.partial(jax.jit, static_argnames=("model",))
def saliency(
  model: nn.Module, variables: Variables, inputs_BxS: jax.Array, targets_B: jax.Array
) -> jax.Array:
  """Vanilla gradient saliency: d score / d input.

  Args:
    model: a Flax module whose `apply(variables, x, train=False)` gives (B, C) logits.
    variables: {"params": ..., **model_state}.
    inputs_BxS: a batch of preprocessed inputs, any example shape S.
    targets_B: the class whose score is explained, per example.

  Returns:
    (B, *S) gradients, float32.
  """
  return _input_grads(model, variables, jnp.asarray(inputs_BxS, jnp.float32), targets_B)


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def smoothgrad(
  model: nn.Module,
  variables: Variables,
  inputs_BxS: jax.Array,
  targets_B: jax.Array,
  key: jax.Array,
  *,
  num_samples: int = 32,
  noise_level: float = 0.15,
) -> jax.Array:
  """SmoothGrad: the gradient averaged over Gaussian-noised copies of each input.

  Args:
    model: as for `saliency`.
    variables: as for `saliency`.
    inputs_BxS: as for `saliency`.
    targets_B: as for `saliency`.
    key: PRNG key of the noise.
    num_samples: N noisy copies per example (computed together, vmapped).
    noise_level: noise standard deviation over each example's (max - min) value range.

  Returns:
    (B, *S) mean gradients, float32.
  """
  x_BxS = jnp.asarray(inputs_BxS, jnp.float32)
  axes = tuple(range(1, x_BxS.ndim))
  span_B = jnp.max(x_BxS, axis=axes) - jnp.min(x_BxS, axis=axes)
  sigma_BxS = jnp.reshape(noise_level * span_B, (-1,) + (1,) * len(axes))
  noise_NxBxS = jax.random.normal(key, (num_samples, *x_BxS.shape))

  def one(noise_BxS):
    return _input_grads(model, variables, x_BxS + sigma_BxS * noise_BxS, targets_B)

  return jnp.mean(jax.vmap(one)(noise_NxBxS), axis=0)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "method"))
def integrated_gradients(
  model: nn.Module,
  variables: Variables,
  inputs_BxS: jax.Array,
  targets_B: jax.Array,
  baseline: jax.Array | float = 0.0,
  *,
  num_steps: int = 64,
  method: str = "trapezoid",
) -> jax.Array:
  """Integrated Gradients along the straight path from `baseline` to each input.

  Completeness: an example's attributions sum to score(input) - score(baseline), up to the
  error of the quadrature, which shrinks as `num_steps` grows.

  Args:
    model: as for `saliency`.
    variables: as for `saliency`.
    inputs_BxS: as for `saliency`.
    targets_B: as for `saliency`.
    baseline: a scalar, one example (S), or one per example (B, *S); 0 (black) by default.
    num_steps: K intervals of the path; all gradients are computed together (vmapped).
    method: "trapezoid" (K + 1 points, both ends) or "riemann" (K interval midpoints).

  Returns:
    (B, *S) attributions, float32.
  """
  x_BxS = jnp.asarray(inputs_BxS, jnp.float32)
  base_BxS = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), x_BxS.shape)
  alphas_K, weights_K = _quadrature(num_steps, method)

  def grads_at(alpha):
    return _input_grads(model, variables, base_BxS + alpha * (x_BxS - base_BxS), targets_B)

  grads_KxBxS = jax.vmap(grads_at)(alphas_K)
  return (x_BxS - base_BxS) * jnp.tensordot(weights_K, grads_KxBxS, axes=1)


def _quadrature(num_steps: int, method: str) -> tuple[jax.Array, jax.Array]:
  """Points on [0, 1] and their weights (summing to 1)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
  if method == "trapezoid":
    weights = np.full(num_steps + 1, 1.0 / num_steps)
    weights[[0, -1]] /= 2
    return jnp.linspace(0.0, 1.0, num_steps + 1), jnp.asarray(weights, jnp.float32)
  if method == "riemann":
    alphas = (np.arange(num_steps) + 0.5) / num_steps
    return jnp.asarray(alphas, jnp.float32), jnp.full(num_steps, 1.0 / num_steps)
  raise ValueError(f"method must be one of {METHODS}; got {method!r}.")


def layer_output(
  model: nn.Module, variables: Variables, inputs: jax.Array, layer: str, delta: Any = None
) -> tuple[jax.Array, jax.Array]:
  """Runs the model, reading (and adding `delta` to) the output of submodule `layer`.

  Args:
    layer: the submodule's path, "/"-joined, e.g. "Conv_1" or "block_0/Conv_0".
    delta: added to that output (the handle for gradients with respect to it), or None.

  Returns:
    (logits, the layer's output before `delta`).

  Raises:
    ValueError: no submodule has that path; the message lists the ones that ran.
  """
  captured, seen = [], []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if context.method_name != "__call__" or not path:
      return out
    seen.append(path)
    if path != layer:
      return out
    captured.append(out)
    return out if delta is None else out + delta

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, inputs, train=False)
  if not captured:
    raise ValueError(f"layer must be one of the model's submodules {seen}; got {layer!r}.")
  return logits, captured[0]


@functools.partial(jax.jit, static_argnames=("model", "layer", "resize"))
def grad_cam(
  model: nn.Module,
  variables: Variables,
  inputs_BxHxWxC: jax.Array,
  targets_B: jax.Array,
  *,
  layer: str,
  resize: bool = True,
) -> jax.Array:
  """Grad-CAM: a conv layer's channels weighted by their mean gradient, then ReLU.

  Args:
    model: as for `saliency`.
    variables: as for `saliency`.
    targets_B: as for `saliency`.
    inputs_BxHxWxC: images.
    layer: path of a submodule whose output is (B, h, w, K) feature maps, e.g. "Conv_1".
    resize: upsample the (h, w) map bilinearly to (H, W).

  Returns:
    (B, H, W) maps (or (B, h, w)), each scaled so that its maximum is 1 (all zero if the
    weighted sum is nowhere positive).
  """
  x = jnp.asarray(inputs_BxHxWxC, jnp.float32)
  _, act_shape = jax.eval_shape(lambda: layer_output(model, variables, x, layer))
  if len(act_shape.shape) != 4:
    raise ValueError(f"layer {layer!r} must output (B, h, w, K) maps; got {act_shape.shape}.")

  def score(delta_BxhxwxK):
    logits_BxC, act_BxhxwxK = layer_output(model, variables, x, layer, delta_BxhxwxK)
    picked_B = jnp.take_along_axis(logits_BxC, targets_B[:, None].astype(jnp.int32), axis=1)
    return picked_B.sum(), act_BxhxwxK

  zeros = jnp.zeros(act_shape.shape, act_shape.dtype)
  grads_BxhxwxK, act_BxhxwxK = jax.grad(score, has_aux=True)(zeros)
  weights_BxK = jnp.mean(grads_BxhxwxK, axis=(1, 2))
  cam_Bxhxw = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", act_BxhxwxK, weights_BxK))
  if resize:
    cam_Bxhxw = jax.image.resize(cam_Bxhxw, x.shape[:3], "bilinear")
  peak_B = jnp.max(cam_Bxhxw, axis=(1, 2))
  return cam_Bxhxw / jnp.where(peak_B > 0, peak_B, 1.0)[:, None, None]


@jax.jit
def heatmap(attributions_BxHxWxC: jax.Array) -> jax.Array:
  """(B, H, W) in [0, 1]: |attribution| summed over channels, over each example's maximum."""
  a_BxHxW = jnp.sum(jnp.abs(attributions_BxHxWxC), axis=-1)
  peak_B = jnp.max(a_BxHxW, axis=(1, 2))
  return a_BxHxW / jnp.where(peak_B > 0, peak_B, 1.0)[:, None, None]


@jax.jit
def rank_correlation(a_BxS: jax.Array, b_BxS: jax.Array) -> jax.Array:
  """(B,) Spearman rank correlation between each example's two maps (ties ranked in order)."""
  if a_BxS.shape != b_BxS.shape:
    raise ValueError(f"maps must have the same shape; got {a_BxS.shape} and {b_BxS.shape}.")

  def ranks(m_BxS):
    r_BxP = jnp.argsort(jnp.argsort(m_BxS.reshape(m_BxS.shape[0], -1), axis=1), axis=1)
    r_BxP = r_BxP.astype(jnp.float32)
    return r_BxP - jnp.mean(r_BxP, axis=1, keepdims=True)

  ra_BxP, rb_BxP = ranks(a_BxS), ranks(b_BxS)
  norm_B = jnp.sqrt(jnp.sum(ra_BxP**2, axis=1) * jnp.sum(rb_BxP**2, axis=1))
  return jnp.sum(ra_BxP * rb_BxP, axis=1) / norm_B


def save_overlays(
  path: str,
  images: np.ndarray,
  maps: Mapping[str, np.ndarray],
  *,
  titles: Sequence[str] | None = None,
  alpha: float = 0.5,
  cmap: str = "jet",
) -> str:
  """Saves a PNG grid: one row per example, its image, then each map over it.

  Args:
    path: where the PNG goes.
    images: (B, H, W) or (B, H, W, C) with C in (1, 3), any scale (shown min-max scaled).
    maps: column title -> (B, H, W) heat maps (e.g. from `grad_cam` or `heatmap`).
    titles: B row labels (e.g. "label 3"), or None.
    alpha: opacity of the heat maps.
    cmap: matplotlib colour map of the heat maps.

  Returns:
    `path`.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  images = np.asarray(images, np.float32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim not in (3, 4):
    raise ValueError(f"images must be (B, H, W) or (B, H, W, C); got {images.shape}.")
  for name, m in maps.items():
    if np.shape(m) != images.shape[:3]:
      raise ValueError(f"map {name!r} must have shape {images.shape[:3]}; got {np.shape(m)}.")
  lo = images.min(axis=tuple(range(1, images.ndim)), keepdims=True)
  hi = images.max(axis=tuple(range(1, images.ndim)), keepdims=True)
  shown = (images - lo) / np.where(hi > lo, hi - lo, 1.0)
  rows, cols = images.shape[0], 1 + len(maps)
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
  for b in range(rows):
    gray = "gray" if shown.ndim == 3 else None
    axes[b, 0].imshow(shown[b], cmap=gray)
    if titles is not None:
      axes[b, 0].set_ylabel(titles[b], fontsize=8)
    for j, (name, m) in enumerate(maps.items(), start=1):
      axes[b, j].imshow(shown[b], cmap=gray)
      axes[b, j].imshow(np.asarray(m[b]), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
      if b == 0:
        axes[b, j].set_title(name, fontsize=9)
    if b == 0:
      axes[b, 0].set_title("input", fontsize=9)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
