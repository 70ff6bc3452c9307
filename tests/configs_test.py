"""Config files, flag resolution, start-up validation."""

import os

import numpy as np
import pytest
from absl import app
from absl.testing import parameterized

from keras_ebm import run
from keras_ebm.cli import presets
from keras_ebm.configs import classifier, shortrun

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

    def test_default_workdirs_keep_toy_densities_apart(self):
        config = shortrun.get_config("toy2d")
        self.assertEqual(presets.default_workdir(config), "runs/shortrun/toy2d_gmm")
        config.data.toy = "rings"
        self.assertEqual(presets.default_workdir(config), "runs/shortrun/toy2d_rings")
        self.assertEqual(
            presets.default_workdir(shortrun.get_config("digits")),
            "runs/shortrun/digits",
        )
        # The preset names the folder, not the data it reads (smoke: digits).
        self.assertEqual(
            presets.default_workdir(shortrun.get_config("smoke")), "runs/shortrun/smoke"
        )

    def test_flags_resolve_to_config_files(self):
        # The files the flags name are the package's presets themselves.
        import keras_ebm.configs

        self.assertEqual(
            presets.CONFIGS,
            os.path.dirname(os.path.abspath(keras_ebm.configs.__file__)),
        )
        argv = presets.resolve_argv(
            ["train.py", "--regime=shortrun", "--dataset=cifar10"]
        )
        self.assertIn(f"--config={presets.CONFIGS}/shortrun.py:cifar10", argv)
        argv = presets.resolve_argv(["train.py", "--regime", "shortrun"])
        self.assertIn(f"--config={presets.CONFIGS}/shortrun.py:digits", argv)
        argv = presets.resolve_argv(["train.py", "--config=x.py:y"])
        self.assertEqual(argv, ["train.py", "--config=x.py:y"])
        argv = presets.resolve_argv(["train.py", "--regime=classifier"])
        self.assertIn(f"--config={presets.CONFIGS}/classifier.py:digits", argv)
        argv = presets.resolve_argv(
            ["train.py", "--regime=longrun", "--dataset=celeb_a"]
        )
        self.assertIn(f"--config={presets.CONFIGS}/longrun.py:celeb_a", argv)
        argv = presets.resolve_argv(
            ["train.py", "--regime=midrun", "--dataset=cifar10"]
        )
        self.assertIn(f"--config={presets.CONFIGS}/midrun.py:cifar10", argv)
        with self.assertRaisesRegex(app.UsageError, "unknown --regime"):
            presets.resolve_argv(["train.py", "--regime=nope"])

    def test_workdir_alone_finds_its_regime_and_preset(self):
        import tempfile

        workdir = tempfile.mkdtemp()
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(
                '{"regime": "midrun", "preset": "smoke", "data": {"name": "digits"}}'
            )
        argv = presets.resolve_argv(["evaluate.py", f"--workdir={workdir}"])
        self.assertIn(f"--config={presets.CONFIGS}/midrun.py:smoke", argv)
        # Explicit flags win; a folder without a run falls back to the default.
        argv = presets.resolve_argv(
            ["evaluate.py", f"--workdir={workdir}", "--regime=prior"]
        )
        self.assertIn(f"--config={presets.CONFIGS}/prior.py:digits", argv)
        argv = presets.resolve_argv(["evaluate.py", f"--workdir={workdir}/none"])
        self.assertIn(f"--config={presets.CONFIGS}/shortrun.py:digits", argv)


LONGRUN_PRESETS = ["digits", "smoke", "toy2d", "cifar10", "cifar10_data", "celeb_a"]


@pytest.mark.parametrize("dataset", LONGRUN_PRESETS + ["imagenet2012"])
def test_longrun_and_prior_presets_have_valid_fields(dataset):
    from keras_ebm.configs import longrun, prior

    c = longrun.get_config(dataset)
    run.training.check_config(c)
    if dataset == "imagenet2012":  # BigGAN-deep-128 resized to 64
        assert (c.model.generator, c.data.image_size) == ("gen_biggan_deep128", 64)
        assert c.generator.weights == prior.get_config(dataset).generator.weights
    if dataset != "cifar10_data":
        run.training.check_config(prior.get_config(dataset))


def test_longrun_digits_freezes_the_demo_generator():
    # The longrun preset loads the demo run's generator: same folder, same
    # network, same resolution, or its weights would not load.
    from keras_ebm.configs import longrun

    demo, c = shortrun.get_config("digits"), longrun.get_config("digits")
    assert c.generator.weights == presets.default_workdir(demo)
    for field in ("generator", "generator_kwargs", "latent_dim"):
        assert c.model[field] == demo.model[field], field
    assert c.data.image_size == demo.data.image_size == 8
    assert c.model.ebm_kwargs.width == 32 and demo.model.ebm_kwargs.width == 64
    # The demo's values, not the shared defaults (which the midrun preset keeps).
    assert (demo.train.num_steps, demo.optim.ebm_lr.rates) == (1400, (4e-4,))
    assert demo.train.precision == "bfloat16"


