"""The midrun robustness report against closed forms: which figure is
reported, in which units, over how many seeds, from which row, and cached
under which key.

A linear 2-class classifier with a bias, and `E = s ||x||^2 / 2`: every PGD
iterate moves each pixel by eta against the sign of the margin's direction
`d` (the cross-entropy's and the margin's gradients have that sign, for
BPDA and for the exact gradient alike), so iterate t is
`x_t = x0 - min(t eta, eps) sign(d)` whatever the noise. The undefended
margin at iterate t is `g_t = x_t . d + b`, the defended one (the mean of
the purified replicates) `h_t = c^K (x_t . d) + b`, and with images kept
far from `h = 0` compared to the purification noise, the record is known
exactly.
"""

import json

import keras
import numpy as np
import pytest

from keras_ebm.configs import midrun
from keras_ebm.defense import plan, purify, report, summary
from keras_ebm.models import EnergyModel
from tests.linear_nets import ScaledSquare, gaussian_law

D = 6
EPS_L, T, K = 0.01, 0.001, 10  # purification: c = 0.95, c^K = 0.60


def classifier(bias=1.5, seed=0):
    """Class 0's margin is `x . d + bias`."""
    rng = np.random.default_rng(seed)
    m = rng.normal(scale=2.0, size=(D, 2)).astype("float32")
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2)])
    clf.layers[0].kernel.assign(m)
    clf.layers[0].bias.assign([bias, 0.0])
    return clf, m[:, 0] - m[:, 1]


def model(s=1.0):
    return EnergyModel(ScaledSquare(D, s), num_steps=1, step_size=EPS_L, temperature=T)


def config(**attack):
    c = midrun.get_config("smoke")
    c.defense.update(num_steps=K, step_size=0.0, temperature=0.0)
    c.attack.update(
        eps=0.15,  # [0, 1] units: radius 0.3 on [-1, 1] images
        step_size=0.0375,  # eta 0.075: the radius is reached at iterate 4
        num_steps=4,
        random_start=False,
        adv_replicates=4,
        def_replicates=16,
        batch_size=64,
        num_seeds=2,
        k_def_curve=(),
        adaptive=False,
    )
    c.attack.update(attack)
    return c


def margins(x0, d, bias, ck, radius=0.3, eta=0.075, steps=4):
    """`(g, h)`: undefended and defended (noise-free) margins of class 0 at
    the natural image (column 0) and every iterate (columns 1..steps+1)."""
    reach = np.minimum(np.arange(steps + 1) * eta, radius)
    xd = x0 @ d
    moved = xd[:, None] - reach[None] * np.abs(d).sum()
    g = np.concatenate([xd[:, None], moved], 1) + bias
    h = ck * np.concatenate([xd[:, None], moved], 1) + bias
    return g, h


def images(d, bias, ck, n=400, seed=1):
    """Images in [-0.7, 0.7] (no clipping within the radius) whose defended
    margins stay 0.3 away from 0 (8 standard deviations of an H_def
    average) and whose undefended ones are not ties."""
    x = np.random.default_rng(seed).uniform(-0.7, 0.7, (n, D)).astype("float32")
    g, h = margins(x, d, bias, ck)
    keep = (
        (h[:, 0] > 0.3)
        & (np.abs(h[:, -1]) > 0.3)
        & (g[:, 0] > 0.01)
        & (np.abs(g).min(1) > 1e-3)
    )
    return x[keep], np.zeros(keep.sum(), "int32"), g[keep], h[keep]


