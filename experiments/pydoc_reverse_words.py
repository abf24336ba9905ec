r"""Sequence to sequence: an encoder-decoder Transformer learns to reverse the word order of
short snippets of real text.

Data: the `pydoc_text` corpus (Python's documentation) cut into consecutive chunks of 3-6
words (at most 40 characters); the target is the same words in reverse order, e.g.
'is equivalent to the' -> 'the to equivalent is'. Chunks come from the contiguous
train part (first 90% of the text) and held-out part (last 10%, pydoc_text's "validation").
The text is real; the task (reversal) is a fixed transformation of it.

The model `dl.models.TransformerSeq2Seq` reads two batch keys, `dl.Linen(module,
inputs=("source", "target_in"))`, and trains through `dl.fit` with the next-token objective;
10% of the train chunks (a fixed random choice) are held out for validation, whose loss
chooses the checkpoint. That checkpoint is scored once on the held-out text's chunks:
teacher-forced character accuracy and greedy exact match (decoded with
`dl.apps.decoding.translate` and the decoder's KV cache). A rerun in the same workdir resumes.
python experiments/pydoc_reverse_words.py --workdir workdirs/pydoc_reverse_words
"""

import argparse
import functools
import json
import os
import time

import jax
import numpy as np
import optax

import dl
from dl import models
from dl.apps import decoding
from dl.data.batches import padded_batches
from dl.data.builders import pydoc_text

MAX_CHARS = 40
LENGTH = MAX_CHARS + 1  # the target and its end marker
START_ID = pydoc_text.VOCAB_SIZE  # a target-only token; the end marker is the pad id 0
TARGET_VOCAB = pydoc_text.VOCAB_SIZE + 1


def word_chunks(text: str, seed: int) -> list[str]:
  """Consecutive chunks of 3-6 words of at most MAX_CHARS in-vocabulary characters."""
  words = text.split()
  sizes = np.random.default_rng(seed).integers(3, 7, size=len(words))
  chunks, i = [], 0
  while i < len(words):
    chunk = " ".join(words[i : i + sizes[i]])
    i += sizes[i]
    if len(chunk) <= MAX_CHARS and (pydoc_text.encode(chunk) != pydoc_text.UNKNOWN_ID).all():
      chunks.append(chunk)
  return chunks


def reverse_words(chunk: str) -> str:
  return " ".join(reversed(chunk.split()))


def to_arrays(chunks: list[str]) -> dict[str, np.ndarray]:
  """{"source": (N, LENGTH) ids, "target_in": (N, LENGTH) the target after START_ID,
  "label": (N, LENGTH) the target then the end marker, "weights": 1 where "label" counts}."""
  num = len(chunks)
  sources, targets_in = np.zeros((num, LENGTH), np.int32), np.zeros((num, LENGTH), np.int32)
  labels, weights = np.zeros((num, LENGTH), np.int32), np.zeros((num, LENGTH), np.float32)
  for i, chunk in enumerate(chunks):
    source, target = pydoc_text.encode(chunk), pydoc_text.encode(reverse_words(chunk))
    sources[i, : len(source)] = source
    targets_in[i, 0], targets_in[i, 1 : len(target) + 1] = START_ID, target
    labels[i, : len(target)] = target  # then 0: the end marker
    weights[i, : len(target) + 1] = 1.0
  return {"source": sources, "target_in": targets_in, "label": labels, "weights": weights}


