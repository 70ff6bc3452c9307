"""The train steps compile with XLA on CPU (`jit_compile=on`), in float32
and bfloat16: the ops a GPU or TPU run compiles (Langevin loop,
sparse bank reads and scatters, both updates) all have XLA kernels."""

import importlib

import numpy as np
import pytest

from keras_ebm import data, run, training


def _one_xla_step(regime, precision):
    config = importlib.import_module(f"keras_ebm.configs.{regime}").get_config("smoke")
    config.train.update(jit_compile="on", precision=precision)
    run.check_config(config)
    source = data.images(config)
    model = run.build_model(config)
    if model.banks:
        model.initialize_bank(training.initial_data(config, model, source))
    stream = data.train_stream(
        source, config.train.batch_size, with_init=config.init.source == "data"
    )
    return model, model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0).history


@pytest.mark.slow  # XLA compilation on CPU: seconds per regime
@pytest.mark.parametrize(
    "regime, precision",
    # prior's and midrun's steps are shortrun's with another config (frozen
    # generator or data init, bank), so they compile whenever it does.
    [(r, "float32") for r in ("shortrun", "longrun")]
    # bfloat16 on the step that trains every network kind (EBM, trained
    # generator); longrun's bank ops are float32 whatever the precision, and
    # its float32 step compiles above (CI time: a bfloat16 longrun step took
    # 23 s to compile here).
    + [("shortrun", "bfloat16")],
)
def test_train_step_compiles_with_xla(regime, precision):
    model, history = _one_xla_step(regime, precision)
    assert model.jit_compile is True
    assert np.isfinite(history["loss"][0])
    assert int(model.ebm_optimizer.iterations.numpy()) == 2
