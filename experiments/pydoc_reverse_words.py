r"""Sequence to sequence: an encoder-decoder Transformer learns to reverse the word order of
short snippets of real text.

Data: the `pydoc_text` corpus (Python's documentation) cut into consecutive chunks of 3-6
words (at most 40 characters); the target is the same words in reverse order, e.g.
'is equivalent to the' -> 'the to equivalent is'. Chunks come from the contiguous
train part (first 90% of the text) and validation part (last 10%). The text is real;
the task (reversal) is a fixed transformation of it.

Reports teacher-forced character accuracy and greedy exact-match accuracy (decoded with
`dl.sampling.translate` and the decoder's KV cache) on validation chunks:
python experiments/pydoc_reverse_words.py --workdir workdirs/pydoc_reverse_words
"""

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dl
from dl import models, sampling
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
  """{"input": (N, 2, LENGTH) source and shifted target, "label": (N, LENGTH), "weights"}."""
  num = len(chunks)
  sources, targets_in = np.zeros((num, LENGTH), np.int32), np.zeros((num, LENGTH), np.int32)
  labels, weights = np.zeros((num, LENGTH), np.int32), np.zeros((num, LENGTH), np.float32)
  for i, chunk in enumerate(chunks):
    source, target = pydoc_text.encode(chunk), pydoc_text.encode(reverse_words(chunk))
    sources[i, : len(source)] = source
    targets_in[i, 0], targets_in[i, 1 : len(target) + 1] = START_ID, target
    labels[i, : len(target)] = target  # then 0: the end marker
    weights[i, : len(target) + 1] = 1.0
  return {"input": np.stack([sources, targets_in], 1), "label": labels, "weights": weights}


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


def packed_apply(model):
  """`apply_fn` for dl's steps: the input packs source and shifted target as (B, 2, L)."""

  def apply_fn(variables, inputs_Bx2xL, **kwargs):
    return model.apply(variables, inputs_Bx2xL[:, 0], inputs_Bx2xL[:, 1], **kwargs)

  return apply_fn


def train(model, data, *, steps: int, batch_size: int, seed: int = 0):
  """Adam with warmup-cosine decay, dl's train step with the next-token objective."""
  warmup = min(100, steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(steps, warmup + 1))
  tx = optax.adamw(schedule, weight_decay=0.01)
  rng = jax.random.PRNGKey(seed)
  variables = jax.jit(model.init)(rng, data["input"][:1, 0], data["input"][:1, 1])
  state = dl.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    model_state={},
    opt_state=tx.init(variables["params"]),
    rng=rng,
  )
  step = jax.jit(
    functools.partial(
      dl.train_step, apply_fn=packed_apply(model), tx=tx, objective=dl.objectives.next_token
    ),
    donate_argnames="state",
  )
  order = np.random.default_rng(seed)
  for _ in range(steps):
    idx = order.integers(0, len(data["label"]), batch_size)
    state, metrics = step(state, {k: v[idx] for k, v in data.items()})
  return state, {k: float(v) for k, v in metrics.items()}


def evaluate(model, params, data, batch_size: int = 256) -> dict[str, float]:
  """Teacher-forced character accuracy and greedy exact match (cached decoding)."""
  apply = jax.jit(packed_apply(model))
  translate = jax.jit(
    functools.partial(sampling.translate, model=model, num_tokens=LENGTH, start_id=START_ID)
  )
  correct = total = exact = 0.0
  for i in range(0, len(data["label"]), batch_size):
    batch = {k: v[i : i + batch_size] for k, v in data.items()}
    logits_BxLxV = apply({"params": params}, batch["input"])
    hits_BxL = np.asarray(jnp.argmax(logits_BxLxV, -1) == batch["label"]) * batch["weights"]
    correct, total = correct + hits_BxL.sum(), total + batch["weights"].sum()
    generated_BxT = np.asarray(translate(params, batch["input"][:, 0], jax.random.PRNGKey(0)))
    # Compare up to and including the end marker (0) wherever the label has weight.
    match_BxL = (generated_BxT[:, 1:] == batch["label"]) | (batch["weights"] == 0)
    exact += match_BxL.all(axis=1).sum()
  return {"char_accuracy": float(correct / total), "exact_match": float(exact / len(data["label"]))}


def until_end(ids) -> str:
  """The text of generated ids up to the end marker (pad id 0)."""
  ids = np.asarray(ids)
  end = np.flatnonzero(ids == 0)
  return pydoc_text.decode(ids[: end[0]] if len(end) else ids)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/pydoc_reverse_words")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--width", type=int, default=128)
  args = parser.parse_args()
  data = datasets()
  model = make_model(args.width)
  start = time.perf_counter()
  state, last = train(model, data["train"], steps=args.steps, batch_size=args.batch_size)
  wall = time.perf_counter() - start
  scores = evaluate(model, state.params, data["validation"])
  translate = jax.jit(
    functools.partial(sampling.translate, model=model, num_tokens=LENGTH, start_id=START_ID)
  )
  sources = data["validation"]["input"][:5, 0]
  outputs = translate(state.params, sources, jax.random.PRNGKey(0))
  examples = [f"{pydoc_text.decode(s)!r} -> {until_end(o[1:])!r}" for s, o in zip(sources, outputs)]
  result = {
    "train_chunks": len(data["train"]["label"]),
    "validation_chunks": len(data["validation"]["label"]),
    "steps": args.steps,
    "final_train_loss": round(last["loss"], 4),
    **{k: round(v, 4) for k, v in scores.items()},
    "train_wall_s": round(wall),
  }
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "result.json"), "w") as f:
    json.dump({**result, "examples": examples}, f, indent=1)
  print(json.dumps(result))
  print("\n".join(examples))


if __name__ == "__main__":
  main()
