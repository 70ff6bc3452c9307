"""Every expected mistake gets one line that names it and says what to do,
a non-zero exit, no traceback, and writes nothing.

`CLI_CASES` runs `train.py` and `evaluate.py` in this process (their absl
`main`, after `parse.parse_flags`), `LIBRARY_CASES` the library's entry points
and a loaded SavedModel; `test_real_processes_print_one_line` runs two
cases as real processes.
"""

import hashlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

import evaluate
import keras_ebm
import train
from keras_ebm import run
from keras_ebm.cli import parse
from keras_ebm.configs import classifier, shortrun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def tree(root):
    """`{path: sha256}` of every file under `root`: what a case may not
    change."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def invoke(script, argv, capfd):
    """`(exit code, stdout, stderr)` of `script.py argv`, in this process."""
    FLAGS.unparse_flags()
    code = 0
    argv = [f"{script.__name__}.py", *argv]
    saved_argv, sys.argv = sys.argv, argv  # config_flags reads overrides there
    try:
        rest = parse.parse_flags(argv)
        script.main(rest)
    except SystemExit as e:
        if isinstance(e.code, str):  # what Python prints before exiting 1
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    finally:
        sys.argv = saved_argv
        FLAGS.unparse_flags()
        for name in [n for n in FLAGS if n.startswith("config.")]:
            delattr(FLAGS, name)  # config_flags defines them anew per parse
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with a finished smoke run, an RGB image-folder run, a
    digits classifier run, an empty image folder and a plain file."""
    root = tmp_path_factory.mktemp("place")
    run.train(shortrun.get_config("smoke"), str(root / "smoke"))
    images = root / "rgb_images" / "a"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = (rng.uniform(size=(8, 8, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(images / f"{i}.png")
    rgb = shortrun.get_config("smoke")
    rgb.data.update(name="folder", path=str(root / "rgb_images"), channels=3)
    run.train(rgb, str(root / "rgb"))
    run.train(classifier.get_config("smoke"), str(root / "clf"))
    (root / "empty_images").mkdir()
    (root / "a_file").write_text("not a folder")
    return root


SMOKE = ["--dataset=smoke", "--workdir=out"]

# (id, script, flags, what the one line must say)
CLI_CASES = [
    (
        "misspelt-field",
        train,
        SMOKE + ["--config.langevin.num_step=10"],
        "--config.langevin.num_step: config.langevin has no field 'num_step'; "
        "did you mean num_steps?",
    ),
    (
        "misspelt-section",
        train,
        SMOKE + ["--config.lang.num_steps=10"],
        "config has no field 'lang'",
    ),
    (
        "not-an-integer",
        train,
        SMOKE + ["--config.langevin.num_steps=ten"],
        "--config.langevin.num_steps=ten: invalid literal for int()",
    ),
    (
        "float-for-integer",
        train,
        SMOKE + ["--config.langevin.num_steps=4.5"],
        "--config.langevin.num_steps=4.5",
    ),
    (
        "malformed-tuple",
        train,
        SMOKE + ["--config.optim.ebm_lr.rates=(1e-4"],
        "config.optim.ebm_lr: steps and rates must be tuples of numbers",
    ),
    (
        "unknown-dataset",
        train,
        ["--dataset=digts", "--workdir=out"],
        "--dataset=digts: unknown dataset 'digts' for shortrun; shortrun takes "
        "digits, smoke",
    ),
    (
        "dataset-of-another-regime",
        train,
        ["--regime=longrun", "--dataset=folder", "--workdir=out"],
        "'folder' is a dataset of shortrun, midrun",
    ),
    (
        "unknown-toy-density",
        train,
        ["--dataset=toy2d", "--config.data.toy=ringz", "--workdir=out"],
        "config.data.toy: unknown toy density 'ringz'; use gmm or rings",
    ),
    (
        "empty-image-folder",
        train,
        [
            "--dataset=folder",
            "--config.data.path={place}/empty_images",
            "--workdir=out",
        ],
        "no images in folder",
    ),
    (
        "missing-image-folder",
        train,
        ["--dataset=folder", "--config.data.path={place}/nowhere", "--workdir=out"],
        "does not exist; set --config.data.path",
    ),
    (
        "workdir-is-a-file",
        train,
        ["--dataset=smoke", "--workdir={place}/a_file"],
        "is a file, not a folder; choose another --workdir",
    ),
    (
        "workdir-under-a-file",
        train,
        ["--dataset=smoke", "--workdir={place}/a_file/run"],
        "is a file, not a folder",
    ),
    ("unknown-regime", train, ["--regime=adversarial"], "unknown --regime=adversarial"),
    (
        "regime-disagrees",
        train,
        ["--regime=prior", f"--config={REPO}/configs/shortrun.py:smoke"],
        "--regime=prior disagrees with the config's shortrun",
    ),
    ("unknown-flag", train, ["--num_steps=3"], "Unknown command line flag 'num_steps'"),
    ("positional-argument", train, ["smoke"], "unexpected arguments smoke"),
    ("missing-config-file", train, ["--config=nope.py"], "--config: Failed loading"),
    (
        "negative-step-size",
        train,
        SMOKE + ["--config.langevin.step_size=-0.1"],
        "config.langevin.step_size: must be positive",
    ),
    (
        "bank-smaller-than-batch",
        train,
        SMOKE + ["--config.bank.size=2"],
        "config.bank.size: bank (2) is smaller than the batch (8)",
    ),
    (
        "unknown-precision",
        train,
        SMOKE + ["--config.train.precision=float16"],
        "config.train.precision: must be float32 or bfloat16",
    ),
    (
        "unknown-eval-precision",
        train,
        SMOKE + ["--config.eval.precision=half"],
        "config.eval.precision",
    ),
    (
        "another-config-in-workdir",
        train,
        ["--dataset=smoke", "--workdir={place}/smoke", "--config.langevin.num_steps=5"],
        "holds a run with another config (differs in langevin.num_steps)",
    ),
    (
        "frozen-generator-missing",
        train,
        ["--regime=longrun", "--dataset=digits", "--workdir=out"],
        "no trained generator at 'runs/shortrun/digits'; train one with",
    ),
    (
        "evaluate-without-checkpoint",
        evaluate,
        ["--workdir={place}/nothing"],
        "no checkpoint in {place}/nothing/checkpoints; train first",
    ),
    (
        "digits-backbone-on-rgb",
        evaluate,
        ["--workdir={place}/rgb"],
        "the digits backbone measures grayscale digits; this run's images are "
        "8x8x3 (folder): use --config.eval.backbone=inception_ttur",
    ),
    (
        "inception-keras-offline",
        evaluate,
        ["--workdir={place}/rgb", "--config.eval.backbone=inception_keras"],
        "inception_keras needs the ImageNet weights of InceptionV3",
    ),
    (
        "unknown-backbone",
        evaluate,
        ["--workdir={place}/rgb", "--config.eval.backbone=incept"],
        "unknown FID backbone 'incept'",
    ),
    (
        "inception-graph-missing",
        evaluate,
        ["--workdir={place}/rgb", "--config.eval.backbone=inception_ttur"],
        "Inception graph '' not found",
    ),
    (
        "export-a-classifier",
        evaluate,
        ["--workdir={place}/clf", "--export"],
        "a classifier has no sampler to export",
    ),
    (
        "evaluate-misspelt-field",
        evaluate,
        ["--workdir={place}/smoke", "--config.eval.num_sample=3"],
        "did you mean num_samples?",
    ),
]


@pytest.mark.slow  # the fixture trains three small runs
@pytest.mark.parametrize(
    "script, argv, says", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_mistakes_end_in_one_line(place, script, argv, says, capfd, monkeypatch):
    monkeypatch.chdir(place)
    argv = [a.replace("{place}", str(place)) for a in argv]
    says = says.replace("{place}", str(place))
    before = tree(place)
    code, out, err = invoke(script, argv, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert tree(place) == before  # nothing written, nothing overwritten


@pytest.mark.slow
def test_cli_successes_around_the_mistakes(place, capfd, monkeypatch):
    # The same machinery still runs what is right: the fields list, a
    # classifier evaluation that writes what it announces, and a resume
    # with only logging settings changed.
    monkeypatch.chdir(place)
    code, out, _ = invoke(train, ["--regime=longrun", "--list_fields"], capfd)
    assert code == 0 and "--config.burnin.length=" in out
    assert "longrun: digits, smoke, toy2d" in out
    code, out, _ = invoke(evaluate, [f"--workdir={place}/clf"], capfd)
    assert code == 0 and f"Results in {place}/clf/eval" in out
    assert (place / "clf" / "eval" / "results.json").exists()
    code, out, err = invoke(
        train,
        ["--dataset=smoke", f"--workdir={place}/smoke", "--config.train.image_every=4"]
        + ["--config.train.checkpoint_every=4", "--config.train.num_steps=6"],
        capfd,
    )
    assert code == 0, err
    assert "Resumed from step 4" in out + err


@pytest.mark.slow
def test_real_processes_print_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for script, flag, says in [
        ("train.py", "--config.langevin.num_step=10", "did you mean num_steps?"),
        ("evaluate.py", "--workdir=nothing", "no checkpoint in nothing"),
    ]:
        result = subprocess.run(
            [sys.executable, os.path.join(REPO, script), flag],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith("error: ") and says in result.stderr
        assert not os.listdir(tmp_path)


# === The library and an exported model ===


def banked_model():
    bank = keras_ebm.SampleBank(size=16, batch_size=4, state_shape=(2,))
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model = keras_ebm.EnergyModel(net, num_steps=2, step_size=0.1, bank=bank)
    model.compile(ebm_optimizer=keras.optimizers.Adam(1e-3))
    return model


def fit_unfilled():
    data = tf.data.Dataset.from_tensor_slices(np.ones((8, 2), "float32"))
    banked_model().fit(data.batch(4, drop_remainder=True), verbose=0)


def fit_partial_batches():
    model = banked_model()
    model.initialize_bank()
    data = tf.data.Dataset.from_tensor_slices(np.ones((10, 2), "float32"))
    model.fit(data.batch(4), verbose=0)


def generator_source_without_generator():
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keras_ebm.EnergyModel(net, 2, 0.1, init_source="generator")


def bank_smaller_than_batch():
    keras_ebm.SampleBank(size=2, batch_size=4, state_shape=(2,))


def sample_wrong_shape():
    banked_model().sample(np.zeros((3, 5), "float32"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = banked_model()
    return tf.saved_model.load(
        keras_ebm.export_savedmodel(model, str(tmp_path_factory.mktemp("ebm")))
    )


LIBRARY_CASES = [
    (
        "fit-before-initialize-bank",
        fit_unfilled,
        ValueError,
        "call model.initialize_bank() before fit",
    ),
    ("partial-batches", fit_partial_batches, ValueError, "drop_remainder=True"),
    (
        "generator-init-without-generator",
        generator_source_without_generator,
        ValueError,
        "init_source='generator' needs a generator",
    ),
    (
        "bank-smaller-than-batch",
        bank_smaller_than_batch,
        ValueError,
        "must be at least the batch size",
    ),
    (
        "sample-wrong-shape",
        sample_wrong_shape,
        ValueError,
        "sample expects states of shape [B, 2]",
    ),
    (
        "endpoint-wrong-shape",
        lambda r: r.energy(tf.zeros((3, 5))),
        tf.errors.InvalidArgumentError,
        "energy expects [B, 2] float32",
    ),
    (
        "endpoint-negative-steps",
        lambda r: r.sample(tf.zeros((3, 2)), -2),
        tf.errors.InvalidArgumentError,
        "num_steps must be >= 0",
    ),
]


@pytest.mark.parametrize(
    "call, kind, says",
    [c[1:] for c in LIBRARY_CASES],
    ids=[c[0] for c in LIBRARY_CASES],
)
def test_library_mistakes_raise_what_to_do(call, kind, says, exported):
    with pytest.raises(kind) as info:
        call(exported) if call.__code__.co_argcount else call()
    message = info.value.message if hasattr(info.value, "message") else str(info.value)
    assert says in message.splitlines()[0] or says in message, message
