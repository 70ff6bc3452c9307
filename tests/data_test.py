"""Input pipelines on offline data and small stand-ins."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import data


def test_digits():
    images, labels = data.load_digits(16)
    assert images.shape == (1797, 16, 16, 1)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.9
    assert sorted(set(labels.tolist())) == list(range(10))
    native, _ = data.load_digits(8)
    assert native.shape == (1797, 8, 8, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name, radius", [("gmm", 1.0), ("rings", 2.5)])
def test_toy2d_density_normalizes_and_matches_samples(name, radius):
    # The exact density integrates to 1 on a fine grid ...
    lim = 1.6 if name == "gmm" else 4.6
    grid = np.linspace(-lim, lim, 400)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], 1)
    density = np.exp(data.toy2d_log_density(name, points).numpy())
    mass = density.sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass - 1.0) < 0.01
    # ... and the samples come from it: mean radius and log-likelihood.
    samples = data.toy2d_sample(name, 20000, seed=1)
    assert abs(np.linalg.norm(samples, axis=1).mean() - radius) < 0.03
    sample_ll = data.toy2d_log_density(name, samples).numpy().mean()
    grid_ll = (density * np.log(density + 1e-30)).sum() * (grid[1] - grid[0]) ** 2
    assert abs(sample_ll - grid_ll) < 0.05


def test_celeb_a_center_crop_and_antialiased_resize():
    image = tf.random.uniform((218, 178, 3), 0, 255)
    out = data.center_crop_resize(image, 178, 64)
    assert out.shape == (64, 64, 3)
    # A constant image stays constant through crop and antialiased resize.
    flat = data.center_crop_resize(tf.fill((218, 178, 3), 200.0), 178, 64)
    np.testing.assert_allclose(flat.numpy(), 200.0, rtol=1e-5)


def test_imagenet_resize_and_random_crop():
    out = data.resize_random_crop(tf.random.uniform((300, 500, 3)), 128)
    assert out.shape == (128, 128, 3)


def test_unit_range():
    x = data.to_unit_range(tf.constant([0, 255], tf.uint8))
    np.testing.assert_allclose(x.numpy(), [-1.0, 1.0])


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
    start = time.time()
    with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
        data.tfds_images("cifar10", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="manual"):
        data.tfds_images("imagenet2012", data_dir=str(tmp_path))
    assert time.time() - start < 30  # no download retries


def test_image_folder(tmp_path):
    import keras

    for i in range(5):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        pixels = np.full((20, 24, 3), 40 * i, "uint8")
        keras.utils.save_img(str(sub / f"{i}.png"), pixels, scale=False)
    ds = data.folder_images(str(tmp_path), 16)
    images = np.stack(list(ds.as_numpy_iterator()))
    assert images.shape == (5, 16, 16, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.folder_images(os.path.join(tmp_path, "missing"), 16)


def test_train_stream_shapes_and_second_stream():
    x = np.arange(40, dtype="float32").reshape(20, 2)
    batch = next(iter(data.train_stream(x, 8, seed=0)))
    assert batch.shape == (8, 2)
    pair = next(iter(data.train_stream(x, 8, seed=0, with_init=True)))
    assert set(pair) == {"x", "x_init"}
    assert not np.array_equal(pair["x"].numpy(), pair["x_init"].numpy())


@pytest.mark.parametrize("start", [0, 3, 5, 11])
def test_train_stream_position_is_a_function_of_the_step(start):
    # 20 examples, batch 8: 2 batches per epoch, so starts cross epochs.
    x = np.arange(40, dtype="float32").reshape(20, 2)
    whole = list(data.train_stream(x, 8, seed=3, with_init=True).take(16))
    resumed = data.train_stream(x, 8, seed=3, with_init=True, start_step=start)
    resumed = list(resumed.take(16 - start))
    for a, b in zip(whole[start:], resumed, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["x_init"], b["x_init"])
    # Each epoch is a permutation of distinct examples, and epochs differ.
    first = np.concatenate([whole[0]["x"], whole[1]["x"]])[:, 0]
    assert len(set(first.tolist())) == 16
    second = np.concatenate([whole[2]["x"], whole[3]["x"]])[:, 0]
    assert not np.array_equal(first, second)


def test_digits_classifier_split_is_disjoint_and_stratified():
    from keras_ebm import data as data_lib

    every, _ = data_lib.digits_split("train", 8)
    fit, fit_labels = data_lib.digits_split("classifier_train", 8)
    test, test_labels = data_lib.digits_split("test", 8)
    assert (len(every), len(fit), len(test)) == (1797, 1437, 360)
    rows = {r.tobytes() for r in fit}
    assert not any(r.tobytes() in rows for r in test if (every == r).all(1).sum() == 1)
    assert np.bincount(test_labels).min() >= 35  # every class held out
    with pytest.raises(ValueError, match="unknown digits split"):
        data_lib.digits_split("validation", 8)
