"""Frechet distance between image sets on a dl classifier's features, and class accuracy.

The Frechet Inception Distance (Heusel et al., 2017) with the Inception network replaced by
a classifier trained with dl on the same data: each set's features are summarised by their
mean and covariance, and

  FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

  reference = frechet.statistics(frechet.features(model, variables, test_images, layer="Dense_0"))
  fd = frechet.distance(*reference, *frechet.statistics(frechet.features(..., samples, ...)))
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dl.models.adapters import Linen


def features(
  model: nn.Module | Linen,
  variables: dict[str, Any],
  images_NxHxWxC: np.ndarray,
  *,
  layer: str,
  batch_size: int = 500,
) -> np.ndarray:
  """The output of the submodule `layer` (e.g. "Dense_0", the CNN's hidden layer), flattened.

  Args:
    model: a dl classifier (a Linen module, or a task's `dl.Linen` model), called as
      `module.apply(variables, x, train=False)`.
    variables: {"params": ..., **model_state}.
    images_NxHxWxC: inputs in the classifier's scale (e.g. [0, 1] for uint8 data sets).
    layer: path of the submodule, "/"-separated for nested ones.
    batch_size: images per compiled call.

  Returns:
    (N, F) float64 features.
  """
  fn = _jitted_features(_module(model), layer)
  out = [
    np.asarray(fn(variables, jnp.asarray(images_NxHxWxC[i : i + batch_size])))
    for i in range(0, len(images_NxHxWxC), batch_size)
  ]
  return np.concatenate(out).astype(np.float64)


def _module(model: nn.Module | Linen) -> nn.Module:
  return model.module if isinstance(model, Linen) else model


@functools.cache
def _jitted_features(model: nn.Module, layer: str):
  def fn(variables, x):
    captured, seen = [], []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = "/".join(context.module.path)
      if context.method_name == "__call__" and path:
        seen.append(path)
        if path == layer:
          captured.append(out)
      return out

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, train=False)
    if not captured:
      raise ValueError(f"layer must be one of the model's submodules {seen}; got {layer!r}.")
    return captured[0].reshape((x.shape[0], -1))

  return jax.jit(fn)


def statistics(features_NxF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The mean (F,) and covariance (F, F) of a set of features."""
  features_NxF = np.asarray(features_NxF, np.float64)
  if features_NxF.ndim != 2 or len(features_NxF) < 2:
    raise ValueError(f"features must be (N, F) with N >= 2; got shape {features_NxF.shape}.")
  return features_NxF.mean(axis=0), np.cov(features_NxF, rowvar=False)


def distance(
  mu1_F: np.ndarray, sigma1_FxF: np.ndarray, mu2_F: np.ndarray, sigma2_FxF: np.ndarray
) -> float:
  """The Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

  The matrix square root is `scipy.linalg.sqrtm`; for singular covariances (fewer examples
  than features) a small multiple of the identity is added first, as in the reference FID
  code, and the tiny imaginary part round-off leaves is dropped.
  """
  if mu1_F.shape != mu2_F.shape or sigma1_FxF.shape != sigma2_FxF.shape:
    raise ValueError(
      f"both sets need features of one size; got means {mu1_F.shape} and {mu2_F.shape}."
    )
  covmean = scipy.linalg.sqrtm(sigma1_FxF @ sigma2_FxF)
  if not np.all(np.isfinite(covmean)):
    offset = 1e-6 * np.eye(len(mu1_F))
    covmean = scipy.linalg.sqrtm((sigma1_FxF + offset) @ (sigma2_FxF + offset))
  covmean = np.real(covmean)
  diff = mu1_F - mu2_F
  value = diff @ diff + np.trace(sigma1_FxF) + np.trace(sigma2_FxF) - 2.0 * np.trace(covmean)
  return float(max(value, 0.0))


def set_distance(features1_NxF: np.ndarray, features2_MxF: np.ndarray) -> float:
  """The Frechet distance between two feature sets (their Gaussian statistics)."""
  return distance(*statistics(features1_NxF), *statistics(features2_MxF))


def conditional_accuracy(
  model: nn.Module | Linen,
  variables: dict[str, Any],
  images_NxHxWxC: np.ndarray,
  labels_N: np.ndarray,
  *,
  batch_size: int = 500,
) -> float:
  """The fraction of images the classifier assigns to the class they were generated for."""
  fn = _jitted_predict(_module(model))
  predicted_N = np.concatenate(
    [
      np.asarray(fn(variables, jnp.asarray(images_NxHxWxC[i : i + batch_size])))
      for i in range(0, len(images_NxHxWxC), batch_size)
    ]
  )
  return float(np.mean(predicted_N == np.asarray(labels_N)))


@functools.cache
def _jitted_predict(model: nn.Module):
  return jax.jit(lambda variables, x: jnp.argmax(model.apply(variables, x, train=False), -1))
