"""Midrun adversarial defense, training (paper Section 3, Algorithm 3;
ebm-life-cycle `configs/*_medconv_*.py`): a persistent bank rejuvenated
rarely from a frozen generator or from data, no lifetime cap, and the
learning rate annealed 1e-4 -> 1e-8 over 125K steps.

    python train.py --regime=shortrun --dataset=cifar10   # the generator
    python train.py --regime=midrun --dataset=cifar10     # frozen SNGAN-32 source
    python train.py --regime=midrun --dataset=cifar10_data

p = K / K_def (the paper): with K 100 steps per draw and purification of
K_def steps, a state lives K_def steps on average (0.05 -> 2000).

`get_config(arg)`: cifar10, cifar10_data, imagenet2012, digits, folder or
smoke.
"""

from keras_ebm.configs import common

ANNEAL = common.schedule(
    (0, 1e-4), (50000, 1e-5), (75000, 1e-6), (100000, 1e-7), (125000, 1e-8)
)


# The datasets (presets) of this regime: `--dataset` or `:<preset>`.
PRESETS = ("digits", "smoke", "cifar10", "cifar10_data", "imagenet2012", "folder")


def get_config(arg="digits"):
    arg = {"imagenet": "imagenet2012"}.get(arg, arg)
    c = common.get_base_config()
    c.regime = "midrun"
    c.preset = arg  # the config's argument; `--workdir` alone finds it again
    c.data.name = arg
    c.generator.update(trainable=False, batch_stats_in_training=False)
    c.generator.weights = f"runs/shortrun/{arg}"
    c.bank.max_updates = 0
    c.defense = _defense(arg)
    c.attack = _attack()
    preset = _PRESETS.get(arg)
    if preset is None:
        raise common.UnknownPreset("midrun", arg, PRESETS)
    preset(c, arg)
    return c


def _defense(arg):
    # Purification (evaluation): K_def steps at the attack config's eps and
    # T (the reference's attack_config_cifar10: 1e-2, 1e-4).
    return common.Config(
        dict(
            num_steps=2000,  # K_def
            step_size=0.0,  # purification eps; 0 = the training eps
            temperature=0.0,  # purification T; 0 = the training T
            classifier_workdir=f"runs/classifier/{arg}",
            # The classifier's input: its size (0: the EBM's) and value
            # range; an adapter inside the defense maps [-1, 1] states to it.
            classifier_input_size=0,
            classifier_input_range=(-1.0, 1.0),
        )
    )


