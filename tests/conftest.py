"""Test set-up: two logical CPUs (for MirroredStrategy tests), quiet TF."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from keras_ebm.cli import quiet  # noqa: E402

quiet.import_tensorflow()  # without TF's start-up banner

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)


@functools.cache
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    strategies created side by side in one process reuse collective instance
    keys, and a gather of another dtype then aborts ("Collective instance
    100 expected type 0 and data_type 1")."""
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


# The longest files first: `make test` hands whole files to two workers in
# collection order, and a long file started last keeps one worker busy
# while the other idles (longest-processing-time-first scheduling).
LONGEST_FIRST = (
    "multi_worker_test.py",
    "imagenet_test.py",
    "kill_longrun_test.py",
    "kill_shortrun_test.py",
    "attack_test.py",
    "xla_test.py",
    "checkpoints_test.py",
    "guard_test.py",
    "fid_test.py",
    "errors_test.py",
    "library_test.py",
    "signals_test.py",
)


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase.test_session is a context manager, not a test.
    items[:] = [item for item in items if item.name != "test_session"]
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _no_global_tf_seed_left_behind():
    # A test that seeds TensorFlow globally (keras.utils.set_random_seed)
    # must not change the next one: a global seed of 0 even breaks tf.data's
    # tensor-seeded shuffles.
    yield
    tf.random.set_seed(None)