def test_longrun_reference_values():
    from keras_ebm.configs import longrun, prior

    c = longrun.get_config("celeb_a")
    assert (c.langevin.num_steps, c.langevin.step_size, c.langevin.tau) == (
        100,
        1e-2,
        0.15,
    )
    assert (c.burnin.size, c.burnin.steps, c.burnin.length) == (1000, 100, 750)
    assert (c.langevin.temperature, c.prior.temperature) == (1e-4, 1e-4)
    assert (c.bank.size, c.data.noise_std, c.train.num_steps) == (15000, 2e-2, 250000)
    assert tuple(c.optim.ebm_lr.steps) == (0, 50000, 75000, 100000, 125000)
    assert tuple(c.optim.ebm_lr.rates) == (2.5e-5, 1e-5, 1e-6, 1e-7, 1e-8)
    assert (c.eval.num_samples, c.eval.joint_temperature) == (5088, 1.01)
    assert c.prior.workdir == "runs/prior/celeb_a"
    c = longrun.get_config("cifar10")
    assert (c.bank.size, c.eval.joint_temperature) == (10000, 1.005)
    c = longrun.get_config("cifar10_data")
    assert (c.init.source, c.model.generator) == ("data", "")
    c = longrun.get_config("imagenet2012")
    assert (c.data.image_size, c.langevin.temperature, c.data.noise_std) == (
        64,
        1e-5,
        1.5e-2,
    )
    assert c.optim.ebm_lr.rates[0] == 1e-4
    p = prior.get_config("cifar10")
    assert (p.langevin.num_steps, p.bank.rejuvenation_prob, p.bank.max_updates) == (
        50,
        0.2,
        0,
    )
    assert (p.langevin.tau, p.train.num_steps, p.optim.ebm_lr.rates) == (
        0.15,
        150000,
        (1e-4,),
    )
    assert prior.get_config("celeb_a").langevin.num_steps == 100
    assert prior.get_config("imagenet2012").langevin.temperature == 1e-5


@pytest.mark.parametrize(
    "dataset", ["digits", "smoke", "cifar10", "cifar10_data", "folder", "imagenet2012"]
)
def test_midrun_presets(dataset):
    from keras_ebm.configs import midrun

    c = midrun.get_config(dataset)
    if dataset == "imagenet2012":
        a = c.attack  # attack_config_imagenet
        assert (a.eps, a.step_size, a.adv_replicates, a.def_replicates) == (
            2 / 255,
            1 / 255,
            24,
            64,
        )
        assert (a.num_images, a.split, c.defense.num_steps) == (800, "validation", 200)
        assert (c.model.ebm, c.model.generator) == ("ebm_biggan", "gen_biggan_deep256")
        assert (c.train.batch_size, c.data.image_size) == (64, 224)
        run.training.check_config(c)
        # Without DeepMind's weights the error says where they come from.
        from keras_ebm.regimes import midrun as regime

        with pytest.raises(run.ConfigError, match="save_biggan_tf2.ipynb"):
            regime.check(c)
        return
    run.training.check_config(c)
    assert c.bank.max_updates == 0 and not c.generator.trainable
    if dataset == "cifar10":  # cifar10_medconv_sngan
        assert (c.bank.size, c.bank.rejuvenation_prob) == (25000, 0.05)
        assert (c.langevin.step_size, c.data.noise_std) == (1.25e-2, 2.5e-2)
        assert tuple(c.optim.ebm_lr.rates) == (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
        assert tuple(c.optim.ebm_lr.steps) == (0, 50000, 75000, 100000, 125000)
        assert c.defense.num_steps == 2000
        # attack_config_cifar10: 640 test images, 50 PGD steps of 2/255 in
        # an 8/255 ball, H_adv 48, H_def 128.
        a = c.attack
        assert (a.eps, a.step_size, a.num_steps, a.norm) == (
            8 / 255,
            2 / 255,
            50,
            "linf",
        )
        assert (a.adv_replicates, a.def_replicates) == (48, 128)
        assert (a.num_images, a.split, a.random_start) == (640, "test", True)
    if dataset in ("cifar10", "cifar10_data"):
        # attack_config_cifar10 purifies at eps 1e-2 and T 1e-4 whichever EBM
        # (the generator one trains at 1.25e-2).
        eps = c.defense.step_size or c.langevin.step_size
        temperature = c.defense.temperature or c.langevin.temperature
        assert (eps, temperature) == (1e-2, 1e-4)
    if dataset == "cifar10":
        # p = K / K_def
        assert c.bank.rejuvenation_prob == c.langevin.num_steps / c.defense.num_steps
    if dataset == "cifar10_data":  # cifar10_medconv_sngan_data
        assert (c.bank.size, c.bank.rejuvenation_prob, c.init.source) == (
            20000,
            0.025,
            "data",
        )


@pytest.mark.slow
def test_midrun_trains_from_a_frozen_shortrun_generator(tmp_path):
    from keras_ebm.configs import midrun

    short = shortrun.get_config("smoke")
    shortrun_model = run.train(short, str(tmp_path / "short"))
    c = midrun.get_config("smoke")
    c.init.source = "generator"
    c.generator.weights = str(tmp_path / "short")
    model = run.train(c, str(tmp_path / "mid"))
    for a, b in zip(
        model.generator.weights, shortrun_model.generator.weights, strict=True
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not model.train_generator and int(model.ebm_optimizer.iterations) == 4
    # A generator of another shape is refused before anything is written.
    c.data.image_size = 16
    with pytest.raises(run.ConfigError, match="generator"):
        run.train(c, str(tmp_path / "mid16"))
    assert not (tmp_path / "mid16").exists()
