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

from keras_ebm import run
from keras_ebm.configs import shortrun
from keras_ebm.errors import CheckpointError, WriteError
from keras_ebm.runs import checkpoints, files
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


def _flip_a_byte(path, offset=None):
    # Near the end: h5py still opens the file.
    offset = os.path.getsize(path) - 1000 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _flip_a_data_byte(path):
    # Inside the largest array's stored bytes: the file loads, one value of
    # the state is wrong (the byte above may fall between arrays, where only
    # the file's SHA-256 sees it and the loaded state is the saved one).
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.append((obj.id.get_storage_size(), obj.id.get_offset()))
                if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None
                else None
            )
        )
    size, offset = max(found)
    _flip_a_byte(path, offset + size // 2)


@pytest.mark.parametrize(
    "corrupt,manifest",
    [
        (_truncate, True),
        (_empty, True),
        (_garbage, True),
        (_flip_a_byte, True),
        (_truncate, False),  # manifest lost: its record cannot save a truncated file
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

    def full_disk(model, path, *record):
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


# === Nothing restored unverified ===


def _copy(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    return workdir, checkpoints.checkpoint_path(workdir, 4)


def _model():
    return run.build_model(smoke())


def trained_path(trained, step=4):
    return checkpoints.checkpoint_path(trained, step)


def _lose_manifest(path):
    os.remove(checkpoints.manifest_path(path))


def _garble_manifest(path):
    with open(checkpoints.manifest_path(path), "w") as f:
        f.write('{"step": 4, "by')


def _drop_bytes(path):
    # Valid JSON without a field (was `KeyError: 'bytes'`).
    manifest = checkpoints.read_manifest(path)
    del manifest["bytes"]
    files.write_json(checkpoints.manifest_path(path), manifest)


MANIFEST_LOSSES = pytest.mark.parametrize(
    "lose", [_lose_manifest, _garble_manifest, _drop_bytes], ids=lambda f: f.__name__
)


@MANIFEST_LOSSES
def test_without_its_manifest_a_checkpoint_is_verified_by_its_record(
    trained, tmp_path, caplog, lose
):
    workdir, newest = _copy(trained, tmp_path)
    lose(newest)
    model = _model()
    with caplog.at_level(logging.WARNING, logger="keras_ebm"):
        step, path, record = checkpoints.restore(model, workdir)
    assert (step, path) == (4, newest)
    assert "verifying it by the record inside it" in caplog.text, caplog.text
    assert record["state_digest"] == checkpoints.state_digest(model)
    assert (
        record["state_digest"]
        == checkpoints.read_record(trained_path(trained))["state_digest"]
    )


@MANIFEST_LOSSES
def test_a_flipped_byte_without_its_manifest_falls_back(
    trained, tmp_path, caplog, lose
):
    # The reproduction: one flipped data byte in the newest
    # checkpoint plus a lost manifest used to resume from it silently.
    workdir, newest = _copy(trained, tmp_path)
    _flip_a_data_byte(newest)
    lose(newest)
    with caplog.at_level(logging.WARNING, logger="keras_ebm"):
        step, _, _ = checkpoints.restore(_model(), workdir)
    assert step == 2
    assert f"skipping {newest}: the loaded state differs" in caplog.text, caplog.text
    assert os.path.exists(newest + ".corrupt")


def test_a_state_that_differs_from_its_digest_is_skipped(trained, tmp_path, caplog):
    # File and manifest agree (size, SHA-256 rewritten after the flip): only
    # the loaded state's digest can tell.
    workdir, newest = _copy(trained, tmp_path)
    _flip_a_data_byte(newest)
    manifest = checkpoints.read_manifest(newest)
    manifest.update(bytes=os.path.getsize(newest), sha256=files.sha256(newest))
    files.write_json(checkpoints.manifest_path(newest), manifest)
    assert checkpoints.problem_of(newest) is None
    with caplog.at_level(logging.WARNING, logger="keras_ebm"):
        step, _, _ = checkpoints.restore(_model(), workdir)
    assert step == 2
    assert "the loaded state differs from the state that was saved" in caplog.text


def _strip(path):
    """A checkpoint as written before manifests and records existed."""
    import h5py

    with h5py.File(path, "r+") as f:
        del f.attrs[checkpoints.RECORD_ATTRIBUTE]
    _lose_manifest(path)


def test_unverifiable_checkpoints_are_refused_until_accepted(trained, tmp_path, caplog):
    workdir, newest = _copy(trained, tmp_path)
    _strip(newest)
    with caplog.at_level(logging.WARNING, logger="keras_ebm"):
        step, _, _ = checkpoints.restore(_model(), workdir)
    assert step == 2  # the newest verified one
    assert f"skipping {newest}: it cannot be verified" in caplog.text
    assert os.path.exists(newest)  # not damaged: left for the user to accept
    for step in (0, 2):
        _strip(checkpoints.checkpoint_path(workdir, step))
    with pytest.raises(CheckpointError) as e:
        run.train(smoke(), workdir)
    message = str(e.value)
    assert "no verified checkpoint" in message and "\n" not in message
    assert f"python -m keras_ebm.runs.checkpoints --accept={newest}" in message
    assert checkpoints.main(["checkpoints", f"--accept={newest}"]) == 0
    step, _, record = checkpoints.restore(_model(), workdir)
    assert step == 4 and record["accepted"] and "state_digest" not in record


def test_the_guard_run_state_survives_a_lost_manifest(trained, tmp_path, capsys):
    from keras_ebm.runs import fit_loop

    workdir, newest = _copy(trained, tmp_path)
    model = _model()
    checkpoints.restore(model, workdir)
    config = smoke()
    checkpoints.save(model, workdir, 4, extra={"lr_scale": 0.25, "rollbacks": 2})
    _lose_manifest(newest)
    model = _model()
    run_state = fit_loop.resume_or_start(config, workdir, model, None, chief=True)
    assert (run_state.lr_scale, run_state.rollbacks) == (0.25, 2)
    lr = float(model.ebm_optimizer.learning_rate.numpy())
    np.testing.assert_allclose(lr, 0.25 * config.optim.ebm_lr.rates[0], rtol=1e-6)
    assert "Resumed from step 4" in capsys.readouterr().out


class Killed(BaseException):
    """A SIGKILL at a point of a save: nothing after it runs."""


def _killed(*args, **kwargs):
    raise Killed


@pytest.mark.parametrize(
    "where", ["in_the_write", "before_the_rename", "before_the_manifest"]
)
def test_a_kill_inside_a_rollback_re_save_resumes_consistently(
    trained, tmp_path, monkeypatch, where
):
    # A rollback sets aside what came after step 2 and saves step 2 again
    # with the new run state. Killed anywhere in that re-save, the next
    # start resumes step 2 verified, with the run state that belongs to the
    # file it finds: the old one before the rename, the new one after.
    workdir, _ = _copy(trained, tmp_path)
    model = _model()
    step, _, _ = checkpoints.restore(model, workdir, before=3)
    checkpoints.set_aside(workdir, after=step)
    target = {
        "in_the_write": (checkpoints, "_write_weights"),
        "before_the_rename": (files, "commit"),
        "before_the_manifest": (files, "write_json"),
    }[where]
    monkeypatch.setattr(*target, _killed)
    with pytest.raises(Killed):
        checkpoints.save(model, workdir, 2, extra={"lr_scale": 0.5, "rollbacks": 1})
    monkeypatch.undo()
    checkpoints.remove_temporaries(workdir)  # what the next start does
    fresh = _model()
    step, _, record = checkpoints.restore(fresh, workdir)
    assert step == 2
    assert record["state_digest"] == checkpoints.state_digest(fresh)
    renamed = where == "before_the_manifest"
    assert record.get("lr_scale", 1.0) == (0.5 if renamed else 1.0)
    assert record.get("rollbacks", 0) == (1 if renamed else 0)


def test_the_checkpointer_never_saves_a_flagged_state(trained, tmp_path):
    from keras_ebm.runs import callbacks, guard

    workdir, _ = _copy(trained, tmp_path)
    model, _ = run.load_trained(smoke(), workdir)
    watch = guard.Guard((-1.0, 1.0), 1)
    saver = callbacks.Checkpointer(workdir, 2, 100, keep=0, guard=watch)
    saver.set_model(model)
    model.ebm_optimizer.iterations.assign(6)
    watch.event = guard.Event(6, 5, "non-finite energies or gradients")
    saver.on_epoch_end(0)
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2, 4]
    watch.event = None  # the same callback saves an unflagged state
    saver.on_epoch_end(0)
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2, 4, 6]


def _signal_in_write(monkeypatch, step, *signals):
    """Sends `signals` to this process inside the write of checkpoint
    `step`, each handled before the next (a pending signal of a number
    absorbs a second of the same), after part of the file is out."""
    from keras_ebm.runs import interrupt

    write = checkpoints._write_weights

    def writes(model, path, record=None):
        if record and record["step"] == step:
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)
            for sig in signals:
                handled = len(interrupt._handled)
                os.kill(os.getpid(), sig)
                deadline = time.time() + 10
                while len(interrupt._handled) == handled and time.time() < deadline:
                    time.sleep(0.01)
        return write(model, path, record)

    monkeypatch.setattr(checkpoints, "_write_weights", writes)


def test_a_signal_inside_a_checkpoint_write_completes_it(
    trained, tmp_path, monkeypatch
):
    from keras_ebm.errors import Interrupted

    workdir = str(tmp_path / "run")
    _signal_in_write(monkeypatch, 2, signal.SIGTERM)
    # Any KeyboardInterrupt is caught here: one raised inside the write
    # would otherwise stop pytest itself.
    with pytest.raises(KeyboardInterrupt) as e:
        run.train(smoke(), workdir)
    assert isinstance(e.value, Interrupted), "the write was interrupted"
    assert "SIGTERM: training at step 3 stopped" in str(e.value)
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2, 3]
    path = checkpoints.checkpoint_path(workdir, 2)
    assert checkpoints.problem_of(path) is None
    assert processes.assert_same_checkpoints(path, trained_path(trained, 2)) > 20


def test_a_second_ctrl_c_inside_a_checkpoint_write_stops_at_once(
    trained, tmp_path, monkeypatch, capsys
):
    workdir = str(tmp_path / "run")
    _signal_in_write(monkeypatch, 4, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as e:
        run.train(smoke(), workdir)
    assert type(e.value) is KeyboardInterrupt  # at once, not after a save
    # Nothing named as a checkpoint is incomplete; the next start removes
    # the half temporary file and resumes, verified, to the same result.
    assert [s for s, _ in checkpoints.list_checkpoints(workdir)] == [0, 2]
    monkeypatch.undo()
    model = run.train(smoke(), workdir)
    assert "Resumed from step 2" in capsys.readouterr().out
    assert int(model.ebm_optimizer.iterations) == 4
    assert not [p for p in os.listdir(f"{workdir}/checkpoints") if ".tmp." in p]
    newest = checkpoints.checkpoint_path(workdir, 4)
    assert processes.assert_same_checkpoints(newest, trained_path(trained)) > 20
