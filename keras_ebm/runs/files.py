"""Crash-safe files: every output a long run resumes from is written under
a temporary name, flushed to disk and renamed, so that a kill, a full disk
or a power cut leaves either the old complete file or the new complete
one; a file that cannot be read is skipped with a warning and set aside.
"""

import contextlib
import hashlib
import json
import logging
import os

from keras_ebm.errors import WriteError

log = logging.getLogger("keras_ebm")


def temp_name(path):
    """`dir/name.tmp.ext` for `dir/name.ext` (the extension kept: Keras and
    NumPy name files by it)."""
    folder, base = os.path.split(path)
    stem, dot, ext = base.partition(".")
    return os.path.join(folder, f"{stem}.tmp{dot}{ext}")


def write_temp(path, write):
    """Writes `path`'s temporary file with `write(tmp_path)` and flushes it
    to disk; returns the temporary name (to `commit`).

    Raises:
        WriteError: the write failed; nothing of it is left behind.
    """
    tmp = temp_name(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        write(tmp)
        _fsync(tmp)
    except Exception as e:  # ENOSPC, EDQUOT, EFBIG, EIO, h5py's own errors
        discard(tmp)
        raise WriteError(f"could not write {path}: {_cause(e)}") from e
    return tmp


def commit(tmp, path):
    """Renames a flushed temporary file into place, atomically."""
    os.replace(tmp, path)
    _fsync(os.path.dirname(path) or ".")


def atomic_write(path, write, intact=""):
    """`write(tmp_path)`, then the file appears at `path` complete, or not
    at all: the previous `path`, if any, is untouched by a failure.

    Args:
        path: the file.
        write: writes the whole file to the path it is given.
        intact: what the error message says is still intact.

    Raises:
        WriteError: naming `path`, the cause (e.g. "No space left on
            device") and `intact`.
    """
    try:
        tmp = write_temp(path, write)
    except WriteError as e:
        raise WriteError(f"{e}{'; ' + intact if intact else ''}") from e.__cause__
    commit(tmp, path)
    return path


def write_json(path, value, intact=""):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)

    return atomic_write(path, write, intact)


def discard(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def quarantine(path, reason, suffix=".corrupt", move=True):
    """Warns that `path` is skipped and why; with `move`, renames it to
    `path + suffix` (kept for inspection, never read again)."""
    if move:
        with contextlib.suppress(OSError):
            os.replace(path, path + suffix)
        where = f"; kept as {os.path.basename(path + suffix)}"
    else:
        where = ""
    log.warning("skipping %s: %s%s", path, reason, where)


def sha256(path):
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path):
    flags = os.O_RDONLY
    if os.path.isdir(path):
        flags |= getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync directories
        pass
    finally:
        os.close(fd)


def _cause(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
