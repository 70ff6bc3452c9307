"""toy2d: the model's steady state against the true density.

The density `exp(-U)` of the full sampling potential (at the evaluation's
temperature, as the chains) is normalized exactly on a grid (the
ebm-anatomy method, no chains needed) and compared with the truth by total
variation and KL; histograms of chains (the training sampler's, ULA
and MALA chains run from data) are compared with the truth by total
variation.
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_ebm import data
from keras_ebm.evaluation import fid
from keras_ebm.runs import callbacks, files, interrupt

# The ancestors' grids: +-(largest radius + 4 sigma), 200 x 200 points.
TOY_LIMITS = {"gmm": 1.6, "rings": 4.6}
GRID, HIST_BINS = 200, 40


def grid_points(limit, size=GRID):
    """Centres of a `size x size` grid over `[-limit, limit]^2`, `[size^2, 2]`."""
    axis = np.linspace(-limit, limit, size)
    xx, yy = np.meshgrid(axis, axis)
    return np.stack([xx.ravel(), yy.ravel()], 1).astype("float32")


def grid_probabilities(log_density):
    """Cell probabilities `exp(log p) / sum exp(log p)` of grid values: the
    density normalized exactly on the grid (no chains needed)."""
    log_density = np.asarray(log_density, np.float64)
    p = np.exp(log_density - log_density.max())
    return p / p.sum()


def grid_density(model, points, ev):
    """Cell probabilities of `exp(-U)` on the grid, with U the potential the
    evaluation's chains sample (`eval.temperature`, `eval.joint_temperature`),
    so the grid and the chains describe the same steady state."""
    u = model.potential_at(ev.temperature, ev.get("joint_temperature", 1.0))
    return grid_probabilities(-u(tf.constant(points)).numpy())


def total_variation(p, q):
    """`TV(p, q) = sum |p - q| / 2` of two probability vectors."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def kl_divergence(p, q):
    """`KL(p || q) = sum p log(p / q)` over the cells where `p > 0`."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    on = p > 0
    return float(np.sum(p[on] * (np.log(p[on]) - np.log(np.maximum(q[on], 1e-300)))))


def histogram_probabilities(points, limit, bins=HIST_BINS):
    """Cell frequencies of `[N, 2]` points on a `bins x bins` grid over
    `[-limit, limit]^2`, plus one last cell for the mass outside it."""
    counts, _, _ = np.histogram2d(
        points[:, 1], points[:, 0], bins=bins, range=[[-limit, limit]] * 2
    )
    inside = counts.ravel()
    outside = len(points) - inside.sum()
    return np.append(inside, outside) / max(len(points), 1)


def coarsen(p, size=GRID, bins=HIST_BINS):
    """Grid cell probabilities summed into the histogram's cells (+ outside)."""
    block = size // bins
    coarse = p.reshape(bins, block, bins, block).sum(axis=(1, 3)).ravel()
    return np.append(coarse, 0.0)


def toy2d_steady_state(config, workdir, model, step):
    """The model density `exp(-U)` normalized on the grid against the true
    density (TV and KL), and histograms against the truth (TV): the
    training sampler's states, long chains started from data, and true
    samples of the same size (the floor a finite histogram can reach).
    Writes `eval/steady_state.{json,png}`.
    """
    ev, name = config.eval, config.data.toy
    limit = TOY_LIMITS[name]
    points = grid_points(limit)
    truth = grid_probabilities(data.toy2d_log_density(name, points).numpy())
    model_p = grid_density(model, points, ev)
    n = ev.num_samples

    # The states that train the model: the (update) bank, else the chains.
    grids = callbacks.snapshot(model, n)
    kind = next(k for k in ("update_bank", "bank", "negatives") if k in grids)
    sampler = grids[kind][:n]
    starts = data.toy2d_sample(name, n, seed=config.seed + 7)
    chains, _ = long_chains(config, workdir, model, starts)
    true_points = data.toy2d_sample(name, n, seed=config.seed + 8)
    coarse_truth = coarsen(truth)

    def tv_histogram(points):
        return total_variation(histogram_probabilities(points, limit), coarse_truth)

    results = {
        "checkpoint_step": step,
        "regime": config.regime,
        "density": name,
        "tv_grid": total_variation(model_p, truth),
        "kl_grid": kl_divergence(truth, model_p),
        "tv_sampler_histogram": tv_histogram(sampler),
        "tv_chains_histogram": tv_histogram(chains),
        "tv_true_samples_histogram": tv_histogram(true_points),
        # The grid density itself, histogrammed: what exact chains approach.
        "tv_model_to_truth_histogram_scale": total_variation(
            coarsen(model_p), coarse_truth
        ),
        "num_samples": n,
        "sampler": "ula",
        "chain_steps": ev.num_steps,
        "step_size": ev.step_size,
        "temperature": ev.temperature,
    }
    panels_extra = []
    if ev.mala:
        mala, acceptance = long_chains(config, workdir, model, starts, sampler="mala")
        results["tv_mala_chains_histogram"] = tv_histogram(mala)
        results["mala_acceptance"] = acceptance
        label = (
            f"MALA {ev.num_steps} steps, TV {results['tv_mala_chains_histogram']:.3f}"
        )
        panels_extra.append((label, None, mala))
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "steady_state.json"), "w") as f:
        json.dump(results, f, indent=2)
    panels = [
        ("truth", truth, None),
        (f"grid steady state, TV {results['tv_grid']:.3f}", model_p, None),
        (f"training sampler, TV {results['tv_sampler_histogram']:.3f}", None, sampler),
        (
            f"ULA {ev.num_steps} steps from data, "
            f"TV {results['tv_chains_histogram']:.3f}",
            None,
            chains,
        ),
    ]
    _steady_state_figure(
        os.path.join(out, "steady_state.png"),
        limit,
        panels + panels_extra,
        f"{config.regime} on {name}, step {step}",
    )
    print(json.dumps(results, indent=2))
    return results