@pytest.mark.slow
def test_reported_figures_in_closed_form(tmp_path):
    clf, d = classifier()
    ck, v = gaussian_law(K, EPS_L, T)
    assert np.sqrt(v / 16) * np.linalg.norm(d) < 0.3 / 8
    x, y, g, h = images(d, 1.5, ck)
    robust_undefended = np.mean(g[:, -1] > 0)
    robust_defended = np.mean(h[:, -1] > 0)
    # Some images break at the very last iterate (a figure read from the
    # second-to-last row would differ), the defended classifier loses some
    # (its figure is not trivially 1), and purification helps (a worst case
    # that took in the undefended attack would differ).
    assert np.sum((g[:, -2] > 0) & (g[:, -1] < 0)) >= 5
    assert 0.5 < robust_defended < 0.95
    assert robust_defended > robust_undefended + 0.2
    c = config(adaptive=True, adaptive_seeds=1, adaptive_loss="ce")
    results = report.report(c, str(tmp_path), model(), clf, 0, x, y)

    a = results["attacks"]
    assert a.keys() == {"undefended", "bpda_eot", "full_gradient"}
    for name, want in (
        ("undefended", robust_undefended),
        ("bpda_eot", robust_defended),
        ("full_gradient", robust_defended),
    ):
        assert a[name]["natural_accuracy"] == 1.0, name
        assert a[name]["robust_accuracy"] == pytest.approx(want), name
        for run in a[name]["per_seed"]:
            assert run["robust_accuracy"] == pytest.approx(want), name
            assert run["num_images"] == len(x)
    assert results["worst_case"]["robust_accuracy"] == pytest.approx(robust_defended)
    assert a["bpda_eot"]["seeds"] == [0, 1] and a["full_gradient"]["seeds"] == [0]
    # The record over attack steps: undefended, the share of images whose
    # margin is still positive at every iterate so far.
    want_curve = [1.0] + [np.mean(g[:, 1 : t + 2].min(1) > 0) for t in range(5)]
    np.testing.assert_allclose(a["undefended"]["curve"], want_curve)
    # The last fifth of 4 PGD steps is the last one: the images that break
    # at the very last iterate.
    assert a["undefended"]["last_fifth_drop"] == pytest.approx(
        want_curve[-2] - want_curve[-1]
    )
    assert a["undefended"]["last_fifth_drop"] > 0
    saved = json.loads((tmp_path / "eval" / "attack" / "results.json").read_text())
    assert saved["attacks"]["bpda_eot"]["robust_accuracy"] == pytest.approx(
        robust_defended
    )
    assert saved["radius"] == pytest.approx(0.3)


@pytest.mark.slow
def test_another_classifier_or_ebm_is_attacked_anew(tmp_path):
    # Natural accuracy of the defended classifier (the record's row 0) is
    # the share of images with h_0 > 0; a classifier with another bias and
    # an EBM with another s give other shares. Served from a cache keyed
    # without them, they would report the first one's.
    clf_a, d = classifier(bias=-1.0)
    clf_b, _ = classifier(bias=1.0)
    ck1, _ = gaussian_law(K, EPS_L, T)
    ck3, _ = gaussian_law(K, EPS_L, T, s=3.0)
    x = np.random.default_rng(1).uniform(-0.7, 0.7, (400, D)).astype("float32")
    want = {}
    keep = np.ones(len(x), bool)
    for key, bias, ck in (("a1", -1.0, ck1), ("b1", 1.0, ck1), ("a3", -1.0, ck3)):
        _, h = margins(x, d, bias, ck)
        keep &= np.abs(h[:, 0]) > 0.3
        want[key] = h[:, 0]
    x = x[keep]
    y = np.zeros(len(x), "int32")
    want = {k: np.mean(v[keep] > 0) for k, v in want.items()}
    assert len(set(want.values())) == 3
    c = config(num_steps=1)
    settings = plan.settings_of(c)
    out = tmp_path / "attack"

    def natural(clf, ebm):
        d = purify.DefendedClassifier(ebm, clf, K)
        r = report.run_attack("bpda_eot", d, x, y, settings, str(out), c, 0, 0)
        return r["natural_accuracy"]

    assert natural(clf_a, model(1.0)) == pytest.approx(want["a1"])
    folders = set(out.iterdir())
    assert natural(clf_a, model(1.0)) == pytest.approx(want["a1"])
    assert set(out.iterdir()) == folders  # the same: served from its folder
    assert natural(clf_b, model(1.0)) == pytest.approx(want["b1"])
    assert natural(clf_a, model(3.0)) == pytest.approx(want["a3"])
    assert len(list(out.iterdir())) == 3


