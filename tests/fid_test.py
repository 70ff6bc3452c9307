"""FID backbones, the TTUR graph loading path, FID along chains, evaluate."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import classify, data, run
from keras_ebm.configs import classifier as clf_configs
from keras_ebm.configs import shortrun
from keras_ebm.evaluation import fid, metrics, trajectory
from keras_ebm.sampling import langevin, potential


def write_standin_graph(path, dim=6):
    """A tiny GraphDef with the TTUR tensor names: ExpandDims -> pool_3."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], "ExpandDims")
        x = tf.compat.v1.image.resize_bilinear(x, [12, 12])
        kernel = tf.constant(
            np.random.default_rng(0).normal(size=(3, 3, 3, dim)), tf.float32
        )
        h = tf.nn.relu(tf.nn.conv2d(x / 255.0, kernel, 1, "SAME"))
        tf.reduce_mean(h, axis=[1, 2], keepdims=True, name="pool_3")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())


def test_inception_graph_loading_path(tmp_path):
    path = str(tmp_path / "classify_image_graph_def.pb")
    write_standin_graph(path)
    features = fid.Backbone("inception_ttur", fid.load_inception_graph(path), 4)
    pixels = np.random.default_rng(1).integers(0, 256, (10, 16, 16, 3))
    images = (pixels / 127.5 - 1.0).astype("float32")
    out = features(images)
    assert out.shape == (10, 6)
    # Inputs are rounded to uint8 values as TTUR's: changes within a
    # quantization step are invisible.
    np.testing.assert_allclose(features(images + 1e-3), out, atol=1e-6)
    gray = features(images[..., :1])
    assert gray.shape == (10, 6)


def test_inception_graph_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05"):
        fid.load_inception_graph(str(tmp_path / "missing.pb"))
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(b"\x00\xffnot a graph" * 10)
    with pytest.raises(ValueError, match="GraphDef|no tensor"):
        fid.load_inception_graph(str(corrupt))
    other = tf.Graph()
    with other.as_default():
        tf.compat.v1.placeholder(tf.float32, [None, 3], "input")
    wrong = tmp_path / "wrong.pb"
    wrong.write_bytes(other.as_graph_def().SerializeToString())
    with pytest.raises(ValueError, match="no tensor ExpandDims"):
        fid.load_inception_graph(str(wrong))


def test_realism_separates_realism_from_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 2))
    same = fid.realism(real, rng.normal(size=(400, 2)))
    # One half of the data only: realistic, half the coverage.
    half = rng.normal(size=(800, 2))
    half = half[half[:, 0] > 0][:400]
    part = fid.realism(real, half)
    off = fid.realism(real, rng.normal(size=(400, 2)) + 6.0)
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    assert same["coverage"] > 0.9 and 0.7 < same["density"] < 1.3
    assert part["precision"] > 0.9 and 0.4 < part["coverage"] < 0.65
    assert part["recall"] < 0.75
    assert off == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    nan = fid.realism(real, np.full((400, 2), np.nan))
    assert all(np.isnan(v) for v in nan.values())


def _realism_by_hand(real, fake, k):
    """Precision, recall, density and coverage from their definitions
    (Kynkaanniemi et al. 2019; Naeem et al. 2020), written apart from the
    `prdc` package: the k-NN radius of a point is its k-th smallest
    distance to the other points of its own set, and a point lies in a
    ball when it is strictly closer than the ball's radius."""
    from scipy.spatial.distance import cdist

    def radii(x):
        d = np.sort(cdist(x, x), axis=1)
        return d[:, k]  # column 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    d = cdist(real, fake)  # [real, fake]
    inside = d < r_real[:, None]  # fake j in the ball of real i
    return {
        "precision": inside.any(0).mean(),
        "recall": (d < r_fake[None, :]).any(1).mean(),
        "density": inside.sum(0).mean() / k,
        "coverage": (d.min(1) < r_real).mean(),
    }


