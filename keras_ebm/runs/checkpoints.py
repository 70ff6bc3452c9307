"""Checkpoints of a run: everything a resume needs, written so that no kill,
full disk or corrupted file loses more than the steps since the last
complete checkpoint.

`<workdir>/checkpoints/ckpt-<step>.weights.h5` holds the networks, both
optimizers (their step counters: the learning-rate position and, through
the stateless seeds, the random stream) and every bank. It also holds its
own record (an HDF5 attribute): the step, a digest of the state as it was
in memory when saved, and the run's own state (`extra`: the divergence
guard's learning-rate scale and rollback count). Beside it,
`ckpt-<step>.json` (the manifest) holds the same record plus the file's
size and SHA-256.

A checkpoint is written under a temporary name and flushed, any older
manifest of its step removed, the file renamed into place, and only then
its manifest written: a file named as a checkpoint is always complete, and
a manifest never describes another file than the one beside it. A kill
between the rename and the manifest leaves a checkpoint without one, which
its own record verifies. Older checkpoints are removed only after their
successor is in place.

Nothing is restored unverified (`restore`): a checkpoint is verified by
its manifest (size, SHA-256, then the loaded state's digest) or, with its
manifest missing, unreadable or incomplete, by the record inside it (the
loaded state's digest). One that fails is skipped with a warning naming
it (and set aside as `.corrupt` by the run that writes) in favour of the
previous one. One with neither (written before either existed) cannot be
verified: it is skipped too, and a workdir with nothing else stops with
one line saying how to accept it deliberately (`accept`, or `python -m
keras_ebm.runs.checkpoints --accept=<file>`).
"""

import glob
import hashlib
import io
import json
import logging
import os
import re
import sys

import numpy as np

from keras_ebm.runs import files
from keras_ebm.errors import CheckpointError, WriteError

log = logging.getLogger("keras_ebm")

CHECKPOINT_RE = re.compile(r"ckpt-(\d+)\.weights\.h5$")
# The HDF5 attribute of the checkpoint's root that holds its own record.
RECORD_ATTRIBUTE = "keras_ebm_record"
# What a manifest must hold to verify its file (`accepted` ones, written by
# `accept`, have no state digest: their state was never recorded).
MANIFEST_FIELDS = ("step", "bytes", "sha256", "state_digest")


def checkpoint_path(workdir, step):
    return os.path.join(workdir, "checkpoints", f"ckpt-{step:08d}.weights.h5")


def manifest_path(path):
    return path[: -len(".weights.h5")] + ".json"


def list_checkpoints(workdir):
    """`[(step, path)]` of the files named as complete checkpoints, oldest
    first (`restore` verifies them)."""
    found = []
    for path in glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.weights.h5")):
        match = CHECKPOINT_RE.search(path)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def state_variables(model):
    """Every variable a resume needs: weights, banks, both optimizers."""
    out = list(model.weights)
    for opt in (model.ebm_optimizer, getattr(model, "gen_optimizer", None)):
        if opt is not None:
            out += list(opt.variables)
    return out


def state_digest(model):
    """SHA-256 (16 hex digits) of every state variable's dtype, shape and
    bytes, in a fixed order: equal digests mean a bit-identical state."""
    h = hashlib.sha256()
    for v in state_variables(model):
        a = np.asarray(v.numpy())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def save(model, workdir, step, keep=3, extra=None):
    """Writes the checkpoint of `step` (with its record inside) and its
    manifest; keeps the newest `keep` checkpoints up to `step` (all if
    `keep <= 0`).

    Raises:
        WriteError: the disk is full (or any write failed); the previous
            checkpoints are untouched and the message names the newest.
    """
    path = checkpoint_path(workdir, step)
    previous = [p for s, p in list_checkpoints(workdir) if s < step]
    intact = (
        f"the previous checkpoint {previous[-1]} is intact; free space and run "
        "the same command to resume from it"
        if previous
        else "no checkpoint was written"
    )
    record = dict(step=int(step), state_digest=state_digest(model), **(extra or {}))
    try:
        tmp = files.write_temp(path, lambda tmp: _write_weights(model, tmp, record))
        manifest = dict(record, bytes=os.path.getsize(tmp), sha256=files.sha256(tmp))
    except (WriteError, OSError) as e:
        files.discard(files.temp_name(path))
        raise WriteError(f"{_first_line(e)}; {intact}") from e
    # A step saved again (a rollback's re-save with the new run state): its
    # old manifest goes first, so that no kill leaves a manifest beside a
    # file it does not describe; until the new one is written the file's
    # own record verifies it.
    files.discard(manifest_path(path))
    files.commit(tmp, path)
    files.write_json(
        manifest_path(path),
        manifest,
        f"the checkpoint {path} itself is complete (its own record verifies it)",
    )
    older = [p for s, p in list_checkpoints(workdir) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))] if keep > 0 else []:
        files.discard(old)
        files.discard(manifest_path(old))
    return path


