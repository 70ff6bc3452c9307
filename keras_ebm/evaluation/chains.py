"""Evaluation shared by the EBM regimes: FID along one trajectory of
Langevin chains, and the SavedModel export."""

import glob
import json
import os

import numpy as np
import tensorflow as tf

from keras_ebm import data
from keras_ebm import export as export_lib
from keras_ebm.evaluation import fid, metrics, trajectory
from keras_ebm.runs import callbacks, files
from keras_ebm.runs.training import ConfigError


def fid_along_chains(config, workdir, model, step):
    """FID along the evaluation chains of `model` (checkpoint `step`), and
    sample grids.

    Chains start from the regime's init (generator `gen(z)` with moving BN
    statistics, as the reference FID; or noise, or bank states), take
    `eval.num_steps` Langevin steps at `eval.step_size` / `eval.temperature`,
    and FID is measured at every `eval.milestones` step count on the same
    chains. Writes `eval/results.json`, `eval/fid_curve.{csv,png}`,
    `eval/samples_<steps>.png` and TensorBoard summaries.

    Returns:
        The results dict.
    """
    ev = config.eval
    if config.data.name == "toy2d":
        raise ConfigError("config.data.name: FID is not defined for toy2d")
    net = fid.backbone(config)
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    ref = _reference_set(config, workdir, net)
    if model.chain_starts(1, tf.constant([0, 0])) is None:
        raise ConfigError(
            "config.init: a data-initialized model without a bank has no "
            "chains to evaluate; use init.persistent=True"
        )
    milestones = sorted(set(ev.milestones) | {ev.num_steps})
    chain_fields = ("step_size", "temperature", "joint_temperature", "batch_size")
    settings = dict(
        {field: ev[field] for field in chain_fields},
        checkpoint_step=step,
        num_samples=ev.num_samples,
        milestones=milestones,
        seed=config.seed,
        data_statistics=ref["key"],
    )
    run = _run_chains(config, model, net, ref["stats"], settings, out, step)
    results = run["fid"]
    # The floor: held-out real images (the next N of the same source)
    # against the reference set; no model can do better at this N.
    realism = {}
    k = ev.get("realism_k", 0)
    real = None
    if k and ev.num_samples > k:
        # Realism (precision, density) apart from coverage (recall,
        # coverage): FID mixes them, the longrun claim is about the first.
        real = fid.reference_features(
            ref["images"][: ev.num_samples], net, ref["cache"]
        )
        realism = {str(m): fid.realism(real, f, k) for m, f in run["features"].items()}
    floor, real_realism = real_floor(
        ref["images"][ev.num_samples :], net, ref["stats"], ref["cache"], real, k
    )
    if real_realism:
        realism["real data"] = real_realism
    classes = _classes_along_chain(ref, net, run["features"], ev.num_samples)
    summary = {
        "checkpoint_step": step,
        "settings": {**settings, **ref["settings"]},
        "backbone": net.name,
        "num_samples": ev.num_samples,
        "eval_steps": ev.num_steps,
        "fid": results[ev.num_steps],
        "fid_along_chain": {str(m): v for m, v in results.items()},
        "fid_real_floor": floor,
        "realism_k": k,
        "realism_along_chain": realism,
        "classes_along_chain": classes,
    }
    _write_outputs(config, workdir, net, summary, run, step)
    print_table(summary, net.name, ev.num_samples, ev.num_steps)
    return summary


REALISM = ("precision", "recall", "density", "coverage")


def _classes_along_chain(ref, net, features, num_samples):
    """`metrics.class_balance` of the samples at every milestone and of the
    held-out real images, against the reference set, all labelled by the
    backbone's classifier head; {} for a backbone without one."""
    if net.logits is None:
        return {}
    # The reference set's features are cached beside its statistics.
    real = fid.reference_features(ref["images"][:num_samples], net, ref["cache"])
    reference = net.classes(real)
    num_classes = int(np.asarray(net.logits(real[:1])).shape[-1])
    rows = {str(m): net.classes(f) for m, f in features.items()}
    held_out = ref["images"][num_samples:]
    if len(held_out):
        rows["real data"] = net.classes(net(held_out))
    return {
        row: metrics.class_balance(labels, reference, num_classes)
        for row, labels in rows.items()
    }


