"""Adaptive attacks on Langevin purification, over resumable batches.

`evaluate` runs `pgd.batch_attack` (PGD with EOT, the monotone record;
`keras_ebm.defense.pgd`) batch by batch: each finished batch is a file, so
a killed evaluation resumes and workers share an attack (`Shard`);
`settings_key` names an attack's folder by everything that changes its
result. The PGD names are re-exported: `attack.AttackSettings`,
`attack.batch_attack` are what callers use.
"""

import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_ebm.defense.pgd import (  # noqa: F401  (the attack's public names)
    LOSSES,
    NORMS,
    AttackSettings,
    BatchResult,
    accumulate,
    batch_attack,
    pgd_step,
    random_start,
)
from keras_ebm.runs import files, interrupt


def proportion_ci(successes, n, level=0.95):
    """Exact (Clopper-Pearson) interval of a binomial proportion."""
    from scipy import stats

    ci = stats.binomtest(int(successes), int(n)).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def identity(settings):
    """The settings that name an attack: every field, except those at
    their default that a later version added (`ADDED`), so that adding a
    field keeps the finished attacks of earlier versions valid."""
    values = dataclasses.asdict(settings)
    defaults = {f.name: f.default for f in dataclasses.fields(AttackSettings)}
    return {k: v for k, v in values.items() if k not in ADDED or v != defaults[k]}


# Fields added after attacks had been cached (issue 24).
ADDED = ("surrogate_beta", "spsa_samples", "spsa_delta", "momentum")


def settings_key(settings, **extra):
    """A short hash of everything that changes an attack's result."""
    blob = json.dumps(dict(identity(settings), **extra), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Shard:
    """One worker's share of an attack: batch b is worker `b % count`'s.

    Batches are independent (each its own random start and noise), so
    workers need no communication: each writes its batch files into the
    shared output folder. The chief (`wait`) also waits for the others'
    files and summarizes; the other workers (`wait=False`) stop after their
    own batches. A killed worker, restarted, resumes its own share.
    """

    index: int = 0
    count: int = 1
    wait: bool = True
    poll_seconds: float = 5.0

    def owns(self, batch):
        return batch % self.count == self.index


def evaluate(
    defended,
    images,
    labels,
    settings,
    out_dir,
    *,
    batch_size,
    seed=0,
    progress=None,
    on_step=None,
    shard=Shard(),
):
    """Runs the attack over `images` in batches and summarizes it.

    Each finished batch is saved to
    `out_dir/batch_<index>_<size>_<hash of its images and labels>.npz`, so a
    killed evaluation resumes at the first missing batch and other images
    are never mistaken for these; `out_dir/partial.json` holds the accuracy
    so far. Batch b draws its random start after
    `tf.random.set_seed(seed * 100003 + b)` and its Langevin noise from the
    stateless seed `[seed, b]`, so a resumed run equals an uninterrupted one.

    With a `shard` of several workers, this worker attacks only its own
    batches (`Shard`); a non-waiting worker returns None.

    Returns:
        dict: natural and robust accuracy with 95% Clopper-Pearson
        intervals, the accuracy over attack steps (`curve`, the record's
        mean per row; robust accuracy is its last row), the H_adv accuracy
        per PGD iterate, the Langevin image-steps of the forward
        purifications (`langevin_image_steps`) and timings.
    """
    meta = _claim_folder(out_dir, settings, defended, batch_size, seed)

    def step_hook(iterate, accuracy):
        # Runs between PGD iterates, inside the compiled batch: a signal
        # abandons the batch (the finished ones are saved).
        if interrupt.requested():
            raise _Stop()
        if on_step is not None:
            on_step(iterate, accuracy)

    run = batch_attack(defended, settings, step_hook)
    starts = range(0, len(images), batch_size)
    done = []
    for b, start in enumerate(starts):
        x_np = np.asarray(images[start : start + batch_size], np.float32)
        y_np = np.asarray(labels[start : start + batch_size], np.int32)
        digest = hashlib.sha256(x_np.tobytes() + y_np.tobytes()).hexdigest()[:10]
        path = os.path.join(out_dir, f"batch_{b:05d}_{len(x_np)}_{digest}.npz")
        saved = _load_batch(path)
        if saved is None and not shard.owns(b):
            if not shard.wait:
                continue
            _wait_for(path, f"batch {b} (worker {b % shard.count})", shard)
            saved = _load_batch(path)
        if saved is None:
            saved = _attack_batch(run, x_np, y_np, b, len(starts), path, settings, seed)
        if not shard.wait:
            continue
        done.append(saved)
        record = np.concatenate([d["record"] for d in done], axis=1)
        _write_json(
            os.path.join(out_dir, "partial.json"),
            dict(
                images_done=int(record.shape[1]),
                natural_accuracy=float(record[0].mean()),
                robust_accuracy=float(record[-1].mean()),
            ),
        )
        if progress is not None:
            progress(b + 1, len(starts), record)
    if not shard.wait:
        mine = sum(shard.owns(b) for b in range(len(starts)))
        print(
            f"worker {shard.index} of {shard.count}: {mine} of {len(starts)} "
            f"batches in {os.path.basename(out_dir)}",
            flush=True,
        )
        return None
    return _summary(meta, done, settings, defended.num_steps, seed)


def _claim_folder(out_dir, settings, defended, batch_size, seed):
    """`out_dir` for this attack: its `settings.json` written, or checked
    against the one there (another attack's folder is refused)."""
    os.makedirs(out_dir, exist_ok=True)
    # Batches depend on their index only, so runs over a prefix of the same
    # images share a folder (the K_def curve reuses the main attack's).
    meta = dict(
        settings=identity(settings),
        num_steps_defense=int(defended.num_steps),
        batch_size=batch_size,
        seed=seed,
    )
    meta_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) != meta:
                raise ValueError(
                    f"{out_dir} holds an attack with other settings; remove it or "
                    "choose another output folder"
                )
    else:  # atomic: the workers of a shard write the same file
        _write_json(meta_path, meta)
    return meta