def datasets(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  parts = pydoc_text.split_ids(np.arange(len(text := pydoc_text.corpus())))
  bounds = {split: (ids[0], ids[-1] + 1) for split, ids in parts.items()}
  return {s: to_arrays(word_chunks(text[a:b], seed)) for s, (a, b) in bounds.items()}


def make_model(width: int = 128, depth: int = 2) -> models.TransformerSeq2Seq:
  return models.TransformerSeq2Seq(
    num_classes=TARGET_VOCAB,
    source_vocab_size=pydoc_text.VOCAB_SIZE,
    width=width,
    depth=depth,
    num_heads=4,
    mlp_dim=4 * width,
    max_len=LENGTH + 1,  # the decoder also reads the start token
  )


def make_task(module, train, test, num_steps: int) -> dl.Task:
  """The two-input model, next-token objective, AdamW with warmup and cosine decay; 10% of
  the train chunks held out for validation (the default of `dl.task`)."""
  warmup = min(100, num_steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(num_steps, warmup + 1))
  return dl.task(
    model=dl.Linen(module, inputs=("source", "target_in")),
    objective=dl.core.objectives.next_token,
    optimizer=optax.adamw(schedule, weight_decay=0.01),
    train=train,
    test=test,
    name="reverse words",
  )


class ExactMatch(dl.Hook):
  """Greedy decoding (`dl.apps.decoding.translate`, the decoder's KV cache) of every test source:
  "exact_match", the share decoded exactly up to and including the end marker. The decoded
  targets stay in `generated` (N, 1 + LENGTH)."""

  def __init__(self, module, test: dict[str, np.ndarray], batch_size: int = 256):
    self.test, self.batch_size = test, min(batch_size, len(test["label"]))
    self.translate = jax.jit(
      functools.partial(decoding.translate, model=module, num_tokens=LENGTH, start_id=START_ID)
    )
    self.generated = None

  def on_eval(self, state, step: int, split: str) -> dict[str, float]:
    del step
    if split != "test":
      return {}
    generated = []
    for batch in padded_batches(self.test, self.batch_size):  # one shape: one compilation
      generated_BxT = self.translate(state.params, batch["source"], jax.random.PRNGKey(0))
      generated.append(np.asarray(generated_BxT)[batch["mask"] > 0])
    self.generated = np.concatenate(generated)
    # Compare up to and including the end marker (0) wherever the label has weight.
    match_NxL = (self.generated[:, 1:] == self.test["label"]) | (self.test["weights"] == 0)
    return {"exact_match": float(match_NxL.all(axis=1).mean())}


def until_end(ids) -> str:
  """The text of generated ids up to the end marker (pad id 0)."""
  ids = np.asarray(ids)
  end = np.flatnonzero(ids == 0)
  return pydoc_text.decode(ids[: end[0]] if len(end) else ids)


def run(
  workdir: str,
  *,
  steps: int = 400,
  batch_size: int = 64,
  width: int = 128,
  depth: int = 2,
  limit: int | None = None,
  progress: bool = True,
) -> dict:
  """Trains through dl.fit (resuming from `workdir`), scores the best validation checkpoint
  on the held-out text once, writes result.json; `limit` keeps that many chunks per part."""
  data = {k: {n: a[:limit] for n, a in v.items()} for k, v in datasets().items()}
  train, test = data["train"], data["validation"]  # pydoc_text's held-out text is our test
  module = make_model(width, depth)
  task = make_task(module, train, test, steps)
  config = dl.FitConfig(
    num_steps=steps,
    batch_size=batch_size,
    eval_batch_size=256,
    log_every=50,
    progress=progress,
    tensorboard=progress,
  )
  start = time.perf_counter()
  exact_match = ExactMatch(module, test)
  _, history = dl.fit(task, workdir, config, hooks=[exact_match])
  wall = time.perf_counter() - start
  sources, outputs = test["source"][:5], exact_match.generated[:5]  # of the best checkpoint
  examples = [f"{pydoc_text.decode(s)!r} -> {until_end(o[1:])!r}" for s, o in zip(sources, outputs)]
  scores = history["test"][-1]
  result = {
    "train_chunks": len(task.train),
    "validation_chunks": len(task.eval["label"]),
    "test_chunks": len(test["label"]),
    "steps": steps,
    "best_step": scores["step"],
    "final_train_loss": round(history["train"][-1]["loss"], 4),
    "test_char_accuracy": round(scores["accuracy"], 4),
    "test_exact_match": round(scores["exact_match"], 4),
    "train_wall_s": round(wall),
  }
  with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump({**result, "examples": examples}, f, indent=1)
  print(json.dumps(result))
  print("\n".join(examples))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/pydoc_reverse_words")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--width", type=int, default=128)
  args = parser.parse_args()
  run(args.workdir, steps=args.steps, batch_size=args.batch_size, width=args.width)


if __name__ == "__main__":
  main()
