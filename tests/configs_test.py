"""Config files, flag resolution, start-up validation."""

import os
import subprocess
import sys

import pytest
from absl import app
from absl.testing import parameterized

from configs import classifier, shortrun
from keras_ebm import cli, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ["digits", "smoke", "toy2d", "cifar10", "celeb_a", "imagenet2012", "folder"]


class ConfigsTest(parameterized.TestCase):
    @parameterized.parameters(*PRESETS)
    def test_every_preset_is_valid(self, dataset):
        run.check_config(shortrun.get_config(dataset))

    def test_reference_values(self):
        c = shortrun.get_config("cifar10")
        self.assertEqual(
            (c.langevin.num_steps, c.langevin.step_size, c.langevin.temperature),
            (100, 5e-3, 1e-4),
        )
        self.assertEqual(
            (c.bank.size, c.bank.rejuvenation_prob, c.bank.max_updates), (10000, 0.5, 2)
        )
        self.assertTrue(c.generator.batch_stats_in_training)
        self.assertEqual(c.eval.num_steps, 350)
        c = shortrun.get_config("celeb_a")
        self.assertEqual((c.langevin.num_steps, c.langevin.temperature), (75, 1e-6))
        self.assertFalse(c.generator.batch_stats_in_training)
        c = shortrun.get_config("imagenet")
        self.assertEqual((c.optim.clip_norm, c.optim.gen_lr.rates[0]), (50.0, 5e-5))
        self.assertEqual((c.langevin.num_steps, c.eval.num_steps), (50, 320))

    @parameterized.named_parameters(
        ("step_size", "langevin.step_size", -1.0),
        ("temperature", "langevin.temperature", 0.0),
        ("bank", "bank.size", 4),
        ("prob", "bank.rejuvenation_prob", 1.5),
        ("dataset", "data.name", "mnist"),
        ("log_every", "train.log_every", 3),
        ("jit", "train.jit_compile", "maybe"),
    )
    def test_invalid_values_name_the_field(self, field, value):
        config = shortrun.get_config("smoke")
        section, leaf = field.split(".")
        config[section][leaf] = value
        with self.assertRaisesRegex(run.ConfigError, f"config.{field}"):
            run.check_config(config)

    @parameterized.parameters("digits", "smoke", "cifar10")
    def test_classifier_presets(self, dataset):
        c = classifier.get_config(dataset)
        self.assertEqual(c.regime, "classifier")
        if dataset == "cifar10":  # ebm-life-cycle configs_clf/cifar10_wrn.py
            cc = c.classifier
            self.assertEqual(
                (cc.batch_size, cc.epochs, cc.weight_decay), (96, 100, 5e-4)
            )
            self.assertEqual(tuple(cc.lr.steps), (0, 40, 60))
            self.assertEqual(tuple(cc.lr.rates), (0.1, 0.01, 0.001))

    def test_unknown_preset(self):
        with self.assertRaisesRegex(ValueError, "unknown dataset"):
            shortrun.get_config("mnist")

    def test_flags_resolve_to_config_files(self):
        argv = cli.resolve_argv(["train.py", "--regime=shortrun", "--dataset=cifar10"])
        self.assertIn(f"--config={REPO}/configs/shortrun.py:cifar10", argv)
        argv = cli.resolve_argv(["train.py", "--regime", "shortrun"])
        self.assertIn(f"--config={REPO}/configs/shortrun.py:digits", argv)
        argv = cli.resolve_argv(["train.py", "--config=x.py:y"])
        self.assertEqual(argv, ["train.py", "--config=x.py:y"])
        argv = cli.resolve_argv(["train.py", "--regime=classifier"])
        self.assertIn(f"--config={REPO}/configs/classifier.py:digits", argv)
        with self.assertRaisesRegex(app.UsageError, "later|known"):
            cli.resolve_argv(["train.py", "--regime=longrun"])
        with self.assertRaisesRegex(app.UsageError, "unknown --regime"):
            cli.resolve_argv(["train.py", "--regime=nope"])


def _train(tmp_path, *flags):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), *flags],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )


@pytest.mark.slow  # one train.py process each
@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.langevin.step_size=-0.1", "config.langevin.step_size"),
        ("--config.bank.size=2", "config.bank.size"),
        ("--config.langevin.numsteps=3", "numsteps"),
        ("--config.langevin.num_steps=4.5", "num_steps"),
        ("--regime=longrun", "longrun"),
    ],
)
def test_bad_flags_stop_before_writing(tmp_path, flag, message):
    result = _train(tmp_path, "--dataset=smoke", "--workdir=out", flag)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()
