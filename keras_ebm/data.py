"""Input pipelines: tfds datasets, image folders, and two offline datasets.

All images are float32 NHWC in [-1, 1] (`2 * (u8 / 255) - 1`, as the
reference). `digits` (scikit-learn's bundled handwritten digits) and `toy2d`
(8-Gaussian mixture and rings, with exact densities) need no network, so the
demo, the tests and CI run anywhere.
"""

import math
import os

import numpy as np
import tensorflow as tf

from keras_ebm.errors import ConfigError, DatasetNotFoundError  # noqa: F401

TOY_DENSITIES = ("gmm", "rings")
TFDS_DATASETS = {"cifar10": 32, "celeb_a": 64, "imagenet2012": 128}
OFFLINE_DATASETS = ("digits", "toy2d")
NAMES = tuple(TFDS_DATASETS) + OFFLINE_DATASETS + ("folder",)
SHUFFLE_BUFFER = 2500  # the reference's


# === Offline datasets ===


def load_digits(image_size=16):
    """scikit-learn's 1,797 handwritten 8x8 digits as `(images, labels)`.

    Values 0..16 map to [-1, 1]; `image_size` > 8 resizes bilinearly
    (`resize_digits`).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.astype("float32")[..., None] / 16.0 * 2.0 - 1.0
    if image_size != 8:
        images = resize_digits(images, image_size).numpy()
    return images, bunch.target.astype("int32")


def resize_digits(images, image_size):
    """Bilinear resize to `image_size`: how the 8x8 digits become larger
    images. Samples of an 8x8 model resized by it live where the larger
    real images do, so a classifier trained at 16x16 is one yardstick for
    both. (Bilinear weights are convex: values stay in the input's range.)"""
    return tf.image.resize(images, (image_size, image_size))


DIGITS_TEST_FRACTION = 0.2


def digits_split(split, image_size=16, test_fraction=DIGITS_TEST_FRACTION):
    """`(images, labels)` of a digits split.

    scikit-learn ships no split: `train` is all 1,797 images (the demo's
    data, as before), `classifier_train` and `test` the stratified 80/20
    split the digits classifier trains and is tested on (seed 0), so a
    model that must not see the test images (the midrun defense) trains on
    `classifier_train`.
    """
    images, labels = load_digits(image_size)
    if split == "train":
        return images, labels
    if split not in ("classifier_train", "test"):
        raise ValueError(
            f"unknown digits split {split!r}; use train (all 1,797), "
            "classifier_train or test"
        )
    from sklearn.model_selection import train_test_split

    parts = train_test_split(
        images, labels, test_size=test_fraction, random_state=0, stratify=labels
    )
    return (parts[0], parts[2]) if split == "classifier_train" else (parts[1], parts[3])


def toy2d_sample(name, num, seed=0, sigma=0.15):
    """Samples of the reference toy densities (`ebm-anatomy` ToyDataset).

    `gmm`: 8 isotropic Gaussians, means on the unit circle, std `sigma`.
    `rings`: radii 1..4, radial std `sigma`, uniform angle, equal mass.
    """
    rng = np.random.default_rng(seed)
    if name == "gmm":
        angles = 2 * np.pi * rng.integers(0, 8, num) / 8
        means = np.stack([np.cos(angles), np.sin(angles)], 1)
        return (means + sigma * rng.standard_normal((num, 2))).astype("float32")
    if name == "rings":
        radius = rng.integers(1, 5, num) + sigma * rng.standard_normal(num)
        theta = rng.uniform(0, 2 * np.pi, num)
        xy = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
        return xy.astype("float32")
    raise ValueError(f"unknown toy density {name!r}; use 'gmm' or 'rings'")


def toy2d_log_density(name, xy, sigma=0.15):
    """Exact log-density of the toy data at points `xy` `[N, 2]`.

    gmm: a `tfp` mixture of 8 diagonal Gaussians. rings: the reference's
    `mean_k N(r; k, sigma^2) / (2 pi k)`, k = 1..4 (each ring's radial law
    spread over the circle of radius k).
    """
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    xy = tf.convert_to_tensor(xy, tf.float32)
    if name == "gmm":
        angles = 2 * np.pi * np.arange(8) / 8
        means = np.stack([np.cos(angles), np.sin(angles)], 1).astype("float32")
        mix = tfd.MixtureSameFamily(
            tfd.Categorical(logits=tf.zeros(8)),
            tfd.MultivariateNormalDiag(means, tf.fill((8, 2), sigma)),
        )
        return mix.log_prob(xy)
    if name == "rings":
        radius = tf.norm(xy, axis=1)[:, None]
        k = tf.range(1.0, 5.0)[None, :]
        log_ring = tfd.Normal(k, sigma).log_prob(radius) - tf.math.log(2 * math.pi * k)
        return tf.reduce_logsumexp(log_ring, axis=1) - math.log(4.0)
    raise ValueError(f"unknown toy density {name!r}; use 'gmm' or 'rings'")


# === tfds datasets ===


def to_unit_range(image):
    """uint8 `[0, 255]` -> float32 `[-1, 1]`."""
    return 2.0 * (tf.cast(image, tf.float32) / 255.0) - 1.0


def center_crop_resize(image, crop, size):
    """CelebA: centre `crop x crop`, then antialiased resize to `size`."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (h - crop) // 2, (w - crop) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return tf.image.resize(image, (size, size), antialias=True)


def center_square_resize(image, size):
    """ImageNet evaluation: the centre square of the short side, resized
    (antialiased) to `size`, as the reference's non-training images."""
    return center_crop_resize(
        image, tf.minimum(tf.shape(image)[0], tf.shape(image)[1]), size
    )


def resize_random_crop(image, size, seed=None):
    """ImageNet: resize the short side to `size`, random-crop the long side."""
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    scale = size / tf.minimum(h, w)
    new = tf.cast(tf.math.ceil(tf.stack([h * scale, w * scale])), tf.int32)
    image = tf.image.resize(image, tf.maximum(new, size), antialias=True)
    channels = image.shape[-1] or 3
    return tf.image.random_crop(image, (size, size, channels), seed=seed)


def _preprocess(name, image_size, split="train"):
    def fn(example):
        image = tf.cast(example["image"], tf.float32)
        if name == "celeb_a":
            image = center_crop_resize(image, 178, image_size)
        elif name == "imagenet2012" and split == "train":
            image = resize_random_crop(image, image_size)
        elif name == "imagenet2012":  # evaluation images are not random
            image = center_square_resize(image, image_size)
        elif image.shape[0] != image_size:
            image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return to_unit_range(image)

    return fn


def tfds_images(
    name, split="train", data_dir=None, image_size=None, manual_dir=None, seed=0
):
    """A tfds dataset of images in [-1, 1] (unbatched, not repeated).

    The file order is shuffled once with `seed` and kept for every pass, so
    that each pass reads the same sequence and `train_stream` (which
    reshuffles elements per epoch) is a function of the step.

    Raises:
        DatasetNotFoundError: if the dataset is not prepared in `data_dir`;
            the message names the command that prepares it. (Offline, tfds
            would otherwise retry its download for minutes.)
    """
    import tensorflow_datasets as tfds

    image_size = image_size or TFDS_DATASETS[name]
    builder = _prepared_builder(name, data_dir, manual_dir)
    read_config = tfds.ReadConfig(
        shuffle_seed=seed, shuffle_reshuffle_each_iteration=False
    )
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
    return ds.map(
        _preprocess(name, image_size, split), num_parallel_calls=tf.data.AUTOTUNE
    )


def _prepared_builder(name, data_dir, manual_dir=None):
    """The tfds builder of `name`, prepared: from `manual_dir`'s archives
    when given (ImageNet's `ILSVRC2012_img_{train,val}.tar`, by tfds' own
    builder, once), else it must be prepared already."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not _is_prepared(builder) and manual_dir:
        if not os.path.isdir(manual_dir):
            raise DatasetNotFoundError(
                f"--config.data.manual_dir={manual_dir} is not a folder"
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    if not _is_prepared(builder):
        raise DatasetNotFoundError(_how_to_get(name, builder.data_dir, manual_dir))
    return builder


def _is_prepared(builder):
    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _how_to_get(name, data_dir, manual_dir):
    where = f"--config.data.data_dir={os.path.dirname(os.path.dirname(data_dir))}"
    if name == "imagenet2012":
        return (
            f"ImageNet is not prepared under {data_dir}. Download "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            "image-net.org into a manual dir, then run `tfds build "
            "imagenet2012 --manual_dir=<dir>` (or pass "
            f"--config.data.manual_dir), and train with {where}"
        )
    return (
        f"{name} is not prepared under {data_dir}. On a machine with network "
        f"run `tfds build {name}` (or "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"`), "
        f"copy ~/tensorflow_datasets to this machine and pass {where}"
    )


def folder_images(path, image_size, channels=3):
    """Images under `path` (any depth of subfolders), resized, in [-1, 1]."""
    import keras

    if not os.path.isdir(path):
        raise DatasetNotFoundError(
            f"image folder {path!r} does not exist; set --config.data.path"
        )
    formats = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
    found = any(
        name.lower().endswith(formats)
        for _, _, names in os.walk(path)
        for name in names
    )
    if not found:
        raise DatasetNotFoundError(
            f"no images in folder {path!r} or its subfolders (looked for "
            f"{', '.join(formats)}); set --config.data.path to a folder of images"
        )
    ds = keras.utils.image_dataset_from_directory(
        path,
        labels=None,
        color_mode="rgb" if channels == 3 else "grayscale",
        image_size=(image_size, image_size),
        batch_size=None,
        shuffle=False,
        verbose=False,
    )
    return ds.map(to_unit_range)


def labeled(config, split, indices=None):
    """`(images, labels)` arrays of a split, for classifiers.

    digits: a stratified held-out split (`classifier.test_fraction`) of the
    1,797 images; tfds datasets: their own splits (`train`, `test`,
    `validation`). `indices`: only these examples, in this order, read
    without holding the others (ImageNet's validation split is 30 GB as
    float arrays at 224).
    """
    name = config.data.name
    if name == "digits":
        classifier = config.get("classifier") or {}
        fraction = classifier.get("test_fraction", DIGITS_TEST_FRACTION)
        split = {"train": "classifier_train"}.get(split, split)
        images, labels = digits_split(split, config.data.image_size, fraction)
        if indices is None:
            return images, labels
        return images[indices], labels[indices]
    if name not in TFDS_DATASETS:
        raise ValueError(f"no labeled splits for dataset {name!r}")
    builder = _prepared_builder(
        name, config.data.data_dir or None, config.data.get("manual_dir") or None
    )
    ds = builder.as_dataset(split=split).enumerate()
    if indices is not None:
        wanted = tf.constant(np.unique(indices), tf.int64)
        ds = ds.filter(lambda i, ex: tf.reduce_any(tf.equal(i, wanted)))
    pre = _preprocess(name, config.data.image_size, split)
    ds = ds.map(
        lambda i, ex: (i, pre(ex), ex["label"]), num_parallel_calls=tf.data.AUTOTUNE
    )
    found = {int(i): (x, y) for i, x, y in ds.as_numpy_iterator()}
    order = sorted(found) if indices is None else [int(i) for i in indices]
    return (
        np.stack([found[i][0] for i in order]),
        np.asarray([found[i][1] for i in order], "int32"),
    )


def num_labeled(config, split):
    """Number of examples of a labeled split (see `labeled`)."""
    if config.data.name == "digits":
        return len(labeled(config, split)[1])
    builder = _prepared_builder(
        config.data.name,
        config.data.data_dir or None,
        config.data.get("manual_dir") or None,
    )
    return builder.info.splits[split].num_examples


def augment(image, pad=4):
    """Pad 4 + random crop + random horizontal flip (WRN training)."""
    size = image.shape[0]
    image = tf.image.resize_with_crop_or_pad(image, size + 2 * pad, size + 2 * pad)
    image = tf.image.random_crop(image, tf.shape(image) - [2 * pad, 2 * pad, 0])
    return tf.image.random_flip_left_right(image)


# === The training stream ===


def images(config):
    """Unbatched images of `config.data` as a tf.data.Dataset or array."""
    name = config.data.name
    if name == "digits":
        return digits_split(config.data.split, config.data.image_size)[0]
    if name == "toy2d":
        return toy2d_sample(config.data.toy, config.data.num_examples, config.seed)
    if name == "folder":
        return folder_images(
            config.data.path, config.data.image_size, config.data.channels
        )
    return tfds_images(
        name,
        config.data.split,
        config.data.data_dir or None,
        config.data.image_size,
        config.data.manual_dir or None,
        seed=config.seed,
    )


def num_examples(source):
    """Number of elements of an array or a finite tf.data dataset."""
    if not isinstance(source, tf.data.Dataset):
        return len(source)
    n = int(source.cardinality())
    if n >= 0:
        return n
    return int(source.reduce(0, lambda count, _: count + 1))  # one pass


def train_stream(source, batch_size, seed=0, with_init=False, start_step=0):
    """Shuffled, repeated, batched stream (`drop_remainder`, static shapes).

    Batch t of the stream is a function of `(seed, t)` alone: epoch e is the
    source shuffled with a seed derived from `(seed, e)` (buffer
    `SHUFFLE_BUFFER`, as the reference) and cut into `floor(N / B)` batches,
    so the stream of a run resumed at step t is the uninterrupted stream from
    batch t on. A resume reads at most one epoch to reach its position
    (the reference's stream restarts at its first batch instead).

    With `with_init`, elements are `{"x": batch, "x_init": batch}` where
    `x_init` comes from a second, independently shuffled pass, the reference's
    second iterator for data rejuvenation.
    """
    if not isinstance(source, tf.data.Dataset):
        source = tf.data.Dataset.from_tensor_slices(source)
    steps_per_epoch = num_examples(source) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"the dataset has fewer examples than one batch of {batch_size}"
        )
    first_epoch, offset = divmod(start_step, steps_per_epoch)

    def stream(index):
        def epoch(e):
            epoch_seed = (seed * 2 + index) * 1_000_003 + e
            ds = source.shuffle(
                SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False
            )
            return ds.batch(batch_size, drop_remainder=True)

        epochs = tf.data.Dataset.range(first_epoch, tf.int64.max)
        return epochs.flat_map(epoch).skip(offset)

    ds = stream(0)
    if with_init:
        ds = tf.data.Dataset.zip(stream(0), stream(1)).map(
            lambda x, x_init: {"x": x, "x_init": x_init}
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def take_array(source, num):
    """The first `num` elements of a dataset or array as a NumPy array."""
    if isinstance(source, tf.data.Dataset):
        return np.stack([x.numpy() for x in source.take(num)])
    return np.asarray(source[:num])
