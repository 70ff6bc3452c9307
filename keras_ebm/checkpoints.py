"""Checkpoints of a run: everything a resume needs, written so that no kill,
full disk or corrupted file loses more than the steps since the last
complete checkpoint.

`<workdir>/checkpoints/ckpt-<step>.weights.h5` holds the networks, both
optimizers (their step counters: the learning-rate position and, through
the stateless seeds, the random stream) and every bank. Beside it,
`ckpt-<step>.json` (the manifest) holds the file's size and SHA-256, a
digest of the state as it was in memory when saved, and the run's own
state (`extra`: the divergence guard's learning-rate scale and rollback
count).

A checkpoint is written under a temporary name, flushed, its manifest put
in place, then renamed into place: a file named as a checkpoint is always
complete. Older checkpoints are removed only after their successor is in
place. A checkpoint whose file does not match its manifest, or that does
not load, is skipped with a warning naming it (and set aside as
`.corrupt` by the run that writes) in favour of the previous one.
"""

import glob
import hashlib
import io
import json
import os
import re

import numpy as np

from keras_ebm import files
from keras_ebm.errors import CheckpointError, WriteError

CHECKPOINT_RE = re.compile(r"ckpt-(\d+)\.weights\.h5$")


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
    """Writes the checkpoint of `step` and its manifest; keeps the newest
    `keep` checkpoints up to `step` (all if `keep <= 0`).

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
    try:
        tmp = files.write_temp(path, lambda tmp: _write_weights(model, tmp))
        manifest = dict(
            step=int(step),
            bytes=os.path.getsize(tmp),
            sha256=files.sha256(tmp),
            state_digest=state_digest(model),
            **(extra or {}),
        )
        files.write_json(manifest_path(path), manifest)
    except (WriteError, OSError) as e:
        files.discard(files.temp_name(path))
        raise WriteError(f"{_first_line(e)}; {intact}") from e
    files.commit(tmp, path)
    older = [p for s, p in list_checkpoints(workdir) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))] if keep > 0 else []:
        files.discard(old)
        files.discard(manifest_path(old))
    return path


def save_weights(model, path, intact=""):
    """`model.save_weights(path)`, atomic and safe on a full disk
    (`files.atomic_write`)."""
    return files.atomic_write(path, lambda tmp: _write_weights(model, tmp), intact)


def _write_weights(model, path):
    """Writes the `.weights.h5` file of `model`, built in memory first.

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
    store.close()
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_manifest(path):
    """The manifest of checkpoint `path` (`{}` for a checkpoint written
    before manifests existed)."""
    try:
        with open(manifest_path(path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def problem_of(path):
    """Why the file at `path` is not the complete checkpoint its manifest
    describes, or None."""
    manifest = read_manifest(path)
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty"
    if not manifest:
        return None
    if size != manifest["bytes"]:
        return f"the file has {size} bytes, {manifest['bytes']} were written"
    if files.sha256(path) != manifest["sha256"]:
        return "the file's SHA-256 differs from the one recorded when it was written"
    return None


def restore(model, workdir, before=None, quarantine=True):
    """Loads the newest readable checkpoint (of a step `< before`, if given)
    into `model`.

    Each newer checkpoint that is truncated, empty, corrupted or does not
    load is skipped with a warning naming it; with `quarantine` (the run
    that writes the workdir) it is renamed `<file>.corrupt`, so that it is
    never taken for a complete checkpoint again.

    Returns:
        `(step, path, manifest)`, or None when the workdir has no checkpoint.

    Raises:
        CheckpointError: checkpoints exist, none of them readable.
    """
    candidates = [
        (s, p) for s, p in list_checkpoints(workdir) if before is None or s < before
    ]
    skipped = []
    for step, path in reversed(candidates):
        problem = problem_of(path)
        if problem is None:
            try:
                model.load_weights(path)
            except Exception as e:  # h5py's OSError, Keras' ValueError, ...
                problem = f"it does not load ({_first_line(e)})"
        manifest = read_manifest(path)
        if problem is None and manifest:
            if state_digest(model) != manifest["state_digest"]:
                problem = "the loaded state differs from the state that was saved"
        if problem is None:
            return step, path, manifest
        files.quarantine(path, problem, move=quarantine)
        if quarantine:
            files.discard(manifest_path(path))
        skipped.append(os.path.basename(path))
    if skipped:
        raise CheckpointError(
            f"no readable checkpoint in {workdir}/checkpoints (skipped "
            f"{', '.join(skipped)}); remove the workdir to start over"
        )
    return None


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
