"""README.md's Python blocks run, as written but for the sizes below.

Each ```python block runs in a fresh namespace in a temporary directory. `SHRINK` makes the
long runs short; each of its strings must appear in the README as written, so a README that
changes under it fails here instead of going stale. `GIVEN` defines the names a block leaves
to the reader (its own images).
"""

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)

SHRINK = {
  'config.model = {"name": "cnn"}': 'config.model = {"name": "mlp", "width": 16}',
  "config.fit.num_epochs = 30": "config.fit.num_epochs = 1",
  "num_steps=1500, batch_size=32": "num_steps=20, batch_size=32",
}


def _given():
  import dl

  images = dl.data.load("digits", "test")["image"][:5]
  return {"raw_uint8_images": images.astype(np.uint8)}


def test_the_readme_has_python_blocks_and_each_shrink_applies():
  assert len(BLOCKS) >= 2
  for old in SHRINK:
    assert sum(old in block for block in BLOCKS) == 1, f"README no longer says {old!r}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
  code = BLOCKS[index]
  for old, new in SHRINK.items():
    code = code.replace(old, new)
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": f"readme_block_{index}", **_given()}
  exec(compile(code, f"README.md python block {index}", "exec"), namespace)
