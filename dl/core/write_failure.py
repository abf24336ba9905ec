"""What a failed checkpoint write says: the OS error under orbax's, and one paragraph that
names where, which step, why, what is kept and what to do."""

import errno
import os
import re
import shutil

# What the OS said, as an OSError's errno or in the text of tensorstore's errors.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_STRERROR = {
  errno.ENOSPC: "No space left on device",
  errno.EACCES: "Permission denied",
  errno.EROFS: "Read-only file system",
  errno.EDQUOT: "Disk quota exceeded",
  errno.EPERM: "Operation not permitted",
}


def os_cause(error: BaseException) -> tuple[int | None, str | None]:
  """(errno, path) of the OS error under `error`, or (None, None) when it was not one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno, error.filename
    text = str(error)
    code = _OS_ERROR_CODE.search(text)
    number = (
      int(code.group(1))
      if code
      else next((n for n, words in _STRERROR.items() if words in text), None)
    )
    if number is not None:
      path = _QUOTED_PATH.search(text)
      return number, path and path.group(1)
    error = error.__cause__ or error.__context__
  return None, None


def _size(num_bytes: float) -> str:
  for unit in ("bytes", "kB", "MB", "GB", "TB"):
    if num_bytes < 1000 or unit == "TB":
      return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1000
  raise AssertionError("unreachable")


def _free_bytes(directory: str) -> int:
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  return shutil.disk_usage(directory).free


def describe(
  directory: str, step: int, needed: int, kept: int | None, left: list[str], error: BaseException
) -> str:
  """One paragraph: where, which step, why (the space needed and free, or the path refused),
  what is kept and what to do."""
  number, path = os_cause(error)
  if number in (errno.ENOSPC, errno.EDQUOT):
    what = "the disk is full" if number == errno.ENOSPC else "the disk quota is exceeded"
    why = (
      f"{what}: it needs about {_size(needed)} (the size of the state) and "
      f"{_size(_free_bytes(directory))} is free there"
    )
    fix = "free some space (or move the workdir to a larger disk)"
  elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
    why = f"{_STRERROR[number].lower()} on {path or directory}"
    fix = f"make {directory} writable (or train in another workdir)"
  else:
    why = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    fix = "fix the cause"
  if left:  # never restored: orbax lists only renamed, complete steps, and removes these
    partial = f"Its half-written files ({', '.join(left)}) go at the next start."
  else:
    partial = "Nothing half-written is left."
  if kept is None:
    then = f"There is no earlier checkpoint: {fix}, then rerun (it starts from step 0)."
  else:
    then = f"The last good checkpoint, step {kept}, is kept: {fix}, then rerun to resume from it."
  return f"could not write the checkpoint of step {step} to {directory}: {why}. {partial} {then}"
