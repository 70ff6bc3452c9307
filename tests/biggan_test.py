"""The BigGAN networks: the reference's parameter counts, its checkpoints
loaded by key (every key used, shapes checked) computing what the
reference's forward pass computes, and the generator's latent and class."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import convert, errors, networks
from keras_ebm.networks import biggan
from tests import reference_biggan as ref


def _count(net, trainable_only=True):
    ws = net.trainable_weights if trainable_only else net.weights
    return sum(int(np.prod(w.shape)) for w in ws)


@pytest.mark.parametrize(
    "size, count",
    # 224: the reference's trainable count (reference-implementation.md
    # §2.3); 128 and 64: this implementation's (BUILD_NOTES.md).
    [(224, 4_289_605), (128, 3_774_469), (64, 1_850_041)],
)
def test_ebm_parameter_counts(size, count):
    net = networks.build("ebm_biggan", image_shape=(size, size, 3))
    assert _count(net) == count
    assert _count(net, trainable_only=False) == count  # no inert sn_u
    assert net(tf.zeros((2, size, size, 3))).shape == (2, 1)


def pytorch_count(gen):
    """Parameters as PyTorch counts BigGAN-deep's: every weight but the
    batch-norm statistics per truncation (buffers there). The full-size
    generators are counted where the ImageNet smoke runs build them
    (`tests/imagenet_test.py`), against the published counts: HuggingFace
    pytorch-pretrained-BigGAN README, BigGAN-deep-128 "a 50.4M parameters
    model", -256 "a 55.9M"."""
    return sum(
        int(np.prod(w.shape)) for w in gen.weights if w.name not in ("mean", "var")
    )


def test_pytorch_count_of_a_small_generator():
    # Width 8, 10 classes: what the PyTorch module would hold, by hand.
    gen = biggan.BigGANDeepGenerator(128, channel_width=8, num_classes=10)
    spec = ref.gen_spec(128, ch=8, num_classes=10)
    by_hand = sum(
        int(np.prod(shape))
        for key, shape in spec.items()
        if not key.endswith(("/sn_u", "/mean", "/var"))
    )
    assert pytorch_count(gen) == by_hand == _count(gen) + 2 * 8


@pytest.mark.parametrize("size", [224, 128, 64])
def test_ebm_loads_the_reference_layout_and_computes_its_energy(tmp_path, size):
    spec = ref.ebm_spec(size, ch=8)
    values = ref.random_values(spec)
    prefix = str(tmp_path / "ebm")
    ref.write(values, prefix, root="layer_with_weights-0")
    net = networks.build("ebm_biggan", image_shape=(size, size, 3), channel_width=8)
    networks.load_weights(net, prefix)
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(
        net(x), ref.ebm_forward(values, x, size), rtol=2e-4, atol=1e-5
    )


