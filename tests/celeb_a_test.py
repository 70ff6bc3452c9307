"""CelebA through tfds' own `celeb_a` builder on a small stand-in (only the
download is replaced): missing data stops with instructions; the prior and
longrun regimes train on the prepared stand-in."""

import io
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_ebm import data, run
from keras_ebm.configs import longrun, prior

pytestmark = pytest.mark.slow

NUM = 12  # 8 train, 2 validation, 2 test


@pytest.fixture(scope="module")
def celeb_a_dir(tmp_path_factory):
    from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as cb

    root = tmp_path_factory.mktemp("celeb_a")
    names = [f"{i:06d}.jpg" for i in range(1, NUM + 1)]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as z:
        for name in names:
            pixels = rng.integers(0, 256, (218, 178, 3)).astype("uint8")
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG")
            z.writestr(f"img_align_celeba/{name}", buffer.getvalue())
    split = [0] * 8 + [1] * 2 + [2] * 2
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, split, strict=True))
    )

    def table(headings, value):
        rows = "".join(f"{n} {' '.join([str(value)] * len(headings))}\n" for n in names)
        return f"{NUM}\n{' '.join(headings)}\n{rows}"

    (root / "list_attr_celeba.txt").write_text(table(cb.ATTR_HEADINGS, 1))
    (root / "landmarks.txt").write_text(table(cb.LANDMARK_HEADINGS, 50))
    (root / "identity.txt").write_text("".join(f"{n} 7\n" for n in names))
    files = {
        "img_align_celeba": root / "img_align_celeba.zip",
        "list_eval_partition": root / "list_eval_partition.txt",
        "list_attr_celeba": root / "list_attr_celeba.txt",
        "landmarks_celeba": root / "landmarks.txt",
        "identity_celeba": root / "identity.txt",
    }
    monkey = pytest.MonkeyPatch()
    monkey.setattr(
        tfds.download.DownloadManager,
        "download",
        lambda self, urls: {k: str(files[k]) for k in urls},
    )
    try:
        tfds.builder("celeb_a", data_dir=str(root / "tfds")).download_and_prepare()
    finally:
        monkey.undo()
    return str(root / "tfds")


def _small(config, data_dir):
    """The paper preset on the stand-in, with CPU-sized networks."""
    config.data.data_dir = data_dir
    config.model.update(ebm="ebm_small", generator="", latent_dim=8)
    config.model.ebm_kwargs = dict(width=4)
    config.init.source = "noise"
    config.generator.weights = ""
    config.langevin.num_steps = 2
    config.bank.size = 8
    config.train.update(
        num_steps=2, batch_size=4, log_every=2, image_every=2, checkpoint_every=2
    )
    return config


def test_celeb_a_reads_cropped_and_resized(celeb_a_dir):
    images = np.stack(list(data.tfds_images("celeb_a", data_dir=celeb_a_dir)))
    assert images.shape == (8, 64, 64, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0


@pytest.mark.parametrize("module", [prior, longrun])
def test_missing_celeb_a_says_how_to_get_it(module, tmp_path):
    config = module.get_config("celeb_a")
    config.data.data_dir = str(tmp_path / "nothing")
    with pytest.raises(data.DatasetNotFoundError, match="tfds build celeb_a"):
        run.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_prior_then_longrun_on_the_stand_in(celeb_a_dir, tmp_path):
    config = _small(prior.get_config("celeb_a"), celeb_a_dir)
    model = run.train(config, str(tmp_path / "prior"))
    assert model.bank.states.shape == (8, 64, 64, 3)
    assert model.tau == 0.15 and model.bank.rejuvenation_prob == 0.2

    config = _small(longrun.get_config("celeb_a"), celeb_a_dir)
    config.prior.workdir = str(tmp_path / "prior")
    config.burnin.update(size=8, steps=1, length=2)
    model = run.train(config, str(tmp_path / "longrun"))
    assert int(model.ebm_optimizer.iterations) == 2
    assert model.prior_net is not None
    assert model.burnin_bank.states.shape == (8, 64, 64, 3)
