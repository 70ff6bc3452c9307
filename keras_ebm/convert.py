"""Converts a TF checkpoint (the reference's layout) into Keras weights.

    python -m keras_ebm.convert --network=ebm_sngan32 \\
        --checkpoint=/ckpts/cifar10/ebm --output=ebm_sngan32.weights.h5
    python -m keras_ebm.convert --network=ebm_small \\
        --network_kwargs='{"width": 16}' --checkpoint=... --output=...

The network is built from the registry (`keras_ebm.networks.build(name,
**kwargs)`), every variable takes the checkpoint tensor of its layer path
(`networks.load_tf_checkpoint`: shapes checked, missing or ambiguous keys
refused before anything is assigned), and the weights are written where
`networks.build(name, **kwargs).load_weights(output)` reads them. An
existing output is never overwritten.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_ebm import errors, networks  # noqa: E402
from keras_ebm.cli import answers  # noqa: E402
from keras_ebm.runs import files

flags.DEFINE_string("network", None, "a registered network, e.g. ebm_sngan32")
flags.DEFINE_string("checkpoint", None, "TF checkpoint prefix (prefix.index)")
flags.DEFINE_string("output", None, "the Keras weights file, <name>.weights.h5")
flags.DEFINE_string("network_kwargs", "{}", "JSON of the network's arguments")


def convert(name, checkpoint, output, **kwargs):
    """Writes the weights of checkpoint `checkpoint` for network `name` to
    `output` (`.weights.h5`); returns the built network."""
    if not output.endswith(".weights.h5"):
        raise errors.ConfigError(f"--output={output}: must end in .weights.h5")
    if os.path.exists(output):
        raise errors.ConfigError(
            f"--output={output} exists; remove it or choose another name"
        )
    if name not in networks.NAMES:
        raise errors.ConfigError(
            f"--network={name}: unknown; known: {', '.join(networks.NAMES)}"
        )
    net = networks.build(name, **kwargs)
    try:
        networks.load_tf_checkpoint(net, checkpoint)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    # Written under a temporary name with the same suffix (Keras wants it),
    # then renamed: a failed write leaves no half file.
    tmp = files.write_temp(output, net.save_weights)
    files.commit(tmp, output)
    return net


def main(argv):
    with answers.one_line_errors():
        if len(argv) > 1:
            raise errors.ConfigError(f"unexpected arguments {' '.join(argv[1:])}")
        f = flags.FLAGS
        for name in ("network", "checkpoint", "output"):
            if not f[name].value:
                raise errors.ConfigError(f"--{name} is required")
        try:
            kwargs = json.loads(f.network_kwargs)
        except json.JSONDecodeError as e:
            raise errors.ConfigError(f"--network_kwargs: not JSON ({e})") from None
        convert(f.network, f.checkpoint, f.output, **kwargs)
        print(f"{f.network} weights of {f.checkpoint} written to {f.output}")


if __name__ == "__main__":
    app.run(main)