def long_chains(config, workdir, model, x, segment=1000, sampler="ula"):
    """`eval.num_steps` steps from `x` at the evaluation settings, in
    segments; the states are saved after each segment, so a killed
    evaluation resumes mid-chain. Memory does not grow with the steps.

    `sampler`: `ula`, the library's Langevin (what training uses), or
    `mala`, tensorflow-probability's Metropolis-adjusted Langevin with the
    same proposal (TFP's step size h = eps^2: `x + (h/2) grad log p +
    sqrt(h) n`), whose chains target `exp(-U)` exactly; the gap between the
    two is the discretization bias.

    Returns:
        `(states, acceptance)`; acceptance is 1 for ULA.
    """
    from tqdm.auto import tqdm

    ev = config.eval
    settings = dict(
        {k: ev[k] for k in ("step_size", "temperature", "joint_temperature")},
        num_steps=ev.num_steps,
        num_samples=len(x),
        seed=config.seed,
        sampler=sampler,
    )
    path = os.path.join(workdir, "eval", f"chains_{fid.settings_key(settings)}.npz")
    done, accepted = 0, 0.0
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                x, done, accepted = f["x"], int(f["done"]), float(f["accepted"])
        except Exception as e:  # a disk error: the chains start again
            files.quarantine(path, f"the chain state does not load ({e})")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    step = _mala_steps(model, ev) if sampler == "mala" else None
    with tqdm(total=ev.num_steps, initial=done, unit="step", desc=sampler) as bar:
        while done < ev.num_steps:
            if interrupt.requested():
                saved = f"{done} steps saved in {path}"
                raise interrupt.stop(f"the {sampler} chains", saved)
            k = min(segment, ev.num_steps - done)
            seed = tf.constant([config.seed + 2000, done])
            if step is None:
                x, _ = model.sample(
                    x,
                    k,
                    seed=seed,
                    step_size=ev.step_size,
                    temperature=ev.temperature,
                    joint_temperature=ev.joint_temperature,
                )
                rate = 1.0
            else:
                x, rate = step(tf.constant(x), tf.constant(k), seed)
            x, done = x.numpy(), done + k
            accepted += float(rate) * k
            files.atomic_write(
                path,
                lambda tmp, x=x, done=done, a=accepted: np.savez(
                    tmp, x=x, done=done, accepted=a
                ),
            )
            bar.update(k)
    return np.asarray(x), accepted / max(done, 1)


def _mala_steps(model, ev):
    """A compiled `(x, k, seed) -> (x_k, acceptance rate)` of TFP's MALA on
    `exp(-U)` at the evaluation temperature."""
    import tensorflow_probability as tfp

    u = model.potential_at(ev.temperature, ev.joint_temperature)
    kernel = tfp.mcmc.MetropolisAdjustedLangevinAlgorithm(
        target_log_prob_fn=lambda x: -u(x), step_size=ev.step_size**2
    )

    @tf.function
    def run(x, k, seed):
        def body(i, x, results, accepted):
            x, results = kernel.one_step(
                x, results, seed=tf.random.experimental.stateless_fold_in(seed, i)
            )
            rate = tf.reduce_mean(tf.cast(results.is_accepted, tf.float32))
            return i + 1, x, results, accepted + rate

        _, x, _, accepted = tf.while_loop(
            lambda i, *_: i < k,
            body,
            (0, x, kernel.bootstrap_results(x), 0.0),
        )
        return x, accepted / tf.cast(k, tf.float32)

    return run


def _steady_state_figure(path, limit, panels, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    extent = [-limit, limit, -limit, limit]
    for ax, (label, grid, points) in zip(axes, panels, strict=True):
        if grid is not None:
            ax.imshow(grid.reshape(GRID, GRID), origin="lower", extent=extent)
        else:
            ax.hist2d(points[:, 0], points[:, 1], bins=100, range=[[-limit, limit]] * 2)
        ax.set_title(label, fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