def _reference_set(config, workdir, net):
    """The real images (twice `eval.num_samples`: the reference set, then
    the held-out floor's) and the reference statistics, cached under a key
    of everything that changes them (a change recomputes, never silently
    reuses; several caches may coexist)."""
    ev = config.eval
    cache_dir = ev.cache_dir or os.path.join(workdir, "fid_cache")
    settings = dict(
        data=config.data.name,
        split=ev.data_split,
        image_size=config.data.image_size,
        num_samples=ev.num_samples,
        backbone=net.name,
        weights=net.fingerprint,
    )
    key = fid.settings_key(settings)
    cache = os.path.join(cache_dir, f"{config.data.name}_{net.name}_{key}.npz")
    images = data.take_array(data.images(config), 2 * ev.num_samples)
    stats = fid.data_statistics(images[: ev.num_samples], net, cache)
    return dict(images=images, stats=stats, cache=cache, settings=settings, key=key)


def _run_chains(config, model, net, stats, settings, out, step):
    """`trajectory.trajectory_fid` of the model's evaluation chains, their
    state in `out` under a key of `settings` (a finished shorter curve of
    the same chains is continued, 100K -> 1M steps, not restarted), each
    milestone printed and written to `fid_partial.json` as it is reached."""
    ev = config.eval

    def sample_init(b):
        seed = tf.constant([config.seed + 1000, b])
        return model.chain_starts(ev.batch_size, seed, start=b * ev.batch_size)

    def advance(x, num_steps, seed):
        x, stats = model.sample(
            x,
            num_steps,
            seed=seed,
            step_size=ev.step_size,
            temperature=ev.temperature,
            joint_temperature=ev.joint_temperature,
            spread=True,
        )
        return x, float(stats.energy), float(stats.drift_norm)

    state = os.path.join(out, f"trajectory_step{step}_{fid.settings_key(settings)}.npz")
    same_chains = fid.settings_key(
        {k: v for k, v in settings.items() if k != "milestones"}
    )
    others = sorted(glob.glob(os.path.join(out, f"trajectory_step{step}_*.npz")))
    partial = {}

    def on_milestone(steps, value):
        partial[str(steps)] = value
        files.write_json(
            os.path.join(out, "fid_partial.json"),
            {"settings": settings, "fid_along_chain": partial},
        )
        print(f"FID ({net.name}) after {steps} Langevin steps: {value:.3f}")

    return trajectory.trajectory_fid(
        sample_init,
        advance,
        net,
        stats,
        ev.num_samples,
        ev.batch_size,
        settings["milestones"],
        state_path=state,
        chunk=ev.save_every,
        on_milestone=on_milestone,
        identity=same_chains,
        extend_from=[
            p
            for p in others
            if p != state and not p.endswith((".tmp.npz", ".prev.npz"))
        ],
    )


