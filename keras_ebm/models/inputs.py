"""What a user hands an `EnergyModel`, checked before it fails deep in a
traced step or silently: the network's state shape, a bank that keeps the
generator's latents, filled banks, and data in whole batches of the banks'
batch size. Each check raises a `ValueError` that says what to do."""

import tensorflow as tf


def state_shape_of(net):
    """The shape of one state: `net.image_shape`, else its input shape."""
    shape = getattr(net, "image_shape", None)
    if shape is None:
        try:
            shape = net.input_shape[1:]
        except (AttributeError, ValueError):
            shape = None
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            "the energy network needs a fixed input shape: build it with "
            "keras.Input(shape) (e.g. keras.Sequential([keras.Input((2,)), "
            "...])) or give it an `image_shape` attribute"
        )
    return tuple(shape)


def check_bank_latents(bank, generator, init_source):
    """Refuses a bank whose latent width is not the generator's when the
    generator rejuvenates it: each state's latent is kept beside it for
    the generator's update (a bank without latents failed inside the
    traced step with `AttributeError: 'NoneType' object has no attribute
    'value'`)."""
    if bank is None or generator is None or init_source != "generator":
        return
    width = generator.latent_dim
    if bank.latent_dim != width:
        raise ValueError(
            f"the bank keeps latents of width {bank.latent_dim} but the "
            f"generator takes {width}: build the SampleBank with "
            f"latent_dim={width} (generator.latent_dim)"
        )


def check_banks_filled(banks, init_source):
    """Refuses a bank of all zeros (`initialize_bank` never called)."""
    for name, bank in banks.items():
        if not bool(tf.reduce_any(tf.not_equal(bank.states, 0.0))):
            data = " with the data, e.g. model.initialize_bank(x_train)"
            raise ValueError(
                f"the {name} holds no states yet (all zeros): call "
                f"model.initialize_bank()"
                f"{data if init_source == 'data' else ''} before fit"
            )


def check_batches(x, batch_size=None, bank=None):
    """Refuses data whose batches are partial or of another size than
    `bank` draws: a `tf.data.Dataset` must be batched with
    `drop_remainder=True`, an array must split into `batch_size` batches."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        spec = spec["x"] if isinstance(spec, dict) else spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        size = spec.shape[0] if spec.shape.rank else None
        if size is None:
            raise ValueError(
                "the dataset's batch size is not fixed (a last, partial "
                "batch): batch it with "
                "dataset.batch(batch_size, drop_remainder=True)"
            )
    elif hasattr(x, "shape") and not isinstance(x, dict):
        size = batch_size or 32  # Keras' default
        if x.shape[0] % size:
            raise ValueError(
                f"{x.shape[0]} examples do not split into batches of "
                f"{size}; drop the last {x.shape[0] % size} or pass a "
                "tf.data.Dataset batched with drop_remainder=True"
            )
    else:
        return
    if bank is not None and size != bank.batch_size:
        raise ValueError(
            f"batches of {size} but the bank draws {bank.batch_size} states "
            f"per step: batch the data by {bank.batch_size} or build the "
            f"SampleBank with batch_size={size}"
        )