def test_realism_at_k_is_its_definition_at_k():
    # Random sets at several k: the definition, and k changes the values.
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.3, 1.2, size=(50, 3))
    for k in (1, 3, 5):
        got = fid.realism(real, fake, k)
        assert got == pytest.approx(_realism_by_hand(real, fake, k)), k
    assert fid.realism(real, fake, 3) != fid.realism(real, fake, 5)
    # Ten reals on a line, k = 2: radius 1 inside, 2 at both ends. Fakes:
    # between reals 4 and 5 (in both balls), above real 0 (in its ball of
    # radius 2 only), and two in none.
    real = np.stack([np.arange(10.0), np.zeros(10)], 1)
    fake = np.array([[4.5, 0.0], [0.0, 1.5], [20.0, 0.0], [4.5, 2.0]])
    got = fid.realism(real, fake, 2)
    want = {"precision": 0.5, "density": 0.375, "coverage": 0.3, "recall": 1.0}
    for name, value in want.items():
        assert got[name] == pytest.approx(value), name
    assert _realism_by_hand(real, fake, 2) == pytest.approx(want)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_trajectory_fid_approaches_the_target_and_resumes_mid_chain(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.normal(size=(4000, 2))
    stats = metrics.activation_statistics(target)
    u = potential(lambda x: 0.5 * tf.reduce_sum(tf.square(x), axis=1))
    calls = []

    def init(b):
        return tf.random.stateless_normal((500, 2), [b, 0]) + 3.0

    def advance(x, n, seed, kill_at=None):
        if kill_at is not None and len(calls) == kill_at:
            raise Killed
        calls.append(n)
        x, st = langevin(u, x, num_steps=n, step_size=0.3, seed=tf.constant(seed))
        return x, float(st.energy), float(st.drift_norm)

    identity = fid.Backbone("identity", lambda x: x)

    seen = []

    def curve_of_chains(path, kill_at=None):
        return trajectory.trajectory_fid(
            init,
            lambda x, n, seed: advance(x, n, seed, kill_at),
            identity,
            stats,
            2000,
            500,
            (0, 10, 200),
            state_path=str(tmp_path / path),
            progress=False,
            chunk=50,
            on_milestone=lambda m, v: seen.append((m, v)),
        )

    run = curve_of_chains("straight.npz")
    curve = run["fid"]
    assert curve[0] == pytest.approx(18.0, rel=0.1)  # ||(3, 3)||^2
    assert curve[0] > curve[10] > curve[200]
    assert curve[200] < 0.05
    # All batches advance together, in chunks that end at milestones and are
    # at most 50 steps long.
    assert calls == [k for k in (10, 50, 50, 50, 40) for _ in range(4)]
    assert run["trace"][:, 0].tolist() == [10, 60, 110, 160, 200]
    assert seen == [(m, pytest.approx(curve[m])) for m in (0, 10, 200)]
    assert set(run["snapshots"]) == {0, 10, 200}
    # Killed in the middle of the second chunk, then rerun: the rerun
    # continues from the chain states saved after the first chunk (step 10),
    # and the curve is the uninterrupted one.
    calls.clear()
    with pytest.raises(Killed):
        curve_of_chains("killed.npz", kill_at=7)
    assert len(calls) == 7
    calls.clear()
    resumed = curve_of_chains("killed.npz")
    assert sum(calls) == 4 * (200 - 10)
    assert resumed["fid"] == pytest.approx(curve)
    # Rerunning a finished evaluation does no Langevin work and agrees.
    calls.clear()
    again = curve_of_chains("straight.npz")
    assert calls == []
    assert again["fid"] == pytest.approx(curve)

    # A finished shorter curve of the same chains is extended, not rerun
    # (as 100K -> 1M steps): (0, 10, 110) continued to (0, 10, 110, 200)
    # equals the uninterrupted (0, 10, 110, 200) run. Other chains
    # (identity) or other milestones below the saved step start afresh.
    def extend(path, milestones, chains="chains", extend_from=()):
        return trajectory.trajectory_fid(
            init,
            advance,
            identity,
            stats,
            2000,
            500,
            milestones,
            state_path=str(tmp_path / path),
            progress=False,
            chunk=50,
            identity=chains,
            extend_from=[str(tmp_path / p) for p in extend_from],
        )

    full = extend("full.npz", (0, 10, 110, 200))
    extend("short.npz", (0, 10, 110))
    calls.clear()
    longer = extend("long.npz", (0, 10, 110, 200), extend_from=["short.npz"])
    assert sum(calls) == 4 * (200 - 110)
    assert longer["fid"] == pytest.approx(full["fid"])
    np.testing.assert_allclose(longer["trace"], full["trace"], rtol=1e-5)
    assert (tmp_path / "short.npz").exists()  # the shorter run is kept
    # And back: the 200-step state serves the (0, 10) curve with no work.
    calls.clear()
    back = extend("back.npz", (0, 10), extend_from=["long.npz"])
    assert calls == []
    assert back["fid"] == pytest.approx({m: full["fid"][m] for m in (0, 10)})
    assert back["trace"][:, 0].tolist() == [10]
    for i, kwargs in enumerate(
        (
            dict(chains="other chains", milestones=(0, 10, 110, 200)),
            dict(milestones=(0, 20, 110, 200)),
        )
    ):
        calls.clear()
        extend(f"fresh{i}.npz", extend_from=["short.npz"], **kwargs)
        assert sum(calls) == 4 * 200


@pytest.mark.slow
def test_classifier_then_evaluate_smoke_run(tmp_path):
    clf_config = clf_configs.get_config("smoke")
    clf_config.data.image_size = 8
    clf_dir = str(tmp_path / "clf")
    run.train(clf_config, clf_dir)
    results = json.load(open(os.path.join(clf_dir, "results.json")))
    assert results["test_size"] == 360 and 0.0 <= results["test_accuracy"] <= 1.0

    config = shortrun.get_config("smoke")
    config.eval.classifier_workdir = clf_dir
    config.eval.realism_k = 3  # not the default: its wiring shows
    workdir = str(tmp_path / "run")
    run.train(config, workdir)
    summary = run.evaluate(config, workdir)
    assert set(summary["fid_along_chain"]) == {"0", "3"}
    assert np.isfinite(summary["fid"])
    assert np.isfinite(summary["fid_real_floor"])
    realism = summary["realism_along_chain"]
    assert set(realism) == {"0", "3", "real data"}
    for row in realism.values():
        assert set(row) == {"precision", "recall", "density", "coverage"}
        assert all(0.0 <= row[n] <= 1.0 for n in ("precision", "recall", "coverage"))
    # Each row compares that milestone's chain features with the cached
    # reference features.
    (cache,) = glob.glob(os.path.join(workdir, "fid_cache", "*.npz"))
    (saved,) = glob.glob(os.path.join(workdir, "eval", "trajectory_*.npz"))
    with np.load(cache) as ref, np.load(saved) as chains:
        for m in ("0", "3"):
            fake = chains[f"f{m}"][: summary["num_samples"]]
            assert realism[m] == fid.realism(ref["features"], fake, 3)
            assert realism[m] != fid.realism(ref["features"], fake, 5)
    assert summary["realism_k"] == 3
    # Class shares: each milestone's saved features through the classifier's
    # head, against the reference images' labels.
    clf = classify.load(clf_config, clf_dir)
    classes = summary["classes_along_chain"]
    assert set(classes) == {"0", "3", "real data"}
    with np.load(cache) as ref, np.load(saved) as chains:
        reference = np.argmax(clf.logits(ref["features"]), -1)
        for m in ("0", "3"):
            fake = chains[f"f{m}"][: summary["num_samples"]]
            labels = np.argmax(clf.logits(fake), -1)
            assert classes[m] == metrics.class_balance(labels, reference, 10)
    # The real row: the held-out images (the floor's), labelled afresh.
    n = summary["num_samples"]
    held_out = data.take_array(data.images(config), 2 * n)[n:]
    labels = np.argmax(clf(held_out), -1)
    assert classes["real data"] == metrics.class_balance(labels, reference, 10)
    (floor,) = glob.glob(os.path.join(workdir, "fid_cache", "*_floor.json"))
    assert "realism_k3" in json.load(open(floor))
    for name in (
        "results.json",
        "fid_curve.csv",
        "fid_curve.png",
        "samples_000003.png",
        "chain_trace.csv",
        "chain_trace.png",
        "realism.csv",
        "classes_along_chain.csv",
        "classes_along_chain.png",
    ):
        assert os.path.exists(os.path.join(workdir, "eval", name)), name
    assert os.listdir(os.path.join(workdir, "fid_cache"))

    # Evaluation settings that change the chains never reuse saved features:
    # another step size gives other FIDs; the same settings reuse them.
    def trajectories():
        return sorted(glob.glob(os.path.join(workdir, "eval", "trajectory_*.npz")))

    before_step_size = trajectories()
    config.eval.step_size = 0.2
    other = run.evaluate(config, workdir)
    assert len(trajectories()) == 2
    assert other["fid_along_chain"]["3"] != summary["fid_along_chain"]["3"]
    assert other["fid_along_chain"]["0"] == pytest.approx(
        summary["fid_along_chain"]["0"]
    )
    again = run.evaluate(config, workdir)
    assert again["fid_along_chain"] == other["fid_along_chain"]
    assert len(trajectories()) == 2
    # A longer evaluation of the same chains continues the finished one: its
    # saved step-0 features (marked here) are reused, not recomputed.
    (saved,) = set(trajectories()) - set(before_step_size)
    with np.load(saved) as f:
        state = dict(f)
    state["f0"] = state["f0"] + 1.0
    np.savez(saved, **state)
    config.eval.num_steps, config.eval.milestones = 6, (0, 3, 6)
    longer = run.evaluate(config, workdir)
    assert len(trajectories()) == 3
    assert longer["fid_along_chain"]["3"] == other["fid_along_chain"]["3"]
    assert longer["fid_along_chain"]["0"] != pytest.approx(
        other["fid_along_chain"]["0"]
    )
    config.eval.num_steps, config.eval.milestones = 3, (0, 3)
    # Other classifier weights: new data statistics, new features.
    clf = classify.load(clf_config, clf_dir)
    clf.set_weights([w * 1.5 for w in clf.get_weights()])
    clf.save_weights(os.path.join(clf_dir, classify.WEIGHTS))
    changed = run.evaluate(config, workdir)
    # A classifier trained at another image size is refused with a message.
    other_size = clf_configs.get_config("smoke")  # 16x16
    with pytest.raises(run.ConfigError, match="takes 8x8x1 images, not 16x16x1"):
        classify.load(other_size, clf_dir)
    assert len(glob.glob(os.path.join(workdir, "fid_cache", "*.npz"))) == 2
    assert changed["fid_along_chain"]["0"] != other["fid_along_chain"]["0"]


def test_an_8x8_run_is_measured_by_the_16x16_classifier_as_its_data(tmp_path):
    # The digits at 8x8 through the backbone of an 8x8 run (resized as the
    # data were) give the features of the 16x16 digits: one yardstick.
    clf_config = clf_configs.get_config("smoke")
    clf_config.classifier.epochs = 1
    clf_dir = str(tmp_path / "clf")
    run.train(clf_config, clf_dir)
    features = {}
    for size in (8, 16):
        config = shortrun.get_config("smoke")
        config.data.image_size = size
        config.eval.classifier_workdir = clf_dir
        images, _ = data.load_digits(size)
        features[size] = fid.backbone(config)(images[:64])
    np.testing.assert_allclose(features[8], features[16], atol=1e-5)
    assert np.abs(features[16]).max() > 0


def test_evaluate_without_checkpoint_or_classifier(tmp_path):
    config = shortrun.get_config("smoke")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_inception_keras_backbone_shapes():
    # Random weights: the path (resize to 299, gray to RGB, pooling) only.
    features = fid.Backbone("inception_keras", fid.inception_keras(weights=None), 2)
    out = features(np.zeros((3, 16, 16, 1), "float32"))
    assert out.shape == (3, 2048)


def test_joint_temperature_divides_network_terms_only():
    config = shortrun.get_config("smoke")
    config.langevin.tau = 0.5
    model = run.build_model(config)
    x = tf.random.uniform((4, 8, 8, 1), -1, 1, seed=0)
    e = model.energy(x)
    gauss = tf.reduce_sum(tf.square(x), axis=(1, 2, 3)) / (2 * 0.25)
    t = config.langevin.temperature
    np.testing.assert_allclose(
        model.potential_at(t, 1.01)(x), e / (t * 1.01) + gauss, rtol=1e-5
    )


@pytest.mark.slow
def test_evaluation_rebuilds_the_model_from_the_run_config(tmp_path):
    trained = shortrun.get_config("smoke")
    trained.init.persistent = False  # a training override ...
    run.train(trained, str(tmp_path))
    flags_config = shortrun.get_config("smoke")  # ... not repeated here
    flags_config.eval.milestones = (0, 2)
    config = run.run_config(flags_config, str(tmp_path))
    assert config.init.persistent is False
    assert tuple(config.eval.milestones) == (0, 2)
    model, step = run.load_trained(config, str(tmp_path))
    assert model.bank is None and step == 4
