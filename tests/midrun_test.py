"""The midrun evaluation end to end (train, attack, report) and the
classifiers it defends: run directories, `.keras` files, SavedModels."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import classifier, midrun
from keras_ebm import run
from keras_ebm.regimes import midrun as midrun_regime


@pytest.mark.slow
def test_evaluate_runs_the_attacks_and_writes_the_report(tmp_path):
    clf = classifier.get_config("smoke")
    clf.data.image_size = 8
    run.train(clf, str(tmp_path / "clf"))
    c = midrun.get_config("smoke")
    c.defense.classifier_workdir = str(tmp_path / "clf")
    run.train(c, str(tmp_path / "mid"))
    c.attack.k_def_curve = (0, 1, c.defense.num_steps)
    results = run.evaluate(c, str(tmp_path / "mid"))
    out = tmp_path / "mid" / "eval" / "attack"
    saved = json.loads((out / "results.json").read_text())
    assert saved["attacks"].keys() == {"undefended", "bpda_eot"}
    for r in saved["attacks"].values():
        lo, hi = r["robust_ci95"]
        assert lo <= r["robust_accuracy"] <= r["natural_accuracy"] + 1e-9
        assert r["robust_accuracy"] <= hi
        assert len(r["curve"]) == c.attack.num_steps + 2
        assert all(a >= b for a, b in zip(r["curve"][:-1], r["curve"][1:], strict=True))
    with open(out / "accuracy_over_steps.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["attack_step", "undefended", "bpda_eot"]
    assert len(rows) == c.attack.num_steps + 3
    assert [p["k_def"] for p in saved["k_def_curve"]] == [0, 1, c.defense.num_steps]
    # The curve's K_def 0 and K_def = defense.num_steps points are the main
    # attacks on a prefix of the images (their saved batches, no new runs).
    undefended = saved["attacks"]["undefended"]["curve"]
    assert saved["k_def_curve"][0]["num_images"] == c.attack.curve_images
    assert len([d for d in os.listdir(out) if os.path.isdir(out / d)]) == 3
    for name in ("accuracy_over_steps.png", "k_def_curve.png", "k_def_curve.csv"):
        assert (out / name).stat().st_size > 0
    assert (
        results["worst_case"]["robust_accuracy"]
        <= saved["attacks"]["bpda_eot"]["robust_accuracy"]
    )
    assert undefended[0] == saved["attacks"]["undefended"]["natural_accuracy"]


def test_classifier_from_a_savedmodel(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    x = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 1)).astype("float32")
    want = model(x).numpy()
    # A `logits` endpoint ...
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "logits", model.call, input_signature=[tf.TensorSpec((None, 4, 4, 1))]
    )
    archive.write_out(str(tmp_path / "logits"), verbose=False)
    # ... or only a serving signature (what `model.export` writes).
    model.export(str(tmp_path / "serving"), verbose=False)
    for name in ("logits", "serving"):
        loaded = midrun_regime.load_classifier(str(tmp_path / name))
        np.testing.assert_allclose(loaded(tf.constant(x)), want, rtol=1e-5, atol=1e-6)
    model.save(str(tmp_path / "clf.keras"))
    loaded = midrun_regime.load_classifier(str(tmp_path / "clf.keras"))
    np.testing.assert_allclose(loaded(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="train one"):
        midrun_regime.load_classifier(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("step_size", 0.5, "step_size"),
        ("norm", "l1", "norm"),
        ("adaptive_loss", "hinge", "adaptive_loss"),
        ("k_def_curve", (0, -5), "k_def_curve"),
    ],
)
def test_bad_attack_settings_stop_before_anything_runs(tmp_path, field, value, match):
    c = midrun.get_config("smoke")
    c.attack[field] = value
    with pytest.raises(run.ConfigError, match=match):
        run.evaluate(c, str(tmp_path / "mid"))
    assert not (tmp_path / "mid").exists()


def test_purification_step_size_from_the_config():
    import types

    from keras_ebm.defense import report

    model = types.SimpleNamespace(step_size=0.01)
    c = midrun.get_config("smoke")
    assert report.defended_classifier(c, model, None, 5).step_size == 0.01
    c.defense.step_size = 0.03
    d = report.defended_classifier(c, model, None, 5)
    assert (d.step_size, d.num_steps) == (0.03, 5)


def test_evaluation_sections_may_change_without_blocking_a_resume(tmp_path):
    from keras_ebm import training

    c = midrun.get_config("smoke")
    (tmp_path / "config.json").write_text(c.to_json_best_effort())
    c.attack.eps = 0.2
    c.defense.num_steps = 9
    c.eval.num_steps = 7
    training.check_workdir(c, str(tmp_path))  # how it is evaluated: allowed
    c.langevin.num_steps = 5
    with pytest.raises(run.ConfigError, match="langevin.num_steps"):
        training.check_workdir(c, str(tmp_path))
