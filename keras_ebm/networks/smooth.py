"""Smooth twins of ReLU networks, for surrogate gradients (Athalye, Carlini &
Wagner 2018: BPDA through a differentiable approximation).

A ReLU energy is piecewise linear: its Hessian is zero almost everywhere, so
the pathwise gradient through Langevin purification is straight-through,
while the gradient of the *expected* purified loss is not (the noise smooths
the drift's jumps into a contraction). The twin computes the same network,
same weights, with every ReLU replaced by

`relu_beta(z) = softplus(beta z) / beta`,

which tends to relu as beta grows (`0 <= relu_beta - relu <= log(2) / beta`)
and whose second derivative `beta sigmoid'(beta z)` spreads each kink over a
width ~1/beta. LeakyReLU(a) becomes `a z + (1 - a) relu_beta(z)`.

The swap happens while the twin is traced (activations are Python attributes
read at call time): `with smooth_relu(nets, beta): net(x)`. Networks opt in
by holding their activations as attributes (`act`, `activation`) - Dense and
Conv layers, `keras.layers.ReLU` / `LeakyReLU` layers, and keras_ebm's EBMs.
"""

import contextlib

import keras
from keras import ops

_ATTRIBUTES = ("act", "activation")
_RELUS = (keras.activations.relu, keras.ops.relu)


def relu_beta(beta):
    """`z -> softplus(beta z) / beta`."""
    beta = float(beta)

    def act(z):
        return ops.softplus(beta * z) / beta

    return act


def _leaky(slope, beta):
    smooth = relu_beta(beta)

    def act(z):
        return slope * z + (1.0 - slope) * smooth(z)

    return act


def _smooth_version(value, beta):
    """The smooth replacement of an activation attribute, or None when it
    is not a ReLU."""
    if any(value is r for r in _RELUS):
        return relu_beta(beta)
    if isinstance(value, keras.layers.LeakyReLU):
        return _leaky(float(value.negative_slope), beta)
    if isinstance(value, keras.layers.ReLU):
        if value.max_value is not None or value.threshold != 0:
            raise ValueError(f"no smooth twin for a clipped or shifted ReLU {value}")
        return _leaky(float(value.negative_slope), beta)
    return None


def relu_sites(nets):
    """`[(layer, attribute, activation)]` of every ReLU held as an
    attribute by `nets` or their sublayers."""
    sites = []
    seen = set()
    for net in nets:
        for layer in [net, *net._flatten_layers(include_self=False)]:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            for name in _ATTRIBUTES:
                value = layer.__dict__.get(name)
                if value is not None and _smooth_version(value, 1.0) is not None:
                    sites.append((layer, name, value))
    return sites


@contextlib.contextmanager
def smooth_relu(nets, beta):
    """Inside, every ReLU of `nets` computes `relu_beta` (same weights).

    Yields the number of activations swapped (0: nothing to smooth, the
    twin is the network itself). `beta` must be positive.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    sites = relu_sites(nets)
    try:
        for layer, name, value in sites:
            # Plain attribute writes: Keras' tracker must not record the
            # replacement (nor drop the original layer) as a sublayer.
            object.__setattr__(layer, name, _smooth_version(value, beta))
        yield len(sites)
    finally:
        for layer, name, value in sites:
            object.__setattr__(layer, name, value)