def test_the_ebm_smooth_twin_replaces_every_relu(tmp_path):
    # The surrogate attack's twin (networks.smooth) must reach each ReLU of
    # the reference's forward pass, and only those.
    from keras_ebm.networks import smooth

    spec = ref.ebm_spec(64, ch=8)
    values = ref.random_values(spec)
    prefix = str(tmp_path / "ebm")
    ref.write(values, prefix, root="layer_with_weights-0")
    net = networks.build("ebm_biggan", image_shape=(64, 64, 3), channel_width=8)
    networks.load_weights(net, prefix)
    x = tf.constant(np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)), tf.float32)

    def value_and_grad(energy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            e = energy(x)
            total = tf.reduce_sum(e)
        return e.numpy(), tape.gradient(total, x).numpy()

    def twin(x):
        with smooth.smooth_relu([net], 2.0):
            return net(x)

    e, g = value_and_grad(twin)
    want_e, want_g = value_and_grad(
        lambda x: ref.ebm_forward(
            values, x, 64, relu=lambda z: tf.nn.softplus(2 * z) / 2
        )
    )
    np.testing.assert_allclose(e, want_e, rtol=2e-4, atol=1e-5)
    # The input gradient (what the surrogate differentiates) sees every
    # activation, the energy of this random network hardly any.
    np.testing.assert_allclose(g, want_g, atol=1e-4 * np.abs(want_g).max())


@pytest.mark.parametrize(
    "resolution, size",
    # The longrun presets' 128 -> 64 and the midrun preset's 256 -> 224.
    [(128, 64), pytest.param(256, 224, marks=pytest.mark.slow)],
)
def test_generator_loads_the_reference_layout_and_computes_its_images(
    tmp_path, resolution, size
):
    spec = ref.gen_spec(resolution, ch=8, num_classes=10)
    values = ref.random_values(spec, seed=3)
    prefix = str(tmp_path / "gen")
    ref.write(values, prefix)
    # 0.405 sits a quarter of the way from row 20 to row 21; the port
    # weights them the other way round (0.25, 0.75).
    kwargs = dict(channel_width=8, num_classes=10, truncation=0.405)
    gen = networks.build(
        f"gen_biggan_deep{resolution}", image_shape=(size, size, 3), **kwargs
    )
    networks.load_weights(gen, prefix)
    latent = gen.sample_latent((3, 129), tf.constant([4, 2]))
    labels = gen.classes(latent)
    z = latent[:, :128].numpy()
    expected = ref.gen_forward(values, z, labels, resolution, 0.405, out_size=size)
    np.testing.assert_allclose(gen(latent), expected, rtol=1e-3, atol=2e-5)
    # The class is given: another image than the latent's own class.
    other = (labels + 1) % 10
    np.testing.assert_allclose(
        gen(latent, labels=other),
        ref.gen_forward(values, z, other, resolution, 0.405, size),
        rtol=1e-3,
        atol=2e-5,
    )


def test_attention_gamma_starts_glorot_uniform():
    # The reference's `add_weight` default (glorot uniform: for shape (1,),
    # U(-sqrt(3), sqrt(3))), not BigGAN's zero: an untrained attention
    # layer already mixes positions.
    gammas = []
    for seed in range(24):
        keras.utils.set_random_seed(seed)
        layer = biggan.SelfAttention(16)
        layer.build((None, 4, 4, 16))
        gammas.append(float(layer.gamma.numpy()[0]))
    gammas = np.array(gammas)
    assert np.all(np.abs(gammas) <= np.sqrt(3.0))
    assert len(set(gammas)) == len(gammas)  # drawn, not a constant
    assert 0.7 < np.std(gammas) < 1.3  # U(-sqrt 3, sqrt 3) has std 1


REFERENCE = os.path.join(os.path.dirname(__file__), "data", "reference_biggan")


@pytest.mark.slow
def test_checkpoints_the_reference_code_wrote_compute_its_outputs():
    # Saved by the reference's own `EBMBigGAN` (inside `create_ebm`'s
    # wrapper) and `GenBigGANCond` (BigGAN-deep-256 resized to 224) under
    # tf_keras (`tests/data/write_reference_biggan.py`): its key layout
    # (`w`, `layer/bias`, `sn_u`, `mean`, `var`, `scale/w`, `gamma`, ...)
    # loads with every key used, and computes what the reference computed.
    out = np.load(os.path.join(REFERENCE, "outputs.npz"))
    keys = [k for k, _ in tf.train.list_variables(os.path.join(REFERENCE, "ebm"))]
    for key in ("rgb_conv/w/", "rgb_conv/layer/bias/", "rgb_conv/sn_u/"):
        assert f"layer_with_weights-0/{key}.ATTRIBUTES/VARIABLE_VALUE" in keys
    net = networks.build("ebm_biggan", image_shape=(64, 64, 3), channel_width=8)
    networks.load_weights(net, os.path.join(REFERENCE, "ebm"))
    np.testing.assert_allclose(net(out["x"]), out["energy"], rtol=2e-4, atol=1e-5)
    kwargs = dict(channel_width=4, num_classes=10, latent_dim=16)
    gen = networks.build(
        "gen_biggan_deep256",
        image_shape=(224, 224, 3),
        truncation=float(out["truncation"]),
        **kwargs,
    )
    networks.load_weights(gen, os.path.join(REFERENCE, "gen"))
    latent = np.concatenate([out["z"], np.zeros((2, 1), "float32")], 1)
    images = gen(latent, labels=out["labels"])
    assert images.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(images[:, ::7, ::7], out["images"], rtol=1e-3, atol=2e-5)


def test_checkpoint_keys_missing_or_extra_are_refused(tmp_path):
    spec = ref.ebm_spec(64, ch=8)
    values = ref.random_values(spec)
    net = networks.build("ebm_biggan", image_shape=(64, 64, 3), channel_width=8)
    before = [w.numpy() for w in net.weights]
    extra = str(tmp_path / "extra")
    ref.write(values, extra, root="m", extra={"layers_out/3/conv_9/w": np.ones(3)})
    with pytest.raises(
        ValueError, match=r"1 keys this network does not have: m/layers_out/3/conv_9/w"
    ):
        networks.load_weights(net, extra)
    missing = str(tmp_path / "missing")
    ref.write({k: v for k, v in values.items() if k != "layers_out/1/gamma"}, missing)
    with pytest.raises(ValueError, match="layers_out/1/gamma: 0 matching keys"):
        networks.load_weights(net, missing)
    wrong = str(tmp_path / "wrong")
    ref.write(ref.random_values(ref.ebm_spec(64, ch=16)), wrong)
    with pytest.raises(ValueError, match="rgb_conv/w: shape"):
        networks.load_weights(net, wrong)
    for w, b in zip(net.weights, before, strict=True):
        np.testing.assert_array_equal(w, b)


def test_convert_writes_weights_that_compute_the_reference_energy(tmp_path):
    values = ref.random_values(ref.ebm_spec(64, ch=8), seed=5)
    prefix = str(tmp_path / "ebm")
    ref.write(values, prefix, root="layer_with_weights-0")
    kwargs = dict(image_shape=(64, 64, 3), channel_width=8)
    out = str(tmp_path / "ebm.weights.h5")
    convert.convert("ebm_biggan", prefix, out, **kwargs)
    net = networks.build("ebm_biggan", **kwargs)
    net.load_weights(out)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        net(x), ref.ebm_forward(values, x, 64), rtol=2e-4, atol=1e-5
    )
    with pytest.raises(errors.ConfigError, match="does not fit"):
        convert.convert(
            "ebm_biggan",
            prefix,
            str(tmp_path / "e.weights.h5"),
            channel_width=16,
            image_shape=(64, 64, 3),
        )


