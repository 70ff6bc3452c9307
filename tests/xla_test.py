"""The train steps compile with XLA on CPU (`jit_compile=on`), in float32
and bfloat16: the ops a GPU or TPU run compiles (Langevin loop,
sparse bank reads and scatters, both updates) all have XLA kernels."""

import importlib

import numpy as np
import pytest

from keras_ebm import data, run
from keras_ebm.runs import training


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
    # shortrun in bfloat16: the step that trains every network kind (EBM,
    # trained generator), with the float32 Langevin state, potential and
    # banks around bfloat16 networks; XLA's CPU kernels cover fewer ops in
    # bfloat16 than in float32, so its float32 twin is not compiled again
    # (CI time: 24 s). prior's and midrun's steps are shortrun's with
    # another config (frozen generator or data init). longrun in float32:
    # its burn-in, transfer and two banks (bfloat16 took 23 s more).
    [("shortrun", "bfloat16"), ("longrun", "float32")],
)
def test_train_step_compiles_with_xla(regime, precision):
    model, history = _one_xla_step(regime, precision)
    assert model.jit_compile is True
    assert np.isfinite(history["loss"][0])
    assert int(model.ebm_optimizer.iterations.numpy()) == 2
