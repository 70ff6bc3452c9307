"""The real tfds path on a small stand-in: a CIFAR-10 in the original binary
format, prepared by tfds' own cifar10 builder (only the download is
replaced), then read and trained on as `--dataset=cifar10`."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_ebm import data, run
from keras_ebm.configs import shortrun

# Whole runs, subprocesses and exports: seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    extracted = root / "extracted" / "cifar-10-batches-bin"
    extracted.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in files:
        records = [
            np.concatenate([[label], rng.integers(0, 256, 3072)]).astype("uint8")
            for label in range(10)
        ]
        (extracted / name).write_bytes(np.concatenate(records).tobytes())
    (extracted / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)))

    monkey = pytest.MonkeyPatch()
    monkey.setattr(
        tfds.download.DownloadManager,
        "download_and_extract",
        lambda self, url: str(root / "extracted"),
    )
    try:
        tfds.builder("cifar10", data_dir=str(root / "tfds")).download_and_prepare()
    finally:
        monkey.undo()
    return str(root / "tfds")


def test_prepared_cifar10_reads_in_unit_range(cifar_dir):
    images = np.stack(list(data.tfds_images("cifar10", data_dir=cifar_dir)))
    assert images.shape == (50, 32, 32, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.99 and images.max() > 0.99


def test_train_on_cifar10_flag_path(cifar_dir, tmp_path):
    config = shortrun.get_config("cifar10")
    config.data.data_dir = cifar_dir
    config.model.update(ebm="ebm_small", generator="gen_small", latent_dim=8)
    config.model.ebm_kwargs = dict(width=4)
    config.model.generator_kwargs = dict(width=8)
    config.langevin.num_steps = 2
    config.bank.size = 16
    config.train.update(
        num_steps=2, batch_size=8, log_every=2, image_every=2, checkpoint_every=2
    )
    model = run.train(config, str(tmp_path))
    assert model.bank.states.shape == (16, 32, 32, 3)
    assert int(model.ebm_optimizer.iterations) == 2


def test_classifier_regime_on_cifar10(cifar_dir, tmp_path):
    from keras_ebm.configs import classifier as clf_configs

    config = clf_configs.get_config("cifar10")
    config.data.data_dir = cifar_dir
    config.classifier.update(epochs=1, batch_size=10)
    # The WRN is too big for CI; the digits CNN takes no weight decay.
    config.classifier.update(network="clf_digits", weight_decay=0.0)
    model = run.train(config, str(tmp_path))
    assert model(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 10)
    assert (tmp_path / "results.json").exists()