def save_weights(model, path, intact=""):
    """`model.save_weights(path)`, atomic and safe on a full disk
    (`files.atomic_write`)."""
    return files.atomic_write(path, lambda tmp: _write_weights(model, tmp), intact)


def _write_weights(model, path, record=None):
    """Writes the `.weights.h5` file of `model`, built in memory first, with
    `record` (a dict) as JSON in the root attribute `RECORD_ATTRIBUTE`
    (Keras' loader reads only its own groups).

    HDF5 writing straight to a file that stops growing (disk full, quota)
    crashes the process with a segmentation fault when it closes the file
    (measured: h5py 3 under RLIMIT_FSIZE); built in memory, the file is
    written with Python's own I/O, whose failure is an `OSError`. Keras
    has no public in-memory weights writer: this is `save_weights`' own
    path (`saving_lib.save_weights_only`) into an `io.BytesIO`.
    """
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(
        model,
        weights_store=store,
        assets_store=None,
        inner_path="",
        visited_saveables=set(),
    )
    if record is not None:
        store.h5_file.attrs[RECORD_ATTRIBUTE] = json.dumps(record, sort_keys=True)
    store.close()
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_manifest(path):
    """The manifest of checkpoint `path`, `{}` when it is missing or not a
    JSON object (`restore` says which, and verifies without it)."""
    manifest, _ = _manifest(path)
    return manifest or {}


