"""SNGAN blocks against a NumPy forward written from the reference's
description (reference-implementation.md §2.1, §2.2), and the reference
checkpoint keys taken literally from that document."""

import numpy as np

from keras_ebm import networks
from keras_ebm.networks.sngan import EBMBlock, GenBlock

RNG = np.random.default_rng(0)


def conv(x, kernel, bias):
    """'SAME' stride-1 convolution, NHWC x HWIO, by explicit sums."""
    kh, kw = kernel.shape[:2]
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:1] + (h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,cd->bhwd", xp[:, i : i + h, j : j + w], kernel[i, j])
    return out + bias


def avgpool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def relu(x):
    return np.maximum(x, 0.0)


def upsample(x):
    """2x bilinear, half-pixel centres (torch align_corners=False)."""

    def axis_weights(n):
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo

    lo, hi, f = axis_weights(x.shape[1])
    x = x[:, lo] * (1 - f)[None, :, None, None] + x[:, hi] * f[None, :, None, None]
    lo, hi, f = axis_weights(x.shape[2])
    return (
        x[:, :, lo] * (1 - f)[None, None, :, None]
        + x[:, :, hi] * f[None, None, :, None]
    )


def randomize(layer):
    values = {}
    for v in layer.weights:
        value = RNG.normal(size=v.shape).astype("float32")
        if "variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value)
        values["/".join(v.path.split("/")[-2:])] = value.astype("float64")
    return values


def test_ebm_stem_block():
    block = EBMBlock(3, 5, True, stem=True, name="conv_1")
    x = RNG.normal(size=(2, 8, 8, 3)).astype("float32")
    block(x)
    p = randomize(block)
    h = conv(
        relu(conv(x, p["conv_1/kernel"], p["conv_1/bias"])),
        p["conv_2/kernel"],
        p["conv_2/bias"],
    )
    want = avgpool(h) + conv(avgpool(x), p["sc/kernel"], p["sc/bias"])
    np.testing.assert_allclose(block(x).numpy(), want, rtol=1e-4, atol=1e-4)


def test_ebm_down_block():
    block = EBMBlock(3, 5, True, name="block2")
    x = RNG.normal(size=(2, 8, 8, 3)).astype("float32")
    block(x)
    p = randomize(block)
    h = conv(relu(x), p["conv_1/kernel"], p["conv_1/bias"])
    h = conv(relu(h), p["conv_2/kernel"], p["conv_2/bias"])
    want = avgpool(h) + avgpool(conv(x, p["sc/kernel"], p["sc/bias"]))
    np.testing.assert_allclose(block(x).numpy(), want, rtol=1e-4, atol=1e-4)


def test_ebm_plain_block_has_identity_shortcut():
    block = EBMBlock(4, 4, False, name="block3")
    x = RNG.normal(size=(2, 4, 4, 4)).astype("float32")
    block(x)
    assert block.sc is None
    p = randomize(block)
    h = conv(relu(x), p["conv_1/kernel"], p["conv_1/bias"])
    want = x + conv(relu(h), p["conv_2/kernel"], p["conv_2/bias"])
    np.testing.assert_allclose(block(x).numpy(), want, rtol=1e-4, atol=1e-4)


def test_generator_block_in_inference_mode():
    eps = 1e-3
    block = GenBlock(5, eps, False, name="block2")
    x = RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    block(x)
    p = randomize(block)

    def bn(v, name):
        mean, var = p[f"{name}/moving_mean"], p[f"{name}/moving_variance"]
        return (v - mean) / np.sqrt(var + eps) * p[f"{name}/gamma"] + p[f"{name}/beta"]

    h = upsample(relu(bn(x, "bn_1")))
    h = relu(bn(conv(h, p["conv_1/kernel"], p["conv_1/bias"]), "bn_2"))
    want = conv(h, p["conv_2/kernel"], p["conv_2/bias"]) + conv(
        upsample(x), p["sc/kernel"], p["sc/bias"]
    )
    got = block(x, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# reference-implementation.md §2.1 / §2.2, copied as written there.
EBM_SNGAN32_KEYS = {
    "conv_1/conv_1/kernel": [3, 3, 3, 256],
    "conv_1/conv_2/kernel": [3, 3, 256, 256],
    "conv_1/sc/kernel": [1, 1, 3, 256],
    "block2/conv_1/kernel": [3, 3, 256, 256],
    "block2/conv_2/kernel": [3, 3, 256, 256],
    "block2/sc/kernel": [1, 1, 256, 256],
    "block3/conv_1/kernel": [3, 3, 256, 256],
    "block3/conv_2/kernel": [3, 3, 256, 256],
    "block4/conv_1/kernel": [3, 3, 256, 256],
    "block4/conv_2/kernel": [3, 3, 256, 256],
    "lin_5/kernel": [256, 1],
}
GEN_SNGAN32_KEYS = {
    "lin_1/kernel": [128, 4096],
    "block2/bn_1/gamma": None,
    "block2/bn_1/beta": None,
    "block2/bn_1/moving_mean": None,
    "block2/bn_1/moving_variance": None,
    "block2/conv_1/kernel": None,
    "block2/sc/kernel": None,
    "bn_5/gamma": None,
    "conv_5/kernel": [3, 3, 256, 3],
}


def _keyed(net):
    """Variables by checkpoint key (the path without the model's name)."""
    return {v.path.split("/", 1)[1]: tuple(v.shape) for v in net.weights}


def test_ebm_sngan32_has_the_reference_keys_and_shapes():
    keys = _keyed(networks.build("ebm_sngan32"))
    for key, shape in EBM_SNGAN32_KEYS.items():
        assert key in keys, key
        assert keys[key] == tuple(shape), key
        bias = key.replace("/kernel", "/bias")
        if not key.startswith("lin_"):
            assert bias in keys, bias  # "with biases beside each conv"
    # block3 and block4 have no shortcut convolution; the head has no bias.
    assert not any(k.startswith(("block3/sc", "block4/sc")) for k in keys)
    assert "lin_5/bias" not in keys
    # Nothing beyond the listed kernels and their biases.
    assert len(keys) == 2 * len(EBM_SNGAN32_KEYS) - 1


def test_gen_sngan32_has_the_reference_keys_and_shapes():
    keys = _keyed(networks.build("gen_sngan32"))
    for key, shape in GEN_SNGAN32_KEYS.items():
        assert key in keys, key
        if shape is not None:
            assert keys[key] == tuple(shape), key
