"""Shared test helpers: comparing two trainings of the same model."""

import numpy as np


def _arrays_of(model):
    """`[(name, array, velocity or None)]`: every weight (networks, banks)
    with its Adam second moment (None for other optimizers and for
    non-trainable weights), then both optimizers' slots and steps."""
    out = []
    velocity = {}
    for opt in (model.ebm_optimizer, model.gen_optimizer):
        if opt is None:
            continue
        for var in opt._trainable_variables if hasattr(opt, "_velocities") else ():
            i = opt._get_variable_index(var)
            velocity[id(var)] = opt._velocities[i].numpy()
            out += [
                (f"{var.path} momentum", opt._momentums[i].numpy(), velocity[id(var)]),
                (f"{var.path} velocity", opt._velocities[i].numpy(), velocity[id(var)]),
            ]
        out.append((f"{opt.name} iterations", opt.iterations.numpy(), None))
    weights = [(v.path, v.numpy(), velocity.get(id(v))) for v in model.weights]
    return weights + out


def assert_trained_alike(got, want, start, rtol=1e-2):
    """`got` is the training of `want` from `start`: every array within
    `rtol` of how far training moved it (`max |want - start|`), plus 8
    float32 ulps of its size for the rounding of sums taken in another
    order, plus 1e-4 of the largest move of a trainable array in its
    network (a gradient's float noise is relative to the network's
    gradients, not to the array's own: SGD moves a parameter without a
    gradient by lr x that noise); integers (counts, steps) exactly.

    A parameter with no gradient in exact arithmetic (a conv bias before
    batch norm) has float noise for a gradient, which Adam normalizes into
    a step of up to the learning rate: such a parameter (Adam second moment
    below 1e-10 of the largest in its network, against >= 1e-2 for the
    others here) is held only to the optimizer's reach (twice the largest
    move in its network per step taken), and its slots, noise by
    definition, are not compared.

    1% is well below what a step less (about 25% of 4 steps' move), a
    wrong learning rate (all of it) or a replica's lost gradient (the
    sign of an Adam step, 2 learning rates) change.
    """
    # By position: the three models are built alike (their paths may differ
    # in a numbered suffix); names and moments are the reference's.
    rows = [
        (name, g, w, s, v)
        for (_, g, _), (name, w, v), (_, s, _) in zip(
            _arrays_of(got), _arrays_of(want), _arrays_of(start), strict=True
        )
    ]
    trainable = {v.path for v in want.trainable_weights}
    largest = {}
    for name, _, w, s, v in rows:
        net = name.split("/")[0]
        if v is not None and not name.endswith(("momentum", "velocity")):
            largest[net] = max(largest.get(net, 0.0), float(v.max()))
        if name in trainable:
            move = float(np.abs(w.astype("float64") - s).max())
            largest[net + " move"] = max(largest.get(net + " move", 0.0), move)
    steps = int(want.ebm_optimizer.iterations.numpy() - start.ebm_optimizer.iterations)
    for name, g, w, s, v in rows:
        if not np.issubdtype(w.dtype, np.floating):
            np.testing.assert_array_equal(
                g, w, err_msg=f"{name} differs from the reference"
            )
            continue
        g, w, s = (np.asarray(a, "float64") for a in (g, w, s))
        error = np.abs(g - w).max()
        net = name.split("/")[0]
        if v is not None and v.max() < 1e-10 * largest[net]:
            if name.endswith(("momentum", "velocity")):
                continue  # float noise, by definition
            bound = 2 * steps * largest[net + " move"]
        else:
            moved = np.abs(w - s).max()
            bound = rtol * moved + 8 * np.finfo("float32").eps * np.abs(w).max()
            bound += 1e-4 * largest.get(net + " move", 0.0)
        assert error <= bound, (
            f"{name} differs from the reference by {error:.3g} > {bound:.3g}"
        )