def _attack_batch(run, x_np, y_np, b, num_batches, path, settings, seed):
    """Attacks batch b from its own random start and saves it to `path`;
    a signal stops it with the finished batches named."""
    x, y = tf.constant(x_np), tf.constant(y_np)
    tf.random.set_seed(seed * 100003 + b)
    eta0 = random_start(x, settings)
    # A global seed left set breaks tf.data's tensor-seeded shuffles
    # (keras_ebm.runs.training clears it for the same reason).
    tf.random.set_seed(None)
    out_dir = os.path.dirname(path)
    t0 = time.perf_counter()
    try:
        result = run(x, y, eta0, tf.constant([seed, b]))
    except tf.errors.OpError:
        if interrupt.requested():
            raise interrupt.stop(
                f"the attack in batch {b} of {num_batches}",
                f"batches 0-{b - 1} are saved in {out_dir}"
                if b
                else "no batch was finished",
            ) from None
        raise
    saved = dict(
        record=result.record.numpy(),
        adv_correct=result.adv_correct.numpy(),
        broken=result.x_broken.numpy(),
        nonfinite=result.nonfinite.numpy(),
        seconds=time.perf_counter() - t0,
    )
    files.atomic_write(
        path,
        lambda tmp: np.savez(tmp, **saved),
        f"the finished batches in {out_dir} are intact; free space and "
        "run the same command to resume",
    )
    return saved


def _summary(meta, done, settings, k_def, seed):
    """The attack's figures over its finished batches (`evaluate`)."""
    record = np.concatenate([d["record"] for d in done], axis=1)
    correct = np.concatenate([d["adv_correct"] for d in done], axis=1)
    times = [float(d["seconds"]) for d in done]
    n = record.shape[1]
    natural, robust = int(record[0].sum()), int(record[-1].sum())
    per_step = sum(times) / max(1, len(times) * (settings.num_steps + 1))
    return dict(
        meta,
        num_images=n,
        natural_accuracy=natural / n,
        natural_ci95=proportion_ci(natural, n),
        robust_accuracy=robust / n,
        robust_ci95=proportion_ci(robust, n),
        curve=record.mean(axis=1).tolist(),
        adv_replicate_accuracy=correct.mean(axis=1).tolist(),
        seconds=sum(times),
        seconds_per_attack_step=per_step,
        langevin_image_steps=sum(
            purification_image_steps(d["record"], d["adv_correct"], settings, k_def)
            for d in done
        ),
        nonfinite_gradients=sum(int(d.get("nonfinite", 0)) for d in done),
        per_image_robust=record[-1].astype(int).tolist(),
        seed=seed,
    )


def purification_image_steps(record, adv_correct, settings, k_def):
    """Langevin image-steps of the forward purifications of one batch:
    K_def x (H_adv x B x (1 + 2N) per PGD evaluation, N the SPSA pairs (0
    for a gradient), + H_def per verified image), where every natural image
    is verified and, at iterate i, each still-defended image whose H_adv
    replicates were wrong (row i of the record holds the images defended
    before iterate i)."""
    b = record.shape[1]
    verified = b + int(np.sum(np.logical_and(~adv_correct, record[:-1])))
    evaluations = b * adv_correct.shape[0] * (1 + 2 * settings.spsa_samples)
    return int(k_def) * (
        settings.adv_replicates * evaluations + settings.def_replicates * verified
    )


class _Stop(Exception):
    """Raised inside the compiled batch to abandon it on a signal."""


def _load_batch(path):
    """A finished batch's arrays, or None (not there; unreadable: set aside
    with a warning naming it, and attacked again)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # truncated, bad CRC, not a zip at all
        files.quarantine(path, f"the batch file does not load ({e})")
        return None


def _wait_for(path, what, shard):
    """Polls for another worker's batch file (the chief's summary needs
    every batch); says once what it waits for."""
    print(f"waiting for {what}: {os.path.basename(path)}", flush=True)
    while not os.path.exists(path):
        time.sleep(shard.poll_seconds)


def _write_json(path, value):
    files.write_json(path, value)