def test_latent_is_truncated_and_picks_a_uniform_class():
    gen = biggan.BigGANDeepGenerator(
        128, channel_width=8, num_classes=10, truncation=0.5
    )
    latent = gen.sample_latent((4000, 129), tf.constant([7, 7])).numpy()
    z, u = latent[:, :128], latent[:, 128]
    assert np.abs(z).max() <= 2 * 0.5 and 0.35 < z.std() < 0.45  # 0.5 x 0.88
    counts = np.bincount(gen.classes(latent).numpy(), minlength=10)
    assert counts.min() > 330 and counts.max() < 470  # 400 each
    np.testing.assert_array_equal(gen.classes(latent), np.floor(u * 10))
    again = gen.sample_latent((4000, 129), tf.constant([7, 7]))
    np.testing.assert_array_equal(again, latent)


@pytest.mark.parametrize(
    "truncation, row",
    [
        (1.0, lambda r: r[50]),
        # A quarter of the way from row 20 to 21, weighted as the port
        # weights it: 0.25 on row 20, 0.75 on row 21.
        (0.405, lambda r: 0.25 * r[20] + 0.75 * r[21]),
        # 0.94 / 0.02 = 46.99999999999999: (nearly) row 46, where 0.94 * 50
        # would read row 47.
        (0.94, lambda r: r[46]),
    ],
)
def test_batch_norm_statistics_follow_the_truncation(truncation, row):
    bn = biggan.BigGANBatchNorm(3, truncation=truncation, conditional=False)
    bn.build((None, 1, 1, 3))
    rows = np.arange(51 * 3, dtype="float32").reshape(51, 3)
    bn.mean.assign(rows)
    np.testing.assert_allclose(bn.statistics()[0], row(rows), atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="square images of size"):
        networks.build("ebm_biggan", image_shape=(96, 96, 3))
    with pytest.raises(ValueError, match="truncation"):
        networks.build("gen_biggan_deep128", truncation=0.0)
    with pytest.raises(ValueError, match="RGB"):
        networks.build("gen_biggan_deep128", image_shape=(64, 64, 1))
