"""Loading weights into registered networks from files on disk.

Weights are never downloaded: paths name local files. Two formats:
Keras `.weights.h5` files (what keras_ebm writes) and TF object-based
checkpoints (`prefix.index` + `prefix.data-*`) as written by the reference's
`save_weights` and the `tf2-model-clones` notebooks. Keras 3 cannot
`load_weights` the latter, so their tensors are read by key and assigned.
"""

import os

import tensorflow as tf

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def load_weights(net, path):
    """Loads `path` (`.weights.h5` or a TF checkpoint prefix) into `net`."""
    if path.endswith(".weights.h5"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"weights file {path!r} does not exist")
        net.load_weights(path)
    else:
        load_tf_checkpoint(net, path)


def load_tf_checkpoint(net, prefix):
    """Assigns a TF checkpoint's tensors to `net` by layer-path key.

    A variable with path `<model>/block2/bn_1/gamma` takes the checkpoint
    tensor whose key ends in `block2/bn_1/gamma/.ATTRIBUTES/VARIABLE_VALUE`
    (EBM keys carry a `layer_with_weights-0/` prefix, generator keys none;
    reference-implementation.md §2). Every variable must find exactly one
    tensor of its shape, or nothing is assigned.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(
            f"no TF checkpoint at {prefix!r} (expected {prefix}.index)"
        )
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map() if k.endswith(_SUFFIX)]
    plan, problems = [], []
    for var in net.weights:
        name = var.path.split("/", 1)[1]
        found = [
            k for k in keys if k == name + _SUFFIX or k.endswith("/" + name + _SUFFIX)
        ]
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} matching keys")
            continue
        value = reader.get_tensor(found[0])
        if tuple(value.shape) != tuple(var.shape):
            problems.append(f"{name}: shape {value.shape} != {tuple(var.shape)}")
            continue
        plan.append((var, value))
    if problems:
        raise ValueError(
            f"checkpoint {prefix!r} does not fit {net.name}: " + "; ".join(problems)
        )
    for var, value in plan:
        var.assign(value)
