"""FID along Langevin chains: one run of the chains gives the whole curve
(the paper's Figure 1), resumable mid-chain and extendable to more steps."""

import os

import numpy as np

from keras_ebm.evaluation import metrics
from keras_ebm.runs import files, interrupt

_META = ("milestones", "batch_size", "chunk", "identity")


def trajectory_fid(
    sample_init,
    advance,
    net,
    data_stats,
    num_samples,
    batch_size,
    milestones,
    state_path=None,
    progress=True,
    chunk=1000,
    keep=64,
    on_milestone=None,
    identity="",
    extend_from=(),
):
    """FID at several step counts along the same Langevin chains.

    The chains are `ceil(num_samples / batch_size)` batches, batch b starting
    from `sample_init(b)`. All batches advance together in chunks of at most
    `chunk` steps that end at every milestone (`advance(x, num_steps, seed)
    -> (x, energy, drift_norm)`, with `seed = [b, step]`), so one run gives
    the whole curve (the paper's Figure 1), each milestone's FID is known as
    soon as the chains reach it (`on_milestone(steps, fid)`), and memory
    holds only the chain states and features. With `state_path` the chain
    states and features are saved after every chunk, so a killed evaluation
    (even of 1M steps) resumes mid-chain. A state saved by an evaluation
    of the same chains (the same `identity`, `batch_size` and `chunk`) whose
    milestones agree with these up to its step, found in `extend_from`, is
    continued rather than restarted: a finished 100K-step curve extends to
    1M steps, and the result equals the uninterrupted 1M-step run (the
    chunks, hence the seeds, up to that step are the same).

    Returns:
        `{"fid": {milestone: fid}, "trace": [N, 3] (step, mean potential,
        mean drift norm) of the first batch, "snapshots": {milestone: its
        first `keep` states}, "features": {milestone: [num_samples, D]}}`.
    """
    milestones = sorted(set(int(m) for m in milestones))
    num_batches = -(-num_samples // batch_size)
    last = milestones[-1]
    where = (milestones, batch_size, chunk, identity)
    st = _resume(state_path, extend_from, where)
    if st is None:
        st = {"step": 0, "trace": np.zeros((0, 3))}
        st["x"] = np.stack([np.asarray(sample_init(b)) for b in range(num_batches)])
    mu, sigma = data_stats
    results = {}

    def score(m):
        act = st[f"f{m}"][:num_samples]
        if not np.isfinite(act).all():  # diverged chains: no meaningful FID
            return float("nan")
        return metrics.fid_from_statistics(
            *metrics.activation_statistics(act), mu, sigma
        )

    step = int(st["step"])
    bar = _progress_bar(progress, num_batches, batch_size, last, step)
    while True:
        if step in milestones:
            if f"f{step}" not in st:
                st[f"f{step}"] = np.concatenate([net(x) for x in st["x"]])
                st[f"s{step}"] = st["x"][0][:keep]
                _save(state_path, st, where)
            results[step] = score(step)
            if on_milestone:
                on_milestone(step, results[step])
        if step >= last:
            break
        k = min(chunk, min(m for m in milestones if m > step) - step)
        _advance_chunk(st, advance, step, k, bar, state_path)
        step += k
        _save(state_path, st, where)
    if bar:
        bar.close()
    if state_path:  # complete: the state before it is no longer needed
        files.discard(previous_state(state_path))
    for m in milestones:  # reached before a resume: not scored in this run
        results.setdefault(m, score(m))
    return {
        "fid": results,
        "trace": st["trace"][st["trace"][:, 0] <= last],
        "snapshots": {m: st[f"s{m}"] for m in milestones},
        "features": {m: st[f"f{m}"][:num_samples] for m in milestones},
    }


def _resume(state_path, extend_from, where):
    """The chain state to go on from: its own saved state first; else the
    furthest compatible other one (`_continues`); None: start afresh. A
    state that does not load (a disk error) is set aside for the one saved
    before it (`.prev`), else for the chains from their start."""
    st = None
    own = [state_path, previous_state(state_path)] if state_path else []
    for path in [*own, *extend_from]:
        saved = _load_state(path)
        if saved is None:
            continue
        same = path in own
        if _continues(saved, *where, same) and (
            st is None or int(saved["step"]) > int(st["step"])
        ):
            st = {k: v for k, v in saved.items() if k not in _META}
        if st is not None and same:
            break
    return st


def _advance_chunk(st, advance, step, k, bar, state_path):
    """Every batch of chains `k` steps on from `step` (in place in `st`,
    the first batch's energy and drift appended to the trace); a signal
    stops before a batch, the state file holding the chunk's start."""
    xs = []
    for b, x in enumerate(st["x"]):
        if interrupt.requested():
            where = f"chain states at step {step} saved in {state_path}"
            raise interrupt.stop(
                "the FID evaluation", where if state_path else "nothing saved"
            )
        x, energy, drift = advance(x, k, [b, step])
        xs.append(np.asarray(x))
        if b == 0:
            st["trace"] = np.concatenate([st["trace"], [[step + k, energy, drift]]])
        if bar:
            bar.update(k)
    st["x"], st["step"] = np.stack(xs), step + k


def _save(state_path, st, where):
    """The chain state, atomically; the state before it stays beside it
    (`previous_state`) until the new one is in place."""
    if not state_path:
        return
    milestones, batch_size, chunk, identity = where
    tmp = files.write_temp(
        state_path,
        lambda tmp: np.savez(
            tmp,
            milestones=milestones,
            batch_size=batch_size,
            chunk=chunk,
            identity=identity,
            **st,
        ),
    )
    if os.path.exists(state_path):
        os.replace(state_path, previous_state(state_path))
    files.commit(tmp, state_path)


def _progress_bar(progress, num_batches, batch_size, last, step):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=num_batches * last,
        initial=num_batches * step,
        unit="step",
        desc=f"{num_batches} x {batch_size} chains",
    )


def previous_state(path):
    """Where the chain state saved before `path`'s is kept."""
    return path[: -len(".npz")] + ".prev.npz"


def _load_state(path):
    """The arrays of a saved chain state, or None (missing; unreadable:
    set aside with a warning naming it)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # truncated zip, bad CRC, not a zip at all
        files.quarantine(path, f"the chain state does not load ({e})")
        return None


def _continues(f, milestones, batch_size, chunk, identity, same_file):
    """Whether the saved chain state `f` is a prefix of these chains.

    Up to the saved step every chunk boundary is fixed by the milestones
    at or below it and by `chunk`, so equal milestones there give the same
    seeds and the same states as a run from step 0."""
    if int(f["batch_size"]) != batch_size:
        return False
    if same_file and "identity" not in f:  # written before extension
        return list(f["milestones"]) == milestones
    if "identity" not in f or str(f["identity"]) != identity:
        return False
    if int(f["chunk"]) != chunk:
        return False
    # A state past the last milestone serves too: its features are saved.
    upto = min(int(f["step"]), milestones[-1])
    saved = [int(m) for m in f["milestones"]]
    return [m for m in saved if m <= upto] == [m for m in milestones if m <= upto]
