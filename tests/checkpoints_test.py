"""Checkpoints that survive what week-long runs meet: truncated, empty and
corrupted files, full disks, and kills between the write and the rename."""

import errno
import logging
import os
import resource
import shutil
import signal
import time

import numpy as np
import pytest

from keras_ebm import checkpoints, files, run
from keras_ebm.configs import shortrun
from keras_ebm.errors import CheckpointError, WriteError
from tests import processes

pytestmark = pytest.mark.slow


def smoke(num_steps=4):
    c = shortrun.get_config("smoke")
    c.train.update(num_steps=num_steps, log_every=2, checkpoint_every=2)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step smoke run: checkpoints 0, 2 and 4."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    run.train(smoke(), workdir)
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2, 4]
    return workdir


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _empty(path):
    open(path, "w").close()


def _garbage(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))


def _flip_a_byte(path):
    # Inside the data: h5py still opens the file and reads a wrong value.
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 1000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "corrupt,manifest",
    [
        (_truncate, True),
        (_empty, True),
        (_garbage, True),
        (_flip_a_byte, True),
        (_truncate, False),  # a checkpoint from before manifests
    ],
    ids=["truncated", "empty", "garbage", "flipped-byte", "truncated-no-manifest"],
)
def test_a_bad_newest_checkpoint_falls_back_to_the_previous(
    trained, tmp_path, caplog, corrupt, manifest
):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    newest = checkpoints.checkpoint_path(workdir, 4)
    original = processes.h5_arrays(newest)
    corrupt(newest)
    if not manifest:
        os.remove(checkpoints.manifest_path(newest))
    with caplog.at_level(logging.WARNING, logger="keras_ebm"):
        model = run.train(smoke(), workdir)
    # The warning names the file; the file is set aside, never read again.
    assert any(newest in r.getMessage() for r in caplog.records), caplog.text
    assert os.path.exists(newest + ".corrupt")
    # Resumed from step 2 and trained steps 3-4 again: the same state as the
    # checkpoint that was lost.
    assert int(model.ebm_optimizer.iterations) == 4
    again = processes.h5_arrays(newest)
    assert again.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(again[name], original[name], err_msg=name)


def test_no_readable_checkpoint_stops_instead_of_starting_over(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    for _, path in checkpoints.list_checkpoints(workdir):
        _truncate(path)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        run.train(smoke(), workdir)


def test_evaluation_skips_a_bad_checkpoint_without_moving_it(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    newest = checkpoints.checkpoint_path(workdir, 4)
    _garbage(newest)
    _, step = run.load_trained(smoke(), workdir)
    assert step == 2
    assert os.path.exists(newest)  # a training run may own the workdir


def test_a_failed_write_keeps_every_checkpoint(trained, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    model, _ = run.load_trained(smoke(), workdir)
    before = {
        p: processes.read_bytes(p) for _, p in checkpoints.list_checkpoints(workdir)
    }

    def full_disk(model, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # part of it got out
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(checkpoints, "_write_weights", full_disk)
    with pytest.raises(WriteError) as e:
        checkpoints.save(model, workdir, 6, keep=1)
    message = str(e.value)
    assert "No space left on device" in message
    assert checkpoints.checkpoint_path(workdir, 6) in message
    assert f"{checkpoints.checkpoint_path(workdir, 4)} is intact" in message
    # keep=1 would remove the older ones, but only after a successor exists.
    after = {
        p: processes.read_bytes(p) for _, p in checkpoints.list_checkpoints(workdir)
    }
    assert after == before
    assert set(os.listdir(os.path.join(workdir, "checkpoints"))) == set(
        os.listdir(os.path.join(trained, "checkpoints"))
    )


def test_a_kill_before_the_rename_leaves_the_old_checkpoints(trained, tmp_path):
    # What a SIGKILL between the write and the rename leaves: a temporary
    # file, never taken for a checkpoint, and removed by the next run.
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    tmp = files.temp_name(checkpoints.checkpoint_path(workdir, 6))
    shutil.copy(checkpoints.checkpoint_path(workdir, 4), tmp)
    _truncate(tmp)
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2, 4]
    model = run.train(smoke(4), workdir)
    assert int(model.ebm_optimizer.iterations) == 4
    assert not os.path.exists(tmp)


def test_disk_full_during_training_stops_with_one_line(tmp_path):
    # A real failed write: the process may not grow a file past a size
    # (RLIMIT_FSIZE, set on the running process between two checkpoints;
    # the write fails with EFBIG as it would with ENOSPC).
    workdir = str(tmp_path / "run")
    log = tmp_path / "train.log"
    proc = processes.start(
        "train.py",
        processes.train_flags("shortrun", workdir, 400),
        log,
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )
    processes.wait_until(lambda: processes.newest(workdir)[0] >= 2, proc)
    size = os.path.getsize(processes.newest(workdir)[1])
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
    proc.wait(120)
    output = processes.read(log)
    assert proc.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "could not write" in line and "File too large" in line, line
    step, path = processes.newest(workdir)
    assert f"the previous checkpoint {path} is intact" in line, line
    assert not [p for p in os.listdir(f"{workdir}/checkpoints") if ".tmp." in p]
    # The same command, with space again, resumes from it.
    time.sleep(0.1)
    flags = processes.train_flags("shortrun", workdir, 400)
    code, output = processes.run(
        "train.py", flags + [f"--config.train.num_steps={step + 2}"], log
    )
    assert code == 0, output[-2000:]
    assert f"Resumed from step {step}" in output


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "state.npz")
    np.savez(path, x=np.arange(3))

    def fails(tmp):
        np.savez(tmp, x=np.arange(5))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match="No space left on device; old is fine"):
        files.atomic_write(path, fails, "old is fine")
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["state.npz"]
