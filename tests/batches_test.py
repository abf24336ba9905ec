import numpy as np
import pytest

from dl.data.batches import ShuffledBatches, padded_batches
from dl.data.transforms import Preprocess


def _arrays(n=10):
  return {"input": np.arange(n, dtype=np.float32)[:, None], "label": np.arange(n, dtype=np.int32)}


def test_each_epoch_is_a_permutation_without_the_remainder():
  batches = ShuffledBatches(_arrays(10), batch_size=3, seed=0)
  assert batches.steps_per_epoch == 3
  epoch = np.concatenate([batches.next()["label"] for _ in range(3)])
  assert len(set(epoch)) == 9 and set(epoch) <= set(range(10))
  next_epoch = np.concatenate([batches.next()["label"] for _ in range(3)])
  assert not np.array_equal(epoch, next_epoch)  # reshuffled


def test_state_restores_the_exact_position():
  a = ShuffledBatches(_arrays(), batch_size=3, seed=7)
  for _ in range(4):
    a.next()
  state = a.get_state()
  expected = [a.next()["label"] for _ in range(5)]
  b = ShuffledBatches(_arrays(), batch_size=3, seed=7)
  b.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(b.next()["label"], want)


def test_stacked_batches_equal_consecutive_ones():
  a, b = (ShuffledBatches(_arrays(), batch_size=2, seed=1) for _ in range(2))
  stacked = a.next(4)
  assert stacked["input"].shape == (4, 2, 1)
  for i in range(4):
    np.testing.assert_array_equal(stacked["label"][i], b.next()["label"])


def test_batch_larger_than_data_is_an_error():
  with pytest.raises(ValueError, match="batch_size 11 is larger than the data \\(10 examples\\)"):
    ShuffledBatches(_arrays(), batch_size=11, seed=0)


def test_padded_batches_cover_everything_once():
  batches = list(padded_batches(_arrays(10), 4))
  assert [b["input"].shape for b in batches] == [(4, 1)] * 3
  np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(10))


def test_normalizer_uses_train_statistics_only():
  train = np.array([[0.0, 10.0], [2.0, 10.0]], np.float32)
  norm = Preprocess.fit(train)
  np.testing.assert_allclose(norm(train), [[-1, 0], [1, 0]])  # constant column stays finite
  np.testing.assert_allclose(norm(np.array([[4.0, 12.0]])), [[3, 2]])
  images = Preprocess.fit(np.array([[0, 255]], np.uint8))
  np.testing.assert_allclose(images(np.array([[51, 255]], np.uint8)), [[0.2, 1.0]])
