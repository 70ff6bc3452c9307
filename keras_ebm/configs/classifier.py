"""Classifiers: the digits CNN (FID features, defended in midrun) and the
CIFAR-10 WRN-28-10 of ebm-life-cycle `configs_clf/cifar10_wrn.py`.

    python train.py --regime=classifier --dataset=digits
    python train.py --regime=classifier --dataset=cifar10
"""

from keras_ebm.configs import common

# The datasets (presets) of this regime: `--dataset` or `:<preset>`.
PRESETS = ("digits", "smoke", "cifar10")


def get_config(arg="digits"):
    c = common.get_base_config()
    c.regime = "classifier"
    c.preset = arg  # the config's argument; `--workdir` alone finds it again
    c.data.name = arg
    c.data.noise_std = 0.0
    c.classifier = common.Config(
        dict(
            network="clf_digits",
            epochs=30,
            batch_size=64,
            optimizer="adam",
            lr=common.schedule((0, 1e-3)),  # steps are epochs here
            momentum=0.9,
            weight_decay=0.0,
            augment=False,  # pad 4 + random crop + flip
            test_fraction=0.2,  # digits: held-out stratified split
        )
    )
    if arg == "digits":
        pass
    elif arg == "smoke":
        c.data.update(name="digits", image_size=16)
        c.classifier.update(epochs=1, batch_size=32)
    elif arg == "cifar10":
        c.data.update(image_size=32, channels=3)
        # batch 96, 100 epochs, SGD momentum 0.9 (no Nesterov), LR 0.1 ->
        # 0.01 (epoch 40) -> 0.001 (epoch 60), weight decay 5e-4 as
        # wd * sum(l2_loss(v)) over all trainable variables, pad + crop + flip.
        c.classifier.update(
            network="clf_wrn28_10",
            epochs=100,
            batch_size=96,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=5e-4,
            augment=True,
        )
        c.classifier.lr = common.schedule((0, 0.1), (40, 0.01), (60, 0.001))
    else:
        raise common.UnknownPreset("classifier", arg, PRESETS)
    return c
