r"""The memory plan of a 1B-parameter decoder LM on 256 devices, on one CPU.

A LLaMA-style `decoder_lm` of 0.98 B parameters (width 2048, 18 blocks, 16 query heads
sharing 4 key/value heads, a SwiGLU MLP of 7168 units, bf16 compute, every block
rematerialised) over `pydoc_text`'s 98 characters, which ship with Python, so the config
builds offline. Nothing of the model is allocated: `dl.plan` lays the abstract state out
on 256 virtual CPU devices and compiles the step for shapes.

python -m dl.cli.plan --config experiments/plan_1b_lm.py --devices 256 --mesh_shape fsdp=64,model=4

Other layouts: --mesh_shape fsdp=256, --mesh_shape data=8,fsdp=8,model=4; the state alone
(seconds): --no_compile; sequences of 2048 positions instead of the data's 128-character
windows: --example_shapes input=2048,label=2048. Results: experiments/results_plan.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import pydoc_char_lm


def plan_config():
  """The 1B model's config; planned, never trained here."""
  config = pydoc_char_lm.get_config()
  config.model.name = "decoder_lm"
  config.model.width = 2048
  config.model.depth = 18
  config.model.num_heads = 16
  config.model.num_kv_heads = 4
  config.model.mlp_dim = 7168
  config.model.max_len = 2048
  config.model.remat = "full"
  config.compute_dtype = "bfloat16"
  config.fit.batch_size = 256  # windows per step: 1 per device on fsdp=256, 4 on fsdp=64,model=4
  config.fit.parallel = "mesh"
  config.fit.mesh_shape = "fsdp=64,model=4"
  return config


# What `--config` loads. Not written `def get_config()`: tests/experiments_test.py trains
# every file that says so for a few steps, and this model is for planning, not this CPU.
get_config = plan_config
