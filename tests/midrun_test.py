"""The midrun evaluation end to end (train, attack, report) and the
classifiers it defends: run directories, `.keras` files, SavedModels."""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import run
from keras_ebm.configs import classifier, midrun
from keras_ebm.regimes import midrun as midrun_regime


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """A smoke classifier and a smoke midrun EBM that defends it."""
    root = tmp_path_factory.mktemp("midrun")
    clf = classifier.get_config("smoke")
    clf.data.image_size = 8
    run.train(clf, str(root / "clf"))
    c = midrun.get_config("smoke")
    c.defense.classifier_workdir = str(root / "clf")
    run.train(c, str(root / "mid"))
    return root, c


@pytest.mark.slow
def test_evaluate_runs_the_attacks_and_writes_the_report(smoke_runs):
    from keras_ebm import classify
    from keras_ebm.defense import outputs, report

    root, c = smoke_runs
    c = c.copy_and_resolve_references()
    c.attack.update(k_def_curve=(0, 1, c.defense.num_steps), adaptive=True)
    results = run.evaluate(c, str(root / "mid"))
    out = root / "mid" / "eval" / "attack"
    saved = json.loads((out / "results.json").read_text())
    assert saved["attacks"].keys() == {"undefended", "bpda_eot", "full_gradient"}
    for name, r in saved["attacks"].items():
        assert len(r["per_seed"]) == (1 if name == "full_gradient" else 2)
        for p in r["per_seed"]:
            lo, hi = p["robust_ci95"]
            assert lo <= p["robust_accuracy"] <= p["natural_accuracy"] + 1e-9
            assert p["robust_accuracy"] <= hi
            assert len(p["curve"]) == c.attack.num_steps + 2
            assert np.all(np.diff(p["curve"]) <= 0)
    # Undefended natural accuracy: the classifier's own accuracy on the test
    # images, computed here without the attack code.
    images, labels = report.test_set(c)
    with open(root / "clf" / "config.json") as f:
        clf_config = midrun.common.Config(json.load(f))
    net = classify.load(clf_config, str(root / "clf"))
    own = np.mean(np.argmax(net(images), -1) == labels)
    assert saved["attacks"]["undefended"]["natural_accuracy"] == pytest.approx(own)
    with open(out / "accuracy_over_steps.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["attack_step", "undefended", "bpda_eot", "full_gradient"]
    assert len(rows) == c.attack.num_steps + 3
    curve = [(p["k_def"], p["attack"]) for p in saved["k_def_curve"]]
    k = c.defense.num_steps
    assert sorted(curve) == sorted(
        (kk, a) for kk in (0, 1, k) for a in ("bpda_eot", "full_gradient")
    )
    # K_def 0 and K_def = defense.num_steps are the main attacks' first
    # seed on a prefix of the images (their saved batches, no new runs).
    assert saved["k_def_curve"][0]["num_images"] == c.attack.curve_images
    folders = [d for d in os.listdir(out) if os.path.isdir(out / d)]
    assert len(folders) == 2 + 2 + 1 + 2  # seeds; full gradient; K_def 1
    for name in ("accuracy_over_steps.png", "k_def_curve.png", "k_def_curve.csv"):
        assert (out / name).stat().st_size > 0
    board = root / "mid" / "tensorboard" / outputs.tensorboard_run(c)
    assert list(board.glob("events.out.tfevents.*"))  # the report's own run
    w = results["worst_case"]
    assert w["robust_accuracy"] <= saved["attacks"]["full_gradient"]["robust_accuracy"]
    assert set(results["disjoint"]) == {"bpda_eot", "full_gradient", "worst_case"}


@pytest.mark.slow
def test_surrogate_spsa_and_the_gradient_check_in_the_report(smoke_runs, capsys):
    root, c = smoke_runs
    c = c.copy_and_resolve_references()
    c.attack.update(
        k_def_curve=(),
        num_seeds=1,
        surrogate=True,
        surrogate_betas=(5.0, 50.0),
        surrogate_loss="margin",
        surrogate_num_steps=c.attack.num_steps + 1,
        spsa=True,
        spsa_samples=3,
        spsa_delta=0.02,
        spsa_replicates=1,
        spsa_num_steps=1,
        spsa_images=4,
        spsa_cascade=True,
        spsa_momentum=0.5,
        gradient_check_images=1,
        gradient_check_replicates=2,
        gradient_check_draws=2,
        long_steps=c.attack.num_steps + 2,
        report_name="beyond_bpda",
    )
    results = run.evaluate(c, str(root / "mid"))
    attacks = results["attacks"]
    longer = {k: attacks.pop(k) for k in list(attacks) if k.endswith("_n4")}
    assert list(attacks) == [
        "undefended",
        "bpda_eot",
        "surrogate_b5",
        "surrogate_b50",
        "spsa",
    ]
    # The longer runs: on what every attack before them left (none left:
    # not run), 4 PGD steps, in order after SPSA, each in the worst case.
    assert list(longer) == ["bpda_eot_n4", "surrogate_b5_n4", "surrogate_b50_n4"][
        : len(longer)
    ]
    for r in longer.values():
        assert r["settings"]["num_steps"] == 4 and r["cascade_of"] == [8]
        assert len(r["curve"]) == 4 + 2
    print("longer runs:", {k: r["num_images"] for k, r in longer.items()})
    how = {k: (r["estimator"], r["loss"]) for k, r in attacks.items()}
    assert how == {
        "undefended": ("bpda", "ce"),
        "bpda_eot": ("bpda", "ce"),
        "surrogate_b5": ("surrogate", "margin"),
        "surrogate_b50": ("surrogate", "margin"),
        "spsa": ("spsa", "margin"),
    }
    for name, beta in (("surrogate_b5", 5.0), ("surrogate_b50", 50.0)):
        s = attacks[name]["settings"]
        assert s["surrogate_beta"] == beta and s["grad_steps"] == c.defense.num_steps
        assert s["num_steps"] == c.attack.num_steps + 1
    s = attacks["spsa"]["settings"]
    assert (s["spsa_samples"], s["adv_replicates"], s["num_steps"]) == (3, 1, 1)
    assert s["momentum"] == 0.5
    assert s["spsa_delta"] == pytest.approx(2 * 0.02)  # pixel units, doubled
    # SPSA attacked those of the first 4 images that BPDA+EOT and both
    # surrogates left (cascade), and the worst case counts it.
    assert attacks["spsa"]["cascade_of"] == [4]
    n_spsa = attacks["spsa"]["num_images"]
    assert 1 <= n_spsa <= 4
    w = results["worst_case"]
    assert w["attacks"] == ["bpda_eot", "surrogate_b5", "surrogate_b50", "spsa"] + list(
        longer
    )
    assert w["num_images"] == 4  # the images every attack covered
    assert "spsa" not in results["disjoint"]  # its interval is over survivors
    check = results["gradient_check"]
    assert set(check["estimators"]) == {
        "bpda_eot",
        "surrogate_b5",
        "surrogate_b50",
        "spsa",
    }
    assert (check["points"], check["replicates"], check["loss"]) == (1, 2, "margin")
    assert check["delta"] == pytest.approx(2 * c.attack.gradient_check_delta)
    for r in check["estimators"].values():
        assert len(r["cos_one_draw"]) == 1 and -1 <= r["cos_mean"][0] <= 1
    cached = list((root / "mid" / "eval" / "attack").glob("gradient_check_*.json"))
    assert len(cached) == 1
    printed = capsys.readouterr().out
    assert "surrogate, margin" in printed and "gradient check at 1 points" in printed
    again = run.evaluate(c, str(root / "mid"))  # every result read back
    assert again["gradient_check"] == check
    # The check's costly reference is cached apart: checking again (here
    # after its summary is gone) reads it back and gives the same figures.
    for path in cached:
        path.unlink()
    assert run.evaluate(c, str(root / "mid"))["gradient_check"] == check
    assert (
        again["attacks"]["spsa"]["robust_accuracy"]
        == attacks["spsa"]["robust_accuracy"]
    )


@pytest.mark.slow
def test_export_defended_with_every_kind_of_classifier(smoke_runs, tmp_path):
    # A classifier-regime run, a .keras file, a SavedModel with a `logits`
    # endpoint and one with only `serving_default`: each is exported inside
    # the defended SavedModel, whose `classify` gives its logits.
    from keras_ebm import classify
    from keras_ebm.regimes import midrun as midrun_regime

    root, c = smoke_runs
    with open(root / "clf" / "config.json") as f:
        clf_config = midrun.common.Config(json.load(f))
    net = classify.load(clf_config, str(root / "clf"))
    net.save(str(tmp_path / "clf.keras"))
    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint(
        "logits", net.call, input_signature=[tf.TensorSpec((None, 8, 8, 1))]
    )
    archive.write_out(str(tmp_path / "logits"), verbose=False)
    net.export(str(tmp_path / "serving"), verbose=False)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 8, 8, 1)).astype("float32")
    want = net(x).numpy()
    for kind in (str(root / "clf"), "clf.keras", "logits", "serving"):
        c = c.copy_and_resolve_references()
        c.defense.classifier_workdir = str(tmp_path / kind)
        path = midrun_regime.export(c, str(root / "mid"))
        loaded = tf.saved_model.load(path)
        np.testing.assert_allclose(
            loaded.classify(tf.constant(x)), want, rtol=1e-5, atol=1e-5, err_msg=kind
        )
        assert loaded.predict(tf.constant(x), tf.constant(2)).shape == (5, 10)
    # SPSA needs only `predict`: it runs against the export read back, with
    # the same verification as against the library's defended classifier.
    from keras_ebm.defense import attack, purify, report

    exported = purify.ExportedDefense(path)
    assert exported.num_steps == c.defense.num_steps
    # Its logits average the replicates asked for (fresh noise per call):
    # 64 replicates vary 8 times less between calls than one.
    one, many = (
        np.std([exported.logits(tf.constant(x), h) for _ in range(6)], axis=0).mean()
        for h in (1, 64)
    )
    assert many < one / 3
    images, labels = report.test_set(c)
    s = attack.AttackSettings(
        eps=0.3, step_size=0.1, num_steps=1, spsa_samples=2, spsa_delta=0.05
    )
    r = attack.evaluate(
        exported, images[:4], labels[:4], s, str(tmp_path / "spsa"), batch_size=4
    )
    assert r["num_images"] == 4 and len(r["curve"]) == 3
    assert r["langevin_image_steps"] >= c.defense.num_steps * 4 * (1 + 2 * 2) * 2
    with pytest.raises(ValueError, match="against an export, attack with SPSA"):
        attack.batch_attack(exported, report.settings_of(c))


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


