"""Finds the damaged files of a prepared data set: its manifest of sizes and sha256.

When dl prepares a data set it records the size and sha256 of every file of its version
folder in `dl_files.json`; on each use `damage` compares the files with that record. A
folder prepared before dl recorded its files is checked by opening its array_record shards
and counting their records. What to do about damage is `dl.data.loading`'s business.
"""

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath

log = logging.getLogger(__name__)

MANIFEST = "dl_files.json"  # In each prepared version folder: its files' sizes and sha256.
# Data sets larger than this are checked by file size only: hashing them on every use
# would cost seconds (sha256 reads about 1.7 GB/s here; dl's local sets are <= 13 MB).
CHECKSUM_MAX_BYTES = 256 * 2**20


def damage(builder: tfds.core.DatasetBuilder) -> dict[str, str]:
  """The damaged files of a prepared data set -> what is wrong with each ({} if none)."""
  folder = epath.Path(builder.data_dir)
  recorded = read_manifest(folder)
  if recorded is None:  # Prepared before dl recorded its files: check that the shards open.
    return _unreadable_shards(builder)
  problems = {file: _file_problem(folder / file, entry) for file, entry in recorded.items()}
  return {file: problem for file, problem in problems.items() if problem}


def read_manifest(folder: epath.PathLike) -> dict[str, dict[str, Any]] | None:
  """File name -> {"size", "sha256"} as recorded when prepared; None if unrecorded or unreadable."""
  try:
    files = json.loads((epath.Path(folder) / MANIFEST).read_text())["files"]
    if all(isinstance(entry["size"], int) for entry in files.values()):
      return files
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    pass
  return None


def write_manifest(folder: epath.PathLike) -> None:
  """Records the size and sha256 of each file of a prepared version folder (atomically)."""
  folder = epath.Path(folder)
  paths = sorted(p for p in folder.iterdir() if p.is_file() and not _unrecorded(p.name))
  sizes = {path.name: path.stat().length for path in paths}
  hashed = sum(sizes.values()) <= CHECKSUM_MAX_BYTES
  files = {
    path.name: {"size": sizes[path.name], "sha256": _sha256(path) if hashed else None}
    for path in paths
  }
  temporary = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
  try:
    temporary.write_text(json.dumps({"files": files}, indent=1))
    temporary.replace(folder / MANIFEST)
  except OSError as e:  # A read-only data dir: the shards are checked on each use instead.
    log.info("cannot record the files of the data set in %s: %s", folder, e)


def _file_problem(path: epath.Path, entry: Mapping[str, Any]) -> str:
  """What differs between a file and its record ("" if nothing)."""
  if not path.exists():
    return "missing"
  size = path.stat().length
  if size != entry["size"]:
    return f"{size:,} bytes; {entry['size']:,} when prepared"
  if entry.get("sha256") and _sha256(path) != entry["sha256"]:
    return "contents changed since it was prepared"
  return ""


def _unreadable_shards(builder: tfds.core.DatasetBuilder) -> dict[str, str]:
  """The array_record shards that are missing, unreadable or short of records."""
  if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    return {}
  problems = {}
  for split in builder.info.splits.values():
    for path, num_records in zip(split.filepaths, split.shard_lengths, strict=True):
      found = _num_records(epath.Path(path))
      if found != num_records:
        problem = "missing or unreadable" if found is None else f"{found:,} records"
        problems[epath.Path(path).name] = f"{problem}; {num_records:,} records when prepared"
  return problems


def _num_records(path: epath.Path) -> int | None:
  """The number of records of an array_record file, None if it is missing or unreadable."""
  if not path.exists():
    return None
  try:
    reader = array_record_module.ArrayRecordReader(os.fspath(path))
    num_records = reader.num_records() if reader.ok() else None
    reader.close()
  except RuntimeError:  # Raised for a damaged file, when opened or closed.
    return None
  return num_records


def _unrecorded(file_name: str) -> bool:
  """Whether a file of a version folder is left out of the manifest (itself, temporaries)."""
  return file_name == MANIFEST or file_name.startswith(".")


def _sha256(path: epath.Path) -> str:
  """The hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()
