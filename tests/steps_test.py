import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dl
from dl import models


def _setup(model=None, batch_size=8, num_batches=6, tx=None):
  model = model or models.MLP(num_classes=3, width=16, depth=1, dropout=0.1)
  tx = tx or optax.adam(1e-2)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(0), (4,))
  rng = np.random.default_rng(0)
  batches = [
    {
      "input": rng.normal(size=(batch_size, 4)).astype(np.float32),
      "label": rng.integers(0, 3, batch_size).astype(np.int32),
    }
    for _ in range(num_batches)
  ]
  step = functools.partial(dl.train_step, model=model, tx=tx)
  return state, batches, step


def _stack(batches):
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def test_golden_single_step():
  """One SGD step of a fixed tiny MLP on fixed data gives recorded numbers."""
  model = models.MLP(num_classes=2, width=4, depth=1)
  tx = optax.sgd(0.1)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(42), (3,))
  batch = {"input": jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]), "label": jnp.array([0, 1])}
  new_state, metrics = jax.jit(functools.partial(dl.train_step, model=model, tx=tx))(state, batch)
  assert int(new_state.step) == 1
  # Recorded with jax 0.10.2 on CPU: a change means the step's math changed.
  np.testing.assert_allclose(metrics["loss"], 0.9212521314620972, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], 0.0)
  param_sum = jax.tree.reduce(lambda a, x: a + jnp.sum(x), new_state.params, 0.0)
  np.testing.assert_allclose(param_sum, -4.676945686340332, rtol=1e-5)


class StepVariantsTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree_with_reference(self):
    state, batches, step = _setup()
    new_state, metrics = self.variant(step)(state, batches[0])
    reference, _ = jax.jit(step)(state, batches[0])
    chex.assert_trees_all_close(new_state.params, reference.params, rtol=1e-5, atol=1e-6)
    assert metrics["loss"].shape == ()


def test_train_step_compiles_once_across_steps():
  state, batches, step = _setup()

  @chex.assert_max_traces(n=1)
  def counted(state, batch):
    return step(state, batch)

  jitted = dl.jit_step(counted)
  for batch in batches:
    state, _ = jitted(state, batch)
  assert int(state.step) == len(batches)


@pytest.mark.parametrize("unroll", [False, True])
def test_fused_steps_match_one_per_dispatch(unroll):
  """k steps in one lax.scan (a loop, or unrolled) give the params of k separate dispatches."""
  state, batches, step = _setup()
  one = dl.jit_step(step)
  s1 = state
  for batch in batches:
    s1, _ = one(s1, batch)
  state, _, _ = _setup()  # The first state's buffers were donated.
  fused = dl.jit_step(step, fused=True, unroll=unroll)
  loops = [
    f.lower(*a).as_text().count("stablehlo.while")
    for f, a in ((one, (state, batches[0])), (fused, (state, _stack(batches))))
  ]
  assert loops[1] - loops[0] == (0 if unroll else 1), "unrolled: no loop over the steps"
  s2, metrics = fused(state, _stack(batches))
  chex.assert_shape(metrics["loss"], (len(batches),))
  chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
  assert int(s2.step) == len(batches)


def test_dropout_rng_depends_on_step_not_dispatch():
  state, batches, step = _setup()
  s_a, m_a = jax.jit(step)(state, batches[0])
  s_b, m_b = jax.jit(step)(state.replace(step=state.step + 1), batches[0])
  assert not np.allclose(m_a["loss"], m_b["loss"])  # different dropout masks


def test_batch_norm_state_is_updated():
  model = models.ResNet(num_classes=3, stage_sizes=(1,), width=4)
  tx = optax.sgd(0.1)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(0), (6, 6, 1))
  batch = {
    "input": np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype(np.float32),
    "label": np.array([0, 1, 2, 0], np.int32),
  }
  new_state, _ = jax.jit(functools.partial(dl.train_step, model=model, tx=tx))(state, batch)
  assert set(new_state.model_state) == {"batch_stats"}
  changed = jax.tree.map(
    lambda a, b: not np.allclose(a, b), state.model_state, new_state.model_state
  )
  assert any(jax.tree.leaves(changed))


def test_eval_step_masks_padding_exactly():
  state, batches, step = _setup()
  del step
  model = models.MLP(num_classes=3, width=16, depth=1, dropout=0.1)
  batch = batches[0]
  full = dl.eval_step(state, batch, model=model)
  padded = {k: np.concatenate([v, np.zeros_like(v[:3])]) for k, v in batch.items()}
  padded["mask"] = np.concatenate([np.ones(8), np.zeros(3)]).astype(np.float32)
  masked = dl.eval_step(state, padded, model=model)
  chex.assert_trees_all_close(full, masked, rtol=1e-6)
  assert float(masked["count"]) == 8


@pytest.mark.parametrize(
  "batch,message",
  [
    (
      {"image": np.zeros((2, 4), np.float32), "label": np.zeros(2, np.int32)},
      r"the model reads batch keys \['input'\]; got \['image', 'label'\]",
    ),
    (
      {"input": np.zeros((2, 4), np.float32), "grade": np.zeros(2, np.int32)},
      r"objective 'classification' reads batch\['label'\]; the batch has keys \['grade', 'input'\]",
    ),
    (
      {"input": np.zeros((2, 4), np.float32), "label": np.zeros(3, np.int32)},
      r"same leading \(batch\) axis; got shapes \{'input': \(2, 4\), 'label': \(3,\)\}",
    ),
    (
      {"input": np.zeros((2, 4), np.float32), "label": np.zeros(2, np.float32)},
      "'classification' needs batch\\['label'\\] of shape \\(B,\\) holding integer class ids; "
      "got shape \\(2,\\) and dtype float32",
    ),
  ],
)
def test_bad_batch_is_named(batch, message):
  state, _, step = _setup()
  with pytest.raises(ValueError, match=message):
    jax.jit(step)(state, batch)


def test_wrong_input_width_names_both_shapes():
  """Flax's own error names the parameter, the shape the batch implies and the real one."""
  state, _, step = _setup()
  batch = {"input": np.zeros((8, 5), np.float32), "label": np.zeros(8, np.int32)}
  with pytest.raises(Exception, match=r"expected to generate shape \(5, 16\).*has shape \(4, 16\)"):
    jax.jit(step)(state, batch)