@pytest.mark.parametrize(
    "field, value",
    [
        ("surrogate_betas", ()),
        ("surrogate_betas", (20.0, 0.0)),
        ("surrogate_loss", "hinge"),
        ("surrogate_num_steps", -1),
        ("surrogate_images", -1),
        ("spsa_samples", 0),
        ("spsa_delta", 0.0),
        ("spsa_momentum", 1.0),
        ("spsa_replicates", -1),
        ("spsa_num_steps", -1),
        ("spsa_images", -1),
        ("spsa_loss", "hinge"),
        ("gradient_check_loss", "hinge"),
        ("gradient_check_replicates", 3),
        ("gradient_check_delta", 0.0),
        ("gradient_check_draws", 0),
        ("surrogate_seeds", 4),
        ("spsa_seeds", 0),
        ("long_steps", -1),
        ("long_steps", 50),  # not longer than num_steps
    ],
)
def test_a_bad_attack_setting_is_refused_naming_it(field, value):
    # The digits preset itself passes; one bad field is refused by name
    # before anything runs.
    from keras_ebm.errors import ConfigError

    c = midrun.get_config("digits")
    midrun_regime.check_attack(c)
    c.attack[field] = value
    with pytest.raises(ConfigError, match="config.attack."):
        midrun_regime.check_attack(c)


def test_long_steps_repeat_each_gradient_attack_on_what_all_left_standing():
    from keras_ebm.defense import report

    c = midrun.get_config("digits")
    c.attack.update(long_steps=120, adaptive=True, surrogate_betas=(20.0, 100.0))
    plan = report.defended_attacks(c, c.defense.num_steps)
    first = {p.name: p for p in plan if not p.longer_run_of}
    longer = [p for p in plan if p.longer_run_of]
    assert [p.name for p in plan[: len(first)]] == list(first)  # after them all
    assert [p.longer_run_of for p in longer] == [
        n for n, p in first.items() if p.settings.estimator != "spsa"
    ]
    assert "spsa" in first and len(longer) == 4
    for p in longer:
        base = first[p.longer_run_of]
        assert p.name == f"{base.name}_n120" and p.cascade
        assert p.settings == dataclasses.replace(base.settings, num_steps=120)
        assert p.seeds == base.seeds[:1] and p.count == base.count
    c.attack.long_steps = 0
    assert not any(p.longer_run_of for p in report.defended_attacks(c, 100))