def _manifest(path):
    """`(manifest, None)`, or `(None, why it cannot verify the file)`."""
    try:
        with open(manifest_path(path)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None, "its manifest is missing"
    except (OSError, ValueError):
        return None, "its manifest is unreadable"
    if not isinstance(manifest, dict):
        return None, "its manifest is unreadable"
    needed = MANIFEST_FIELDS[:-1] if manifest.get("accepted") else MANIFEST_FIELDS
    missing = [k for k in needed if k not in manifest]
    if missing:
        return None, f"its manifest lacks {', '.join(missing)}"
    return manifest, None


def read_record(path):
    """The record saved inside checkpoint `path` (`save`'s `step`,
    `state_digest` and run state).

    Returns:
        The record; `{}` when the file has none (written before records
        existed, or not by `save`); None when it has one that is damaged
        or the file cannot be opened.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(RECORD_ATTRIBUTE)
    except Exception:  # h5py's OSError on a file that is not HDF5, ...
        return None
    if text is None:
        return {}
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict) or "state_digest" not in record:
        return None
    return record


def problem_of(path):
    """Why the file at `path` is not a complete checkpoint, as far as can
    be told without loading it (`restore` also compares the loaded state
    with the recorded digest), or None."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    manifest, _ = _manifest(path)
    if manifest is None:
        record = read_record(path)
        if record is None:
            return "its manifest is missing and its own record is unreadable"
        if not record:
            return "it has no manifest and no record inside: it cannot be verified"
        return None
    size = os.path.getsize(path)
    if size != manifest["bytes"]:
        return f"the file has {size} bytes, {manifest['bytes']} were written"
    if files.sha256(path) != manifest["sha256"]:
        return "the file's SHA-256 differs from the one recorded when it was written"
    return None


def _verify(model, path):
    """Loads checkpoint `path` into `model` and verifies it.

    Returns:
        `(record, None)` for a verified checkpoint (the manifest, or the
        record inside the file when the manifest cannot verify it), or
        `(None, problem)`; `problem` starts with `UNVERIFIABLE` for a file
        with neither.
    """
    if os.path.getsize(path) == 0:
        return None, "the file is empty"
    manifest, why = _manifest(path)
    if manifest is not None:
        problem = problem_of(path)
        if problem is not None:
            return None, problem
        expected = manifest
    else:
        expected = read_record(path)
        if expected is None:
            return None, f"{why} and its own record is unreadable"
        if not expected:
            return None, f"{UNVERIFIABLE} ({why}, and it has no record inside)"
        log.warning("%s: %s; verifying it by the record inside it", path, why)
    try:
        model.load_weights(path)
    except Exception as e:  # h5py's OSError, Keras' ValueError, ...
        return None, f"it does not load ({_first_line(e)})"
    digest = expected.get("state_digest")
    if digest is not None and state_digest(model) != digest:
        return None, "the loaded state differs from the state that was saved"
    return expected, None


UNVERIFIABLE = "it cannot be verified"


def restore(model, workdir, before=None, quarantine=True):
    """Loads the newest verified checkpoint (of a step `< before`, if
    given) into `model`.

    Each newer checkpoint that is truncated, empty, corrupted or does not
    load is skipped with a warning naming it; with `quarantine` (the run
    that writes the workdir) it is renamed `<file>.corrupt`, so that it is
    never taken for a complete checkpoint again. One that cannot be
    verified (no manifest, no record inside) is skipped with a warning and
    left in place.

    Returns:
        `(step, path, record)`, or None when the workdir has no checkpoint.
        `record` is what verified it: its manifest or its own record
        (`step`, `state_digest`, the run state), or an `accepted` manifest.

    Raises:
        CheckpointError: checkpoints exist, none of them verified; for
            unverifiable ones the message says how to accept one.
    """
    candidates = [
        (s, p) for s, p in list_checkpoints(workdir) if before is None or s < before
    ]
    skipped, unverifiable = [], []
    for step, path in reversed(candidates):
        record, problem = _verify(model, path)
        if problem is None:
            return step, path, record
        if problem.startswith(UNVERIFIABLE):
            log.warning("skipping %s: %s", path, problem)
            unverifiable.append(path)
            continue
        files.quarantine(path, problem, move=quarantine)
        if quarantine:
            files.discard(manifest_path(path))
        skipped.append(os.path.basename(path))
    if unverifiable:
        newest = unverifiable[0]
        also = f" (skipped as damaged: {', '.join(skipped)})" if skipped else ""
        raise CheckpointError(
            f"no verified checkpoint in {workdir}/checkpoints: "
            f"{len(unverifiable)} cannot be verified, having neither a manifest "
            f"nor a record inside{also}; to resume from the newest anyway, "
            f"accept it: python -m keras_ebm.runs.checkpoints --accept={newest} "
            "(or remove the workdir to start over)"
        )
    if skipped:
        raise CheckpointError(
            f"no readable checkpoint in {workdir}/checkpoints (skipped "
            f"{', '.join(skipped)}); remove the workdir to start over"
        )
    return None


def accept(path):
    """Writes a manifest for checkpoint `path` as it is now (size, SHA-256,
    `accepted: true`, no state digest): a deliberate decision to resume
    from a checkpoint that cannot be verified. From then on its file is
    checked against that manifest; its state never was."""
    match = CHECKPOINT_RE.search(path)
    if match is None or not os.path.isfile(path):
        raise CheckpointError(
            f"{path} is not a checkpoint file (ckpt-<step>.weights.h5)"
        )
    manifest = dict(
        step=int(match.group(1)),
        bytes=os.path.getsize(path),
        sha256=files.sha256(path),
        accepted=True,
    )
    files.write_json(manifest_path(path), manifest)
    return manifest


def remove_temporaries(workdir):
    """Deletes what a killed save left behind (never a complete file)."""
    for path in glob.glob(os.path.join(workdir, "checkpoints", "*.tmp.*")):
        files.discard(path)


def set_aside(workdir, after, suffix=".diverged"):
    """Renames every checkpoint of a step `> after` to `<file><suffix>`
    (a rolled-back run continues from an older step; what it left must not
    be resumed from)."""
    for step, path in list_checkpoints(workdir):
        if step > after:
            os.replace(path, path + suffix)
            files.discard(manifest_path(path))


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv):
    """`python -m keras_ebm.runs.checkpoints --accept=<file>` (`accept`)."""
    args = [a for a in argv[1:] if a.startswith("--accept=")]
    if len(args) != 1 or len(argv) != 2:
        print("usage: python -m keras_ebm.runs.checkpoints --accept=<checkpoint file>")
        return 2
    path = args[0].split("=", 1)[1]
    try:
        accept(path)
    except CheckpointError as e:
        print(f"error: {e}")
        return 1
    print(f"accepted {path}: a run resumes from it, unverified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
