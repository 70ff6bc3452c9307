"""keras_ebm as a library: the README's examples, the installed package,
and the checks a researcher building on it meets first."""

import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ebm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(page, title=None):
    """The Python blocks of `page` (a path in the repository), of its
    section `## <title>` only when given, in order."""
    with open(os.path.join(REPO, page)) as f:
        text = f.read()
    if title is not None:
        text = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def clean_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_readme_and_library_page_examples_run_outside_the_clone(tmp_path):
    # The README's example, then docs/library.md's, which continues it.
    readme = python_blocks("README.md", "Use it as a library")
    page = python_blocks("docs/library.md")
    assert len(readme) == 1 and len(page) == 1
    blocks = readme + page
    where = "import keras_ebm\nprint('keras_ebm from', keras_ebm.__file__)\n"
    (tmp_path / "example.py").write_text("\n".join(blocks) + where)
    # Outside the repository, keras_ebm from the tree under test: the
    # installed package is an editable install of the clone `make` set up,
    # which a copy of the repository (`break-and-test`) is not. Installed as
    # a package, it is `test_pip_install_into_a_fresh_venv`'s.
    out = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=dict(clean_env(), PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    source = re.search(r"keras_ebm from (\S+)", out.stdout).group(1)
    assert source == os.path.join(REPO, "keras_ebm", "__init__.py"), source
    radius = float(re.search(r"sample radius ([\d.]+)", out.stdout).group(1))
    assert abs(radius - 2.0) < 0.5, out.stdout  # the chains found the ring
    accuracy = float(re.search(r"served accuracy ([\d.]+)", out.stdout).group(1))
    assert accuracy > 0.8, out.stdout
    assert (tmp_path / "ring_ebm" / "saved_model.pb").exists()


def test_the_library_page_names_every_public_name():
    with open(os.path.join(REPO, "docs", "library.md")) as f:
        text = f.read()
    listed = text.split("The public names are in", 1)[1].split("States are", 1)[0]
    named = set(re.findall(r"`(\w+)`", listed))
    assert set(keras_ebm.__all__) <= named, set(keras_ebm.__all__) - named


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv(tmp_path):
    # The package as `pip install .` builds it (a wheel, not the tree), in
    # a new environment that sees the tested dependencies only through a
    # .pth file: pip must find every declared dependency satisfied there
    # (--no-index: nothing is fetched).
    src = tmp_path / "src"
    shutil.copytree(
        os.path.join(REPO, "keras_ebm"),
        src / "keras_ebm",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    # The lock installs tensorflow-cpu, the same modules under another
    # distribution name; this metadata-only entry lets the resolver count
    # the declared `tensorflow` range as met by it.
    stand_in = tmp_path / "stand_in" / "tensorflow-2.21.0.dist-info"
    stand_in.mkdir(parents=True)
    (stand_in / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n"
    )
    with open(os.path.join(site, "tested_dependencies.pth"), "w") as f:
        f.write(f"{deps}\n{stand_in.parent}\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
        + ["--no-index", "--no-build-isolation", str(src)],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = (
        "import keras_ebm, keras_ebm.configs.shortrun as s, importlib.metadata as m; "
        "print(keras_ebm.__file__); print(s.get_config().regime); "
        "print(m.version('keras_ebm'))"
    )
    out = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    where, regime, version = out.stdout.split()
    assert where.startswith(site) and regime == "shortrun"
    assert version == keras_ebm.__version__
    assert not out.stderr.strip(), out.stderr  # a quiet import, no banner


# === What library use met first ===


def zero_energy(dim=2):
    """E = 0: Langevin is a random walk, x_K - x_0 ~ N(0, K eps^2)."""
    return keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(1, kernel_initializer="zeros")]
    )


def steps_taken(x0, x, eps):
    """K estimated from the walk's variance (20,000 values: within 3%)."""
    return float(np.var(np.asarray(x) - np.asarray(x0)) / eps**2)


def near(estimate, k):
    return abs(estimate - k) < 0.1 * k + 0.2


@pytest.fixture(scope="module")
def walk_model():
    gen = keras_ebm.networks.build("gen_toy")
    for w in gen.weights:  # gen(z) = 0 for every z
        w.assign(tf.zeros_like(w))
    model = keras_ebm.EnergyModel(
        zero_energy(), num_steps=7, step_size=0.1, generator=gen, train_generator=False
    )
    model.compile(ebm_optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_export_after_sampling_with_every_sampling_default(walk_model, tmp_path):
    model = walk_model
    x0 = np.zeros((10000, 2), "float32")
    # Sampling first filled the sampler cache, which broke export.
    x, _ = model.sample(x0, num_steps=3, seed=[0, 1])
    assert near(steps_taken(x0, x, 0.1), 3)
    path = str(tmp_path / "ebm")
    keras_ebm.export_savedmodel(
        model,
        path,
        purify_steps=2,
        purify_step_size=0.2,
        eval_steps=5,
        eval_step_size=0.05,
    )
    model.export(str(tmp_path / "keras_export"))  # Keras' own export too
    r = tf.saved_model.load(path)
    assert near(steps_taken(x0, r.sample(x0), 0.1), 7)  # training K
    assert near(steps_taken(x0, r.sample(x0, 4), 0.1), 4)
    assert near(steps_taken(x0, r.purify(x0), 0.2), 2)
    assert near(steps_taken(x0, r.purify(x0, num_steps=6), 0.2), 6)
    np.testing.assert_array_equal(r.purify(x0, 0), x0)
    assert near(steps_taken(0.0, r.generate(10000), 0.05), 5)
    assert near(steps_taken(0.0, r.generate(10000, num_steps=9), 0.05), 9)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_steps must be >= 0"):
        r.sample(x0, -2)


def test_export_writes_no_notes(walk_model, tmp_path, caplog):
    # TF logs INFO notes while saving (input names, sharding, assets,
    # fingerprint): none reaches a handler; a warning still would.
    import logging

    with caplog.at_level(logging.INFO):
        logging.getLogger("absl").setLevel(logging.INFO)
        keras_ebm.export_savedmodel(walk_model, str(tmp_path / "ebm"))
        with keras_ebm.export.quiet_save():
            logging.getLogger("absl").warning("a warning passes")
    noted = [r for r in caplog.records if r.name in ("absl", "tensorflow")]
    assert [r.getMessage() for r in noted] == ["a warning passes"]


def test_defended_export_takes_num_steps(walk_model, tmp_path):
    # An identity classifier: the logits are the purified states.
    clf = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
    clf.layers[0].kernel.assign(np.eye(2, dtype="float32"))
    defended = keras_ebm.DefendedClassifier(walk_model, clf, num_steps=4)
    path = keras_ebm.export_defended(defended, str(tmp_path / "defended"))
    r = tf.saved_model.load(path)
    x0 = np.zeros((10000, 2), "float32")
    assert near(steps_taken(x0, r.purify(x0), 0.1), 4)
    assert near(steps_taken(x0, r.purify(x0, 8), 0.1), 8)
    assert near(steps_taken(x0, r.predict(x0, 1), 0.1), 4)
    assert near(steps_taken(x0, r.predict(x0, 1, num_steps=2), 0.1), 2)
    # H replicates average: variance K eps^2 / H.
    assert near(4 * steps_taken(x0, r.predict(x0, 4, num_steps=8), 0.1), 8)
    # A report is compared only with an export of its own settings.
    from keras_ebm.defense import purify

    reported = dict(defended.settings(), robust_accuracy=0.5)
    assert purify.matching_settings(path, reported)["k_def"] == 4
    for field, value in [("k_def", 20), ("purify_step_size", 0.2), ("defended", "x")]:
        with pytest.raises(keras_ebm.ConfigError, match=f"differ in {field}"):
            purify.matching_settings(path, dict(reported, **{field: value}))


def banked_model(init_source="noise", batch=4):
    bank = keras_ebm.SampleBank(size=16, batch_size=batch, state_shape=(2,))
    model = keras_ebm.EnergyModel(
        zero_energy(), num_steps=2, step_size=0.1, bank=bank, init_source=init_source
    )
    model.compile(ebm_optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_fit_before_initialize_bank_says_what_to_do():
    model = banked_model()
    data = tf.data.Dataset.from_tensor_slices(np.ones((8, 2), "float32"))
    data = data.batch(4, drop_remainder=True)
    with pytest.raises(ValueError, match=r"call model\.initialize_bank\(\) before"):
        model.fit(data, epochs=1, verbose=0)
    assert not np.any(model.bank.states.numpy())  # nothing trained
    model.initialize_bank()
    model.fit(data, epochs=1, verbose=0)
    assert int(model.ebm_optimizer.iterations.numpy()) == 2


def test_partial_or_mismatched_batches_say_what_to_do():
    model = banked_model()
    model.initialize_bank()
    x = np.ones((10, 2), "float32")
    partial = tf.data.Dataset.from_tensor_slices(x).batch(4)
    with pytest.raises(ValueError, match="drop_remainder=True"):
        model.fit(partial, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="do not split into batches of 4"):
        model.fit(x, batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="the bank draws 4 states"):
        model.fit(x[:8], batch_size=8, epochs=1, verbose=0)
    assert int(model.ebm_optimizer.iterations.numpy()) == 0
    model.fit(x[:8], batch_size=4, epochs=1, verbose=0)
    assert int(model.ebm_optimizer.iterations.numpy()) == 2


def test_a_network_without_a_fixed_input_shape_is_refused():
    class Free(keras.Model):
        def call(self, x):
            return keras.ops.sum(x, -1, keepdims=True)

    with pytest.raises(ValueError, match="fixed input shape"):
        keras_ebm.EnergyModel(Free(), num_steps=1, step_size=0.1)
    model = keras_ebm.EnergyModel(zero_energy(3), num_steps=1, step_size=0.1)
    assert model.state_shape == (3,)
    with pytest.raises(ValueError, match=r"sample expects states of shape \[B, 3\]"):
        model.sample(np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
        model.sample(np.zeros((4, 3), "float32"), num_steps=-2)