def _write_outputs(config, workdir, net, summary, run, step):
    """`eval/results.json`, `fid_curve.{csv,png}`, `realism.csv`, the chain
    trace, the sample grids and the TensorBoard scalars."""
    out = os.path.join(workdir, "eval")
    results, realism = run["fid"], summary["realism_along_chain"]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "fid_curve.csv"), "w") as f:
        f.write("langevin_steps,fid\n")
        f.writelines(f"{m},{v:.6f}\n" for m, v in sorted(results.items()))
    if realism:
        with open(os.path.join(out, "realism.csv"), "w") as f:
            f.write("langevin_steps," + ",".join(REALISM) + "\n")
            for row, r in realism.items():
                f.write(row + "," + ",".join(f"{r[n]:.6f}" for n in REALISM) + "\n")
    fid.save_curve(
        results,
        os.path.join(out, "fid_curve.png"),
        f"{config.data.name}, {net.name} FID, step {step}",
        floor=summary["fid_real_floor"],
    )
    save_trace(run["trace"], os.path.join(out, "chain_trace"), step)
    if summary["classes_along_chain"]:
        save_classes(summary, os.path.join(out, "classes_along_chain"), step)
    for m, states in run["snapshots"].items():
        callbacks.save_png(
            os.path.join(out, f"samples_{m:06d}.png"),
            callbacks.image_grid(states, scale=max(1, 64 // states.shape[1])),
        )
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", "eval"))
    with writer.as_default(step=step):
        tf.summary.scalar(f"fid/{net.name}", summary["fid"])
        for m, v in results.items():
            tf.summary.scalar(f"fid_along_chain/{net.name}/{m:06d}", v)
            for name, value in realism.get(str(m), {}).items():
                tf.summary.scalar(f"{name}_along_chain/{net.name}/{m:06d}", value)
    writer.flush()


def print_table(summary, backbone, num_samples, eval_steps):
    """FID and realism at each milestone, the headline row marked, then
    the held-out real images' row (the floor)."""
    realism, k = summary["realism_along_chain"], summary["realism_k"]
    classes = summary.get("classes_along_chain", {})
    floor = summary["fid_real_floor"]
    head = f"FID ({backbone}, {num_samples} samples)"
    if realism:
        head += f" | precision  recall  density  coverage (k {k})"
    if classes:
        head += " | classes: entropy/log C  top share/data's"
    print(f"\n{'Langevin steps':>15} | {head}")

    def cells(row):
        r, c = realism.get(row), classes.get(row)
        text = " | " + "  ".join(f"{r[n]:8.3f}" for n in REALISM) if r else ""
        if c:
            top = f"{c['max_share_ratio']:.2f} ({c['largest_class']})"
            text += f" | {c['entropy']:8.3f}  {top:>10}"
        return text

    for m, v in sorted((int(m), v) for m, v in summary["fid_along_chain"].items()):
        mark = "  <- eval.num_steps" if m == eval_steps else ""
        print(f"{m:>15} | {v:10.3f}{cells(str(m))}{mark}")
    if floor is not None:
        print(
            f"{'real data':>15} | {floor:10.3f}{cells('real data')}"
            "  (held-out images: the floor)"
        )


def real_floor(held_out, net, stats, cache, real=None, k=0):
    """FID of held-out real images against the reference statistics and,
    given the reference features `real`, their `fid.realism` at `k` (both
    cached beside the statistics): `(fid, realism)`, None for what fewer
    than 2 (k + 1) held-out images cannot give."""
    path = cache[: -len(".npz")] + "_floor.json"
    floor = {}
    if os.path.exists(path):
        with open(path) as f:
            floor = json.load(f)
    want_realism = real is not None and len(held_out) > k
    key = f"realism_k{k}"
    if ("fid" in floor or len(held_out) < 2) and (key in floor or not want_realism):
        return floor.get("fid"), floor.get(key)
    features = net(held_out)
    floor["fid"] = metrics.fid_from_statistics(
        *metrics.activation_statistics(features), *stats
    )
    floor["num_images"] = len(held_out)
    if want_realism:
        floor[key] = fid.realism(real, features, k)
    with open(path, "w") as f:
        json.dump(floor, f)
    return floor["fid"], floor.get(key)


def save_classes(summary, prefix, step):
    """The samples' class shares at every milestone (CSV, and a PNG of
    stacked bars beside the FID, precision and coverage curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = summary["classes_along_chain"]
    rows = sorted((r for r in classes if r != "real data"), key=int)
    rows += [r for r in classes if r == "real data"]
    shares = np.array([classes[r]["shares"] for r in rows])
    with open(prefix + ".csv", "w") as f:
        names = ",".join(f"class_{c}" for c in range(shares.shape[1]))
        f.write(f"langevin_steps,entropy,max_share_ratio,{names}\n")
        for r, row in zip(rows, shares, strict=True):
            c = classes[r]
            cells = ",".join(f"{v:.6f}" for v in row)
            f.write(f"{r},{c['entropy']:.6f},{c['max_share_ratio']:.6f},{cells}\n")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = [int(r) for r in rows if r != "real data"]
    fids = [summary["fid_along_chain"][str(m)] for m in steps]
    x = np.maximum(steps, 1)
    left.plot(x, fids, "o-", color="k", label="FID")
    if summary.get("fid_real_floor") is not None:
        left.axhline(summary["fid_real_floor"], color="k", ls="--", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("Langevin steps (0 drawn at 1)")
    left.set_ylabel("FID (dashed: held-out real)")
    realism = summary["realism_along_chain"]
    if realism:
        twin = left.twinx()
        for name, color in (("precision", "tab:blue"), ("coverage", "tab:orange")):
            twin.plot(
                x, [realism[str(m)][name] for m in steps], ".-", color=color, label=name
            )
        twin.plot(
            x,
            [classes[str(m)]["entropy"] for m in steps],
            ".-",
            color="tab:green",
            label="class entropy / log C",
        )
        twin.set_ylim(0, 1.05)
        twin.legend(loc="lower left", fontsize=8)
    bottom = np.zeros(len(rows))
    cmap = plt.get_cmap("tab10")
    for c in range(shares.shape[1]):
        right.bar(
            range(len(rows)),
            shares[:, c],
            bottom=bottom,
            color=cmap(c % 10),
            label=str(c),
        )
        bottom += shares[:, c]
    right.set_xticks(
        range(len(rows)),
        [r if r == "real data" else f"{int(r):,}" for r in rows],
        rotation=30,
        fontsize=8,
    )
    right.set_ylabel("share of samples (classifier's labels)")
    right.set_xlabel("Langevin steps")
    right.legend(
        title="class", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left"
    )
    fig.suptitle(f"samples along the chains, checkpoint {step}")
    fig.savefig(prefix + ".png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_trace(trace, prefix, step):
    """Energy and drift norm along the first batch of chains: CSV and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = np.asarray(trace).reshape(-1, 3)
    np.savetxt(
        prefix + ".csv",
        trace,
        delimiter=",",
        header="langevin_steps,mean_potential,mean_drift_norm",
        comments="",
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, col, label in ((axes[0], 1, "mean U(x)"), (axes[1], 2, "drift norm")):
        ax.plot(np.maximum(trace[:, 0], 1), trace[:, col], ".-")
        ax.set_xscale("log")
        ax.set_xlabel("Langevin steps")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"chains of the first batch, checkpoint {step}")
    fig.savefig(prefix + ".png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def export(config, workdir, model, step, **purify):
    """Writes the SavedModel of `model` to `<workdir>/export` (see
    `keras_ebm.export`); `purify` may set `purify_steps`,
    `purify_step_size` and `purify_temperature` (default: the training K,
    step size and temperature)."""
    path = os.path.join(workdir, "export")
    ev = config.eval
    export_lib.export(
        model,
        path,
        purify_steps=purify.get("purify_steps", config.langevin.num_steps),
        purify_step_size=purify.get("purify_step_size"),
        purify_temperature=purify.get("purify_temperature"),
        eval_steps=ev.num_steps,
        eval_step_size=ev.step_size,
        eval_temperature=ev.temperature,
    )
    print(f"SavedModel of step {step} written to {path}")
    return path


def evaluate_model(config, workdir, model, step):
    """toy2d: the exact steady state; image datasets: FID along the chains."""
    if config.data.name == "toy2d":
        from keras_ebm.evaluation import steady_state

        return steady_state.toy2d_steady_state(config, workdir, model, step)
    return fid_along_chains(config, workdir, model, step)