def _attack():
    # BPDA+EOT evaluation (ebm-life-cycle configs_attack/, CIFAR-10 values):
    # eps and step in [0, 1] pixel units (8/255), doubled on [-1, 1] images.
    return common.Config(
        dict(
            eps=8 / 255,
            step_size=2 / 255,  # eta
            num_steps=50,  # PGD steps
            norm="linf",  # or l2
            adv_replicates=48,  # H_adv (EOT)
            def_replicates=128,  # H_def (verification)
            num_images=640,
            batch_size=64,
            split="test",
            random_start=True,
            # Every attack runs with num_seeds independent seeds (seed,
            # seed + 1, ...) of its random start and purification noise;
            # figures are their mean and spread. `seed` also orders the images.
            seed=0,
            num_seeds=3,
            # Figure 6: natural and robust accuracy for each K_def (0 = the
            # undefended classifier), on the first curve_images (0 = all),
            # with the first seed, under BPDA+EOT (and the full-gradient
            # attack when adaptive).
            k_def_curve=(),
            curve_images=0,
            # The full-gradient attack (MEFA): exact gradients through the
            # last adaptive_grad_steps Langevin steps (-1 = all K_def, no
            # BPDA anywhere), checkpointed every checkpoint_every steps (0 =
            # ~sqrt(K_def): memory grows with sqrt(K_def)), ascending
            # adaptive_loss (margin, or ce as BPDA+EOT), with the first
            # adaptive_seeds seeds on the first adaptive_images images.
            adaptive=False,
            adaptive_grad_steps=-1,
            checkpoint_every=0,
            adaptive_loss="margin",
            adaptive_seeds=1,
            adaptive_images=0,  # the first so many images; 0 = all
            # Attacks that do not trust the EBM's own gradient (a ReLU EBM's
            # pathwise gradient is BPDA's whatever it differentiates). The
            # surrogate: the true purification forward, the exact
            # checkpointed backward through the EBM's smooth twin (ReLU as
            # softplus(beta z)/beta) at the true chain states, one attack per
            # beta. SPSA: gradient-free, N pairs of Rademacher perturbations
            # of size spsa_delta (pixel units, as eps) per image and step,
            # each pair with common purification noise; spsa_replicates and
            # spsa_num_steps 0 = adv_replicates and num_steps.
            surrogate=False,
            surrogate_betas=(20.0,),
            surrogate_loss="ce",
            surrogate_seeds=1,
            surrogate_images=0,
            surrogate_num_steps=0,  # 0 = num_steps
            spsa=False,
            spsa_samples=32,
            spsa_delta=0.01,
            spsa_replicates=0,
            spsa_num_steps=0,
            spsa_loss="margin",
            spsa_momentum=0.0,  # MI-FGSM accumulation of the estimates
            spsa_seeds=1,
            spsa_images=0,
            # SPSA on the images every other defended attack left standing
            # with the same seed (AutoAttack's cascade): the same worst
            # case at the survivors' cost; its own row is over them.
            spsa_cascade=False,
            # Each gradient attack again with long_steps PGD steps (0 = off;
            # more than num_steps) on the images all of them left standing,
            # first seed: does the curve flatten past the attacks' end?
            long_steps=0,
            # Gradient quality: at the first gradient_check_images images
            # plus a random start in the ball (PGD's first iterate), each
            # attack's gradient of gradient_check_loss against central
            # differences of the expected loss along every pixel
            # (gradient_check_replicates purifications per point, common
            # noise per pair, step gradient_check_delta in pixel units), one
            # draw and the mean of gradient_check_draws. 0 images = off.
            gradient_check_images=0,
            gradient_check_loss="margin",
            gradient_check_replicates=64,
            gradient_check_delta=0.05,
            gradient_check_draws=4,
            report_name="",  # the report goes to eval/attack/<report_name>
        )
    )


def _digits(c, arg):
    # Data-rejuvenated (as cifar10_data), on the classifier's training
    # part only: the defense is attacked on the held-out test images, so
    # neither the EBM nor a generator may have seen them.
    c.data.split = "classifier_train"
    c.init.source = "data"
    c.model.generator = ""
    c.generator.weights = ""
    # Chains at eps 3e-2 (data noise 2 eps) that live ~K/p = 400 steps,
    # 4000 annealed updates: of the EBMs tried (BUILD_NOTES, issue 13)
    # the one whose chains purify best at large steps.
    c.langevin.update(num_steps=40, step_size=3e-2)
    c.bank.rejuvenation_prob = 0.1
    c.data.noise_std = 6e-2
    c.optim.ebm_lr = common.schedule((0, 2e-4), (3000, 2e-5), (3600, 2e-6))
    c.train.update(num_steps=4000, image_every=500, checkpoint_every=500)
    # Purification: 100 steps of eps 4e-2 at T 5e-5, i.e. 3.6 times the
    # training drift per step (eps^2 / 2T 16 against 4.5): about the
    # 400 training steps a bank state lives (p = K / K_def in drift
    # units). Lower T (a stronger drift) purified better than more
    # noise in the screens (BUILD_NOTES).
    c.defense.update(num_steps=100, step_size=4e-2, temperature=5e-5)
    # eps 0.15 (~38/255, 2.4 of the 16 grey levels) is the smallest
    # tried at which PGD leaves the undefended digits CNN below 5% for
    # every seed (BUILD_NOTES); eta eps/4 as the reference. H_adv / H_def
    # sized for a 2-core CPU; 256 of the 360 held-out test images.
    c.attack.update(
        eps=0.15,
        step_size=0.0375,
        adv_replicates=8,
        def_replicates=32,
        num_images=256,
        num_seeds=3,
        adaptive=True,
        adaptive_seeds=1,
        k_def_curve=(0, 25, 50, 100, 200),
        curve_images=64,
        # Issue 24: the attacks that do not trust the pathwise gradient,
        # on every image, one seed (the surrogate costs 8x BPDA, 80 min
        # for 256 images here): the surrogate at the beta that broke
        # most in the sweep (20, 50, 100, 200; BUILD_NOTES), then SPSA
        # on what both left standing, at H_adv 2 and a pair step of 0.05
        # (pixel units; the gradient check's finite differences were
        # noise at a fifth of that).
        surrogate=True,
        surrogate_betas=(100.0,),
        spsa=True,
        spsa_samples=32,
        spsa_delta=0.05,
        spsa_replicates=2,
        spsa_momentum=0.5,
        spsa_cascade=True,
        # BPDA+EOT and the surrogate again with four times the PGD steps
        # on what all three left: do their curves flatten past step 50?
        # (100 was tried too: BUILD_NOTES.)
        long_steps=200,
        gradient_check_images=4,
    )


