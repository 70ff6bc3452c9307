"""The imagenet2012 presets end to end on their real networks: an ImageNet
stand-in prepared by tfds' own builder from `--config.data.manual_dir`
archives, DeepMind's BigGAN-deep generators at full size with random
weights in the tf2-model-clones checkpoint layout, the BigGAN EBM at 224
(midrun) and the SNGAN-64 EBM (prior, longrun). One training step of each
regime, the midrun defense's purification and attack step, and exports.
The preset's EfficientNet-B7 runs once, through the adapter at 600x600;
the smoke defends a tiny classifier instead, since B7 costs 1.4 s per
input gradient here and its SavedModel ~270 MB
(`benchmarks/efficientnet_b7.py` times it)."""

import io
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_ebm import data, run
from keras_ebm.configs import longrun, midrun, prior
from tests import reference_biggan as ref
from tests.biggan_test import pytorch_count

pytestmark = pytest.mark.slow

SYNSETS = ("n01440764", "n01443537")  # ImageNet classes 0 and 1


def _jpeg(rng, shape):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape).astype("uint8")).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """`ILSVRC2012_img_{train,val}.tar` as image-net.org ships them (a tar of
    per-synset tars; validation JPEGs named by index), 3 training images per
    synset and 4 validation images, and BigGAN-deep checkpoints."""
    root = tmp_path_factory.mktemp("imagenet")
    manual = root / "manual"
    manual.mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
        for synset in SYNSETS:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(3):
                    _add(t, f"{synset}_{i}.JPEG", _jpeg(rng, (90, 120, 3)))
            _add(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
        for i in range(1, 5):
            _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, (100, 80, 3)))
    weights = {}
    for resolution in (128, 256):
        prefix = str(root / f"biggan-tf2-{resolution}" / "weights")
        ref.write(ref.random_values(ref.gen_spec(resolution), seed=resolution), prefix)
        weights[resolution] = prefix
    return dict(manual=str(manual), data_dir=str(root / "tfds"), weights=weights)


def _tiny(config, stand_in, generator_resolution):
    config.data.update(data_dir=stand_in["data_dir"], manual_dir=stand_in["manual"])
    config.generator.weights = stand_in["weights"][generator_resolution]
    config.langevin.num_steps = 1
    config.bank.size = 2
    config.train.update(
        num_steps=1,
        batch_size=2,
        log_every=1,
        image_every=1,
        grid_images=2,
        checkpoint_every=1,
    )
    return config


def test_the_stand_in_is_read_by_tfds(stand_in):
    config = midrun.get_config("imagenet2012")
    config.data.update(data_dir=stand_in["data_dir"], manual_dir=stand_in["manual"])
    train = list(data.images(config).as_numpy_iterator())
    assert len(train) == 6 and train[0].shape == (224, 224, 3)
    assert data.num_labeled(config, "validation") == 4
    # Evaluation images are centre crops, the same on every read.
    a, labels = data.labeled(config, "validation", indices=[2, 0])
    b, _ = data.labeled(config, "validation", indices=[2, 0])
    np.testing.assert_array_equal(a, b)
    all_images, all_labels = data.labeled(config, "validation")
    np.testing.assert_array_equal(a, all_images[[2, 0]])
    np.testing.assert_array_equal(labels, all_labels[[2, 0]])


def test_prior_and_longrun_train_on_biggan_deep_128(stand_in, tmp_path):
    config = _tiny(prior.get_config("imagenet2012"), stand_in, 128)
    model = run.train(config, str(tmp_path / "prior"))
    # The full-size generator, counted as PyTorch counts (published: 50.4M).
    assert model.generator.resolution == 128
    assert pytorch_count(model.generator) == 50_388_609
    assert model.bank.states.shape == (2, 64, 64, 3)
    latents = model.bank.latents.numpy()  # z (truncated) and u (the class)
    assert latents.shape == (2, 129) and np.abs(latents[:, :128]).max() <= 2
    assert ((latents[:, 128] >= 0) & (latents[:, 128] < 1)).all()
    assert np.isfinite(model.bank.states.numpy()).all()
    # Grids of train.grid_images (2): one row of 64x64 images, not eight.
    grid = Image.open(tmp_path / "prior" / "samples" / "generator_00000001.png")
    assert grid.size == (8 * 65 + 1, 65 + 1)

    config = _tiny(longrun.get_config("imagenet2012"), stand_in, 128)
    config.prior.workdir = str(tmp_path / "prior")
    config.burnin.update(size=2, steps=1, length=1)
    model = run.train(config, str(tmp_path / "longrun"))
    assert int(model.ebm_optimizer.iterations) == 1
    assert model.prior_net is not None


def _small_imagenet_classifier(path):
    """A tiny ImageNet classifier (logits of 1000 classes) that, like
    EfficientNet, takes another size (112) and range ([0, 255]) than the
    EBM's states: the adapter resizes and rescales inside the defense."""
    inputs = keras.Input((112, 112, 3))
    h = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inputs / 255.0)
    h = keras.layers.GlobalAveragePooling2D()(h)
    keras.Model(inputs, keras.layers.Dense(1000)(h)).save(path)
    return path


def test_midrun_trains_purifies_attacks_and_exports(stand_in, tmp_path):
    config = _tiny(midrun.get_config("imagenet2012"), stand_in, 256)
    config.defense.update(
        num_steps=1,
        classifier_workdir=_small_imagenet_classifier(str(tmp_path / "clf.keras")),
        classifier_input_size=112,
    )
    assert tuple(config.defense.classifier_input_range) == (0.0, 255.0)
    config.attack.update(
        num_images=2,
        batch_size=2,
        num_steps=1,
        adv_replicates=1,
        def_replicates=1,
        num_seeds=1,
    )
    workdir = str(tmp_path / "midrun")
    model = run.train(config, workdir)
    assert model.energy_net.name.startswith("big_gan_energy_net")
    assert pytorch_count(model.generator) == 55_880_833  # published: 55.9M
    assert model.generator.image_shape == (224, 224, 3)
    assert model.bank.states.shape == (2, 224, 224, 3)
    results = run.evaluate(config, workdir)
    assert (results["num_images"], results["split"]) == (2, "validation")
    assert results["k_def"] == 1 and set(results["attacks"]) >= {"bpda_eot"}
    path = run.export(config, workdir)
    served = tf.saved_model.load(path)
    x = tf.random.stateless_uniform((1, 224, 224, 3), [0, 3], -1, 1)
    assert served.predict(x, num_replicates=1, num_steps=1).shape == (1, 1000)


def test_efficientnet_b7_at_600(tmp_path):
    """The preset's classifier, run once in CI: B7 from a local weights
    file through the preset's spec, the logits of a 224 state through the
    adapter (600x600 in [0, 255]) equal to B7 on a hand-made resize."""
    from keras_ebm.regimes import midrun as regime

    path = str(tmp_path / "efficientnetb7.weights.h5")
    keras.applications.EfficientNetB7(weights=None).save_weights(path)
    config = midrun.get_config("imagenet2012")
    config.defense.classifier_workdir = f"keras.applications.EfficientNetB7:{path}"
    classifier = regime.classifier_of(config)
    x = tf.random.stateless_uniform((1, 224, 224, 3), [0, 4], -1, 1)
    logits = classifier(x)
    assert logits.shape == (1, 1000)
    resized = tf.image.resize(x, (600, 600), antialias=False)
    b7 = classifier.classifier
    np.testing.assert_allclose(logits, b7((resized + 1) * 127.5), rtol=1e-4, atol=1e-4)