@pytest.mark.slow
def test_every_seed_is_an_independent_run(tmp_path):
    # Images on a noisy boundary: each seed draws other purification noise,
    # so the per-image records differ; the figure is their mean and sample
    # standard deviation.
    clf, d = classifier(bias=0.0)
    x = np.zeros((32, D), "float32")
    y = np.zeros(32, "int32")
    c = config(num_seeds=3, seed=4, def_replicates=1, adv_replicates=1)
    results = report.report(c, str(tmp_path), model(), clf, 0, x, y)
    bpda = results["attacks"]["bpda_eot"]
    assert bpda["seeds"] == [4, 5, 6] == results["seeds"]
    robust = [r["robust_accuracy"] for r in bpda["per_seed"]]
    natural = [r["natural_accuracy"] for r in bpda["per_seed"]]
    assert len(set(natural)) > 1
    assert bpda["robust_accuracy"] == pytest.approx(np.mean(robust))
    assert bpda["natural_accuracy"] == pytest.approx(np.mean(natural))
    assert bpda["natural_std"] == pytest.approx(np.std(natural, ddof=1))
    assert bpda["natural_range"] == [min(natural), max(natural)]
    folders = [p.name for p in (tmp_path / "eval" / "attack").iterdir() if p.is_dir()]
    assert sum(f.startswith("bpda_eot_") for f in folders) == 3


def test_disjoint_compares_every_seed_s_interval():
    # Defended mean 0.5 far above the undefended 0.2, but one defended
    # seed's interval reaches down to 0.25, below an undefended upper bound
    # of 0.3: not disjoint.
    attacks = dict(
        undefended=dict(robust_accuracy=0.2, robust_ci95_highest=0.3),
        bpda_eot=dict(robust_accuracy=0.5, robust_ci95_lowest=0.25),
        full_gradient=dict(robust_accuracy=0.5, robust_ci95_lowest=0.31),
    )
    worst = dict(robust_accuracy=0.45, robust_ci95_lowest=0.29)
    assert summary.disjoint_from_undefended(attacks, worst) == dict(
        bpda_eot=False, full_gradient=True, worst_case=False
    )


def test_reports_of_other_names_or_classifiers_are_separate_runs(tmp_path):
    # The same tags at the same checkpoint step: only separate TensorBoard
    # runs keep them apart.
    import tensorflow as tf

    from keras_ebm.defense import outputs

    runs = set()
    for name, clf in [
        ("", "runs/classifier/digits"),
        ("k100", "runs/classifier/digits"),
        ("", "runs/classifier/other"),
        ("", "/abs/clf.savedmodel"),
    ]:
        c = config()
        c.attack.report_name = name
        c.defense.classifier_workdir = clf
        runs.add(outputs.tensorboard_run(c))
    assert len(runs) == 4
    attacks = {
        "bpda_eot": dict(
            natural_accuracy=0.9, robust_accuracy=0.5, robust_std=0.0, curve=[0.9, 0.5]
        )
    }
    for i, run in enumerate(sorted(runs)):
        attacks["bpda_eot"]["robust_accuracy"] = i / 10
        outputs.write_tensorboard(str(tmp_path), 7, attacks, [], run)
    seen = {}
    for run in runs:
        folder = tmp_path / "tensorboard" / run
        (event_file,) = folder.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for v in event.summary.value:
                if v.tag == "attack/bpda_eot/robust_accuracy":
                    seen[run] = float(tf.make_ndarray(v.tensor))
    assert sorted(seen.values()) == pytest.approx([0.0, 0.1, 0.2, 0.3])
