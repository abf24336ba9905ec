"""dl: functional deep learning in JAX.

Your own parts through the one loop:

  import dl, optax
  task = dl.task(model=MyModule(), objective=my_loss, optimizer=optax.adamw(1e-3),
                 train={"input": x, "label": y})
  state, history = dl.fit(task, "/tmp/run", num_steps=1000, batch_size=64)

Or parts built from a config:

  config = dl.default_config()        # or an experiment's get_config()
  state, history = dl.train(config, "/tmp/run")

The floors, each importing only those below it (tests/imports_test.py holds the list):
`core` (objectives, meshes, checkpoints, writers), `data` and `models`, `inference`,
`training` (state, steps, the loop), `trust`, `deploy` and `generative`, `recipes` (configs
into parts), `apps` and `search`, `cli`. `import dl` loads none of them: each name below is
imported on first use (`__init__.pyi` lists them, for type checkers and for the loader alike).
"""

import lazy_loader

# The one place the version is set; pyproject reads this line as text, so keep it a literal.
__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
