"""MultiWorkerMirroredStrategy launched as a user would: two `train.py`
processes with TF_CONFIG naming two loopback workers.

Checks, per regime: both workers finish and agree bit for bit on every
weight, optimizer slot and bank state (`distribute.check_replicas_agree`,
collective), only the chief writes (one TensorBoard writer, its checkpoints),
the two-worker run equals a one-process run of the same config (every draw
is made for the global batch), and its checkpoint resumes in one process.
"""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.test_case import assert_trained_alike

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(script, cwd, flags, tf_config=None):
    env = dict(ENV)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, script), *flags],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _train(cwd, flags, tf_config=None):
    return _launch("train.py", cwd, flags, tf_config)


def _evaluate(cwd, flags, tf_config=None):
    return _launch("evaluate.py", cwd, flags, tf_config)


def _two_workers(launch, cwd, flags):
    """Two processes of `launch` (`_train`, `_evaluate`) with TF_CONFIG
    naming two loopback workers and `train.strategy=multi_worker`."""
    cluster = {"worker": [f"localhost:{p}" for p in _ports(2)]}
    flags = flags + ["--config.train.strategy=multi_worker"]
    return [
        launch(cwd, flags, {"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _arrays(path):
    out = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda n, o: (
                out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
            )
        )
    return out


def _load(regime, workdir, step):
    """The model of `workdir` (built from its config.json) at checkpoint
    `step`."""
    import ml_collections

    from keras_ebm import regimes
    from keras_ebm.runs import checkpoints

    with open(workdir / "config.json") as f:
        config = ml_collections.ConfigDict(json.load(f))
    model = regimes.REGIMES[regime].build(config)
    model.load_weights(checkpoints.checkpoint_path(str(workdir), step))
    return model


def _same(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(a.get_weights(), b.get_weights(), strict=True)
    )


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A smoke classifier (8x8 digits) trained by two workers: the tests'
    FID backbone and the classifier the midrun attack defends."""
    root = tmp_path_factory.mktemp("classifier")
    flags = ["--regime=classifier", "--dataset=smoke", "--workdir=clf"]
    flags += ["--config.data.image_size=8"]
    workers = _two_workers(_train, root, flags)
    return root / "clf", [_finish(p) for p in workers]


@pytest.mark.slow  # two train.py processes (the fixture)
def test_two_workers_train_the_classifier(classifier_run):
    # Stock Keras fit under multi_worker (distribute.shape_keras_steps): both
    # workers finish with the same state (checked collectively) and the
    # same test accuracy; the chief alone writes the weights.
    clf, outs = classifier_run
    assert "All 2 replicas hold identical weights" in outs[0], outs[0][-2000:]
    acc = [re.findall(r"test accuracy ([0-9.]+)", o) for o in outs]
    assert acc[0] and acc[0] == acc[1], acc
    assert float(acc[0][0]) > 0.5  # 10 classes: trained, not chance
    assert (clf / "classifier.weights.h5").exists()
    assert len(glob.glob(str(clf / "tensorboard" / "*"))) == 1


@pytest.mark.slow  # four train.py processes per regime
@pytest.mark.parametrize("regime", ["shortrun", "longrun"])
def test_two_workers_train_as_one_process(tmp_path, regime, classifier_run):
    flags = [f"--regime={regime}", "--dataset=smoke"]
    workers = _two_workers(_train, tmp_path, flags + ["--workdir=two"])
    # Every step's checkpoint, for the comparison's own check.
    every = ["--config.train.log_every=1", "--config.train.checkpoint_every=1"]
    every += ["--config.train.keep_checkpoints=0"]
    one = _train(tmp_path, flags + ["--workdir=one"] + every)
    outs = [_finish(p) for p in workers]
    _finish(one)

    # The collective check ran on both and passed; the chief says so.
    assert "All 2 replicas hold identical" in outs[0], outs[0][-2000:]
    # One writer: the chief's TensorBoard file only.
    assert len(glob.glob(str(tmp_path / "two" / "tensorboard" / "*"))) == 1

    one, two = (tmp_path / d for d in ("one", "two"))
    start = _load(regime, one, 0)
    assert _same(_load(regime, two, 0), start)  # one seed, one initial state
    want = _load(regime, one, 4)
    assert_trained_alike(_load(regime, two, 4), want, start)
    # The tolerance is tight enough to see one step less.
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_trained_alike(_load(regime, one, 3), want, start)

    if regime == "longrun":
        return  # the rest is regime-independent: shortrun's
    _fid_over_two_workers_is_the_one_process_fid(tmp_path, flags, classifier_run[0])
    # The two-worker checkpoint resumes in one process.
    out = _finish(
        _train(tmp_path, flags + ["--workdir=two", "--config.train.num_steps=6"])
    )
    assert "Resumed from step 4" in out, out[-2000:]
    assert os.path.exists(tmp_path / "two" / "checkpoints/ckpt-00000006.weights.h5")


def _fid_over_two_workers_is_the_one_process_fid(tmp_path, flags, clf):
    # FID along the chains of the same checkpoint (4 steps in both runs):
    # evaluated by two workers (the chains spread over both, the second
    # worker writing nowhere) and by one process.
    flags = flags + [f"--config.eval.classifier_workdir={clf}"]
    workers = _two_workers(_evaluate, tmp_path, flags + ["--workdir=two"])
    _finish(_evaluate(tmp_path, flags + ["--workdir=one"]))
    for p in workers:
        _finish(p)

    def fid(name):
        with open(tmp_path / name / "eval" / "results.json") as f:
            return json.load(f)["fid_along_chain"]

    one, two = fid("one"), fid("two")
    assert one.keys() == two.keys() and len(one) >= 2
    for m in one:
        np.testing.assert_allclose(two[m], one[m], rtol=1e-3, err_msg=m)


@pytest.mark.slow  # a midrun EBM and three evaluate.py processes
def test_two_workers_share_the_attack_and_report_as_one(tmp_path, classifier_run):
    flags = ["--regime=midrun", "--dataset=smoke", "--config.attack.num_images=16"]
    flags += [f"--config.defense.classifier_workdir={classifier_run[0]}"]
    _finish(_train(tmp_path, flags + ["--workdir=one"]))
    shutil.copytree(tmp_path / "one", tmp_path / "two")

    one = _evaluate(tmp_path, flags + ["--workdir=one"])
    workers = _two_workers(_evaluate, tmp_path, flags + ["--workdir=two"])
    _finish(one)
    outs = [_finish(p) for p in workers]
    assert "per-seed robust (95% CI)" in outs[0]

    def report(name):
        with open(tmp_path / name / "eval" / "attack" / "results.json") as f:
            r = json.load(f)
        return {
            k: [(s["natural_accuracy"], s["robust_accuracy"]) for s in a["per_seed"]]
            for k, a in r["attacks"].items()
        }, r["worst_case"]

    assert report("two") == report("one")
    # Worker 1 attacked the odd batches of every attack (4 batches of 4
    # images; the K_def curve's 1) and summarized nothing; the chief did
    # the rest and the report.
    shares = re.findall(r"worker 1 of 2: (\d+) of (\d+) batches", outs[1])
    assert len(shares) >= 5, outs[1][-2000:]
    assert all(int(mine) == int(total) // 2 for mine, total in shares), shares
    assert ("2", "4") in shares
    assert "per-seed robust (95% CI)" not in outs[1]