def _smoke(c, arg):
    common.smoke(c)
    c.init.source = "noise"
    c.generator.weights = ""
    c.bank.rejuvenation_prob = 0.1
    c.defense.update(num_steps=4, classifier_workdir="runs/classifier/digits")
    c.attack.update(
        eps=0.15,
        step_size=0.05,
        num_steps=2,
        adv_replicates=2,
        def_replicates=2,
        num_images=8,
        batch_size=4,
        k_def_curve=(0, 2),
        curve_images=4,
        num_seeds=2,
    )


def _cifar10(c, arg):
    c.data.update(name="cifar10", image_size=32, channels=3)
    c.model.update(ebm="ebm_sngan32", generator="gen_sngan32", latent_dim=128)
    c.model.ebm_kwargs = common.Config()
    c.model.generator_kwargs = common.Config(dict(bn_epsilon=1e-3))
    c.langevin.update(num_steps=100, step_size=1.25e-2, temperature=1e-4)
    c.data.noise_std = 2.5e-2
    c.bank.update(size=25000, rejuvenation_prob=0.05)
    c.generator.weights = "runs/shortrun/cifar10"
    c.defense.classifier_workdir = "runs/classifier/cifar10"
    # attack_config_cifar10 purifies at 1e-2 whichever EBM it defends
    # with (this one trains at 1.25e-2).
    c.defense.step_size = 1e-2
    if arg == "cifar10_data":  # cifar10_medconv_sngan_data
        c.init.source = "data"
        c.model.generator = ""
        c.generator.weights = ""
        c.langevin.step_size = 1e-2
        c.data.noise_std = 2e-2
        c.bank.update(size=20000, rejuvenation_prob=0.025)
    c.optim.ebm_lr = ANNEAL
    common.paper_training(c, 150000)


def _imagenet2012(c, arg):
    # imagenet_medconv_sngan: 224x224, the BigGAN-deep EBM and a frozen
    # BigGAN-deep-256 generator resized to 224, DeepMind's weights as the
    # tf2-model-clones notebook saves them (README: "ImageNet weights").
    c.data.update(image_size=224, channels=3, noise_std=3e-2)
    c.model.update(ebm="ebm_biggan", generator="gen_biggan_deep256", latent_dim=128)
    c.model.ebm_kwargs = common.Config()
    c.model.generator_kwargs = common.Config()
    c.generator.weights = "weights/biggan-tf2-256/weights"
    c.langevin.update(num_steps=100, step_size=2e-2, temperature=1e-5)
    c.bank.update(size=10000, rejuvenation_prob=0.05)
    c.defense.num_steps = 200
    # Keras' EfficientNet-B7 as the reference defends it: 600x600 in
    # [0, 255] (the EBM purifies at 224 in [-1, 1]), its weights from a
    # local file (`:imagenet` downloads them where there is network).
    c.defense.update(
        classifier_workdir="keras.applications.EfficientNetB7:efficientnetb7.h5",
        classifier_input_size=600,
        classifier_input_range=(0.0, 255.0),
    )
    # attack_config_imagenet: validation, 8 x 100 images, 2/255, eta
    # 1/255, H_adv 24 (the paper's table says 16), H_def 64.
    c.attack.update(
        eps=2 / 255,
        step_size=1 / 255,
        adv_replicates=24,
        def_replicates=64,
        num_images=800,
        batch_size=8,
        split="validation",
    )
    c.optim.ebm_lr = ANNEAL
    common.paper_training(c, 150000, batch_size=64)


def _folder(c, arg):
    c.data.update(image_size=32, channels=3)
    c.init.source = "data"
    c.model.generator = ""
    c.generator.weights = ""


_PRESETS = {
    "digits": _digits,
    "smoke": _smoke,
    "cifar10": _cifar10,
    "cifar10_data": _cifar10,
    "imagenet2012": _imagenet2012,
    "folder": _folder,
}
