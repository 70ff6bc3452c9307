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


def _is_bookkeeping(key):
    """Keys of a checkpoint that are not a network's weights."""
    return (
        ".OPTIMIZER_SLOT" in key
        or key.startswith(("optimizer/", "save_counter/", "_CHECKPOINTABLE"))
        or not key.endswith(_SUFFIX)
    )


def load_tf_checkpoint(net, prefix):
    """Assigns a TF checkpoint's tensors to `net` by layer-path key.

    A variable with path `<model>/block2/bn_1/gamma` takes the checkpoint
    tensor whose key ends in `block2/bn_1/gamma/.ATTRIBUTES/VARIABLE_VALUE`
    (EBM keys carry a `layer_with_weights-0/` prefix, generator keys none;
    reference-implementation.md §2); a network with a `checkpoint_key(path)`
    method names its own keys (BigGAN: `layers_out/4/conv_0/w`). Every
    variable must find exactly one tensor of its shape, and every tensor
    must be used (but the network's `INERT_KEYS`, e.g. inert spectral-norm
    vectors, and optimizer state), or nothing is assigned.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(
            f"no TF checkpoint at {prefix!r} (expected {prefix}.index)"
        )
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map() if not _is_bookkeeping(k)]
    key_of = getattr(net, "checkpoint_key", lambda path: path)
    inert = getattr(net, "INERT_KEYS", ())
    plan, problems, used = [], [], set()
    for var in net.weights:
        name = key_of(var.path.split("/", 1)[1])
        found = [
            k for k in keys if k == name + _SUFFIX or k.endswith("/" + name + _SUFFIX)
        ]
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} matching keys")
            continue
        used.add(found[0])
        value = reader.get_tensor(found[0])
        if tuple(value.shape) != tuple(var.shape):
            problems.append(f"{name}: shape {value.shape} != {tuple(var.shape)}")
            continue
        plan.append((var, value))
    extra = sorted(
        k[: -len(_SUFFIX)]
        for k in keys
        if k not in used and k[: -len(_SUFFIX)].rpartition("/")[2] not in inert
    )
    if extra:
        shown = ", ".join(extra[:4]) + (
            f" and {len(extra) - 4} more" if len(extra) > 4 else ""
        )
        problems.append(f"{len(extra)} keys this network does not have: {shown}")
    if problems:
        raise ValueError(
            f"checkpoint {prefix!r} does not fit {net.name}: " + "; ".join(problems)
        )
    for var, value in plan:
        var.assign(value)
