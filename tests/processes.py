"""Runs `train.py` and `evaluate.py` as a user does, in real processes, and
kills them with real signals."""

import os
import random
import re
import subprocess
import sys
import time

import h5py
import numpy as np

from keras_ebm.runs import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def start(script, flags, log_path, **kwargs):
    """`python <script> <flags>` with its output in `log_path`."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, script), *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=REPO,
        **kwargs,
    )


def run(script, flags, log_path, timeout=300):
    """Runs to the end; returns `(exit code, output)`."""
    proc = start(script, flags, log_path)
    proc.wait(timeout)
    return proc.returncode, read(log_path)


def read(path):
    with open(path) as f:
        return f.read()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def newest(workdir):
    """`(step, path)` of the newest checkpoint file, or `(-1, None)`."""
    saved = checkpoints.list_checkpoints(workdir)
    return saved[-1] if saved else (-1, None)


def wait_until(condition, proc, timeout=240, what="the run"):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"{what} ended (exit {proc.returncode}) before")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def h5_arrays(path):
    """`{dataset name: array}` of a Keras weights file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return out


def train_flags(regime, workdir, num_steps):
    """A CPU-second smoke run of `regime`: one checkpoint per step, so a
    kill lands in a step, in a checkpoint write or in start-up."""
    return [
        f"--regime={regime}",
        "--dataset=smoke",
        f"--workdir={workdir}",
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=1",
        f"--config.train.image_every={num_steps}",
        "--config.train.keep_checkpoints=2",
    ]


RESUMED = re.compile(r"Resumed from step (\d+): \S+ \(state ([0-9a-f]+) verified\)")


def kill_cycles(tmp_path, regime, cycles=10, num_steps=32, seed=0):
    """Kills a training run with SIGKILL `cycles` times in a row at random
    points, restarting it each time, then lets it finish.

    Each kill comes at a random delay, either during start-up and restore
    or after the run has made progress (in a step or in a checkpoint write).
    Each restart must resume from the newest complete checkpoint at the
    time of the kill, with the state digest recorded when that checkpoint
    was saved.

    Returns:
        `(workdir, kills)`: `kills` lists `(cycle, checkpoint step resumed
        from at the next start, seconds after start, whether the kill came
        during a checkpoint write)`.
    """
    rng = random.Random(seed)
    workdir = str(tmp_path / "killed")
    flags = train_flags(regime, workdir, num_steps)
    expected, kills = None, []
    for cycle in range(cycles + 1):
        log_path = tmp_path / f"cycle{cycle}.log"
        proc = start("train.py", flags, log_path)
        t0 = time.time()
        if cycle < cycles:
            before = newest(workdir)[0]
            if cycle % 3 == 1:  # start-up, data, model, restore
                time.sleep(rng.uniform(0.5, 6.0))
            else:  # training: one more checkpoint, then anywhere
                wait_until(
                    lambda b=before: newest(workdir)[0] > b, proc, what="progress"
                )
                time.sleep(rng.uniform(0.0, 0.5))
            proc.kill()
        proc.wait(300)
        output = read(log_path)
        if cycle == cycles:
            assert proc.returncode == 0, output[-3000:]
        if expected is not None:
            match = RESUMED.search(output)
            if match is None:  # killed before it got to resume
                assert cycle < cycles and "Resumed" not in output
            else:
                assert (int(match.group(1)), match.group(2)) == expected, output
        step, path = newest(workdir)
        if step >= 0:
            assert checkpoints.problem_of(path) is None, path
            # The record inside the file: its manifest may be missing after a
            # kill between the rename and the manifest write.
            expected = (step, checkpoints.read_record(path)["state_digest"])
        # A temporary file left behind: the kill came during a checkpoint
        # write (the restart must not take it for a checkpoint).
        folder = os.path.join(workdir, "checkpoints")
        in_write = os.path.isdir(folder) and any(
            ".tmp." in f for f in os.listdir(folder)
        )
        kills.append((cycle, step, round(time.time() - t0, 1), in_write))
    return workdir, kills


def assert_same_checkpoints(path_a, path_b):
    """Every array of two checkpoint files is bit-identical."""
    a, b = h5_arrays(path_a), h5_arrays(path_b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    return len(a)


# SIGKILLs per kill test: 4 in CI (every restart is a TensorFlow start-up;
# ten per regime took 4 minutes of CI). Issue 15 measured ten in a row over
# 40 steps (BUILD_NOTES); `KILL_CYCLES=10 KILL_STEPS=40 make test` runs that
# again.
KILL_CYCLES = int(os.environ.get("KILL_CYCLES", "4"))
# Steps of a killed run (issue 15: 40, then 32); each kill after progress
# costs one or a few, so 24 leave room for four.
KILL_STEPS = int(os.environ.get("KILL_STEPS", "24"))


def kill_test(tmp_path, regime, seed):
    """`KILL_CYCLES` SIGKILLs in a row (`kill_cycles`), then the finished
    run's checkpoint equals an uninterrupted run's, every array bit for
    bit."""
    workdir, kills = kill_cycles(
        tmp_path, regime, cycles=KILL_CYCLES, num_steps=KILL_STEPS, seed=seed
    )
    print("(cycle, checkpoint after the kill, seconds, in a write):", kills)
    assert len(kills) == KILL_CYCLES + 1
    straight = str(tmp_path / "straight")
    code, output = run(
        "train.py", train_flags(regime, straight, KILL_STEPS), tmp_path / "straight.log"
    )
    assert code == 0, output[-3000:]
    (step, killed), (step_b, whole) = [newest(d) for d in (workdir, straight)]
    assert step == step_b == KILL_STEPS
    assert assert_same_checkpoints(killed, whole) > 20
