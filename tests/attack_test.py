"""BPDA+EOT attack: cleverhans' PGD when purification is off, the BPDA and
exact gradients in closed form, the monotone record, resume."""

import dataclasses
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import (
    projected_gradient_descent,
)

from keras_ebm.defense import attack, gradients, purify
from keras_ebm.models import EnergyModel
from tests.linear_nets import (
    HalfSquare,
    LinearEnergy,
    assert_gaussian_rows,
    gaussian_law,
)

D, C = 6, 3


def classifier(hidden=8, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(C),
        ]
    )


def defended(clf, num_steps, energy=None, step_size=0.2, temperature=1.0):
    model = EnergyModel(
        energy or LinearEnergy(D),
        num_steps=1,
        step_size=step_size,
        temperature=temperature,
    )
    return purify.DefendedClassifier(model, clf, num_steps)


def inputs(n=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.8, 0.8, size=(n, D)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, C, n), tf.int32)


def gaussian_model(step_size=0.3, temperature=0.5):
    """E = ||x||^2 / 2: K_def steps take x0 to N(c^K x0, v I)
    (`gaussian_law`)."""
    return EnergyModel(
        HalfSquare(D), num_steps=1, step_size=step_size, temperature=temperature
    )


def two_class(seed=0):
    """A linear 2-class classifier; `d = m_0 - m_1` is the direction of the
    margin of class 0."""
    m = np.random.default_rng(seed).normal(size=(D, 2)).astype("float32")
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2, use_bias=False)])
    clf.layers[0].kernel.assign(m)
    return clf, m[:, 0] - m[:, 1]


def accuracy_near(observed, p, n, n_sigma=4):
    assert abs(observed - p) < n_sigma * np.sqrt(p * (1 - p) / n), (observed, p)


@pytest.mark.parametrize("grad_steps", [0, 2, 6])
def test_attack_logits_are_those_of_k_def_purification_steps(grad_steps):
    # Whatever the exact part m, the attack's logits are those of K_def
    # purification steps: rows N(c^K x0 M, v (M^T M)_cc / H_adv).
    m = np.random.default_rng(4).normal(size=(D, C)).astype("float32")
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, use_bias=False)])
    clf.layers[0].kernel.assign(m)
    k, h = 6, 4
    d = purify.DefendedClassifier(gaussian_model(), clf, k)
    x0 = np.array([2.0, -1.0, 0.5, 1.0, 0.0, -2.0], "float32")
    x = tf.constant(np.tile(x0[None], (3000, 1)))
    s = attack.AttackSettings(
        eps=0.1, step_size=0.1, num_steps=1, adv_replicates=h, grad_steps=grad_steps
    )
    logits, _ = gradients.eot_logits_and_grad(
        d, x, tf.zeros(3000, tf.int32), s, tf.constant([1, 2])
    )
    ck, v = gaussian_law(k, 0.3, 0.5)
    assert_gaussian_rows(logits, ck * x0 @ m, v * np.sum(m**2, 0) / h)


def test_verification_takes_h_def_replicates_and_the_attack_h_adv():
    # Each replicate's margin is N(mu, s^2); an average of H is right with
    # probability Phi(mu sqrt(H) / s). With mu = s / 4: H_adv = 1 -> 0.599
    # (the attack's check of iterate 0 = the natural image), H_def = 16 ->
    # 0.841 (row 0 of the record, the natural verification).
    from scipy import stats

    clf, dm = two_class()
    k = 5
    d = purify.DefendedClassifier(gaussian_model(), clf, k)
    ck, v = gaussian_law(k, 0.3, 0.5)
    sd = np.sqrt(v) * np.linalg.norm(dm)
    x0 = (0.25 * sd / ck) * dm / np.sum(dm**2)
    n = 1500
    x = tf.constant(np.tile(x0[None], (n, 1)).astype("float32"))
    s = attack.AttackSettings(
        eps=1e-4,
        step_size=1e-4,
        num_steps=0,
        adv_replicates=1,
        def_replicates=16,
        random_start=False,
    )
    record, correct, *_ = attack.batch_attack(d, s)(
        x, tf.zeros(n, tf.int32), tf.zeros_like(x), tf.constant([3, 0])
    )
    accuracy_near(record.numpy()[0].mean(), stats.norm.cdf(1.0), n)
    accuracy_near(correct.numpy()[0].mean(), stats.norm.cdf(0.25), n)


@pytest.mark.slow
def test_verification_draws_noise_of_its_own(tmp_path):
    # Images on the boundary: each average is right with probability 1/2.
    # An iterate breaks an image when the attack's replicates are wrong and
    # an independent verification is wrong too (1/4 per iterate), so after
    # the natural verification and 3 iterates 0.5 * 0.75^3 = 0.211 survive.
    # A verification that reused the attack's noise (one image per batch,
    # H_def = H_adv: the very same replicates) would leave about 0.06 (the
    # reuse, measured at n = 300: 0.153 after 2 iterates against 0.281).
    # n = 240 keeps that 5 standard errors away (n = 160 let it pass;
    # 300 took 92 s of CI; one-image batches make the reuse exact).
    clf, _ = two_class()
    d = purify.DefendedClassifier(gaussian_model(), clf, 4)
    n = 240
    s = attack.AttackSettings(
        eps=1e-4,
        step_size=1e-4,
        num_steps=2,
        adv_replicates=4,
        def_replicates=4,
        random_start=False,
    )
    r = attack.evaluate(
        d,
        np.zeros((n, D), "float32"),
        np.zeros(n, "int32"),
        s,
        str(tmp_path),
        batch_size=1,
    )
    for i, p in enumerate(0.5 * 0.75 ** np.arange(4)):
        accuracy_near(r["curve"][i], p, n)
    assert r["robust_accuracy"] == r["curve"][-1]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_without_purification_equals_cleverhans_pgd(norm):
    clf = classifier()
    x, y = inputs()
    s = attack.AttackSettings(
        eps=0.3, step_size=0.05, num_steps=7, norm=norm, random_start=True
    )
    tf.random.set_seed(11)
    want = projected_gradient_descent(
        clf,
        x,
        s.eps,
        s.step_size,
        s.num_steps,
        attack.NORMS[norm],
        clip_min=-1.0,
        clip_max=1.0,
        y=y,
        rand_init=True,
    )
    tf.random.set_seed(11)
    eta0 = attack.random_start(x, s)
    run = attack.batch_attack(defended(clf, num_steps=0), s)
    record, correct, _, got, _ = run(x, y, eta0, tf.constant([0, 0]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - x).max() > 0.1  # the attack moved the inputs
    # Deterministic classifier: verification agrees with the attack
    # replicate, so row i + 1 = natural and every iterate up to i correct.
    natural = np.argmax(clf(x), -1) == y.numpy()
    want_record = np.logical_and.accumulate(
        np.concatenate([natural[None], correct.numpy()]), axis=0
    )
    np.testing.assert_array_equal(record, want_record)
    assert np.mean(record[-1]) < np.mean(record[0])


def margin_setup(num_steps, temperature=0.5, step_size=0.3):
    # A linear 2-class classifier and E = ||x||^2 / 2: one Langevin step is
    # x -> c x + noise with c = 1 - eps^2 / (2T), so the exact gradient
    # through m steps is c^m times the BPDA one, and the margin's gradient
    # with respect to the purified states is m_other - m_y whatever the
    # noise.
    clf = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2, use_bias=False)])
    w = np.random.default_rng(2).normal(size=(D, 2)).astype("float32")
    clf.layers[0].kernel.assign(w)
    d = defended(
        clf, num_steps, HalfSquare(D), step_size=step_size, temperature=temperature
    )
    return d, w, 1 - step_size**2 / (2 * temperature)


def test_bpda_gradient_is_straight_through_and_grad_steps_exact():
    d, w, c = margin_setup(num_steps=5)
    x = tf.constant(np.random.default_rng(3).normal(size=(4, D)).astype("float32"))
    y = tf.constant([0, 1, 1, 0], tf.int32)
    h = 3
    direction = (w[:, 1] - w[:, 0])[None] * np.where(y.numpy() == 0, 1, -1)[:, None]
    for m in (0, 2, 5, 9):
        s = attack.AttackSettings(
            eps=0.1,
            step_size=0.1,
            num_steps=1,
            adv_replicates=h,
            loss="margin",
            grad_steps=m,
        )
        _, grad = gradients.eot_logits_and_grad(d, x, y, s, tf.constant([4, 5]))
        # Each replica gets 1/H of the averaged logits' gradient; the sum
        # over replicas is the gradient at the average.
        np.testing.assert_allclose(grad, c ** min(m, 5) * direction, rtol=1e-4)


def test_verification_decides_and_breaks_stay_broken():
    class Split(purify.DefendedClassifier):
        """The attack replicates always misclassify; verification is correct
        for images whose first coordinate is positive."""

        def __init__(self):
            self.num_steps = 1
            self.classifier = keras.layers.Identity()

        def purify(self, x, seed, num_steps=None):
            return tf.zeros_like(x) + tf.one_hot(1, D)

        def logits(self, x, num_replicates, seed):
            good = tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int32), D)
            return tf.where(x[:, :1] > 0, good, 1 - good)

    x = tf.constant(
        [[0.5] + [0.0] * (D - 1), [-0.5] + [0.0] * (D - 1), [0.05] + [0.0] * (D - 1)]
    )
    y = tf.constant([0, 0, 0], tf.int32)
    s = attack.AttackSettings(eps=0.2, step_size=0.1, num_steps=3, random_start=False)
    record, correct, broken, *_ = attack.batch_attack(Split(), s)(
        x, y, tf.zeros_like(x), tf.constant([0, 0])
    )
    assert not correct.numpy().any()
    # Image 0 is verified correct at every iterate (it stays in the positive
    # half-space: the PGD moves are 0.1 per step from 0.5); image 1 is wrong
    # from the natural verification on, and stays wrong.
    np.testing.assert_array_equal(record[:, 0], True)
    np.testing.assert_array_equal(record[:, 1], False)
    np.testing.assert_array_equal(broken[1], x[1])
    # Image 2 holds at the natural image and the start, and breaks at the
    # first PGD iterate (coordinate 0 falls by eta, the others rise: the
    # cross-entropy gradient of the identity "classifier"); that iterate is
    # the one kept.
    np.testing.assert_array_equal(record[:, 2], [True, True, False, False, False])
    np.testing.assert_allclose(
        broken[2], x[2] + 0.1 * np.array([-1.0] + [1.0] * (D - 1))
    )


def batch_file(folder, index):
    (path,) = folder.glob(f"batch_{index:05d}_*.npz")
    return path


def test_evaluate_resumes_with_each_batch_s_own_seeds(tmp_path):
    # Images on the decision boundary of a noisy defense: each record is
    # decided by the purification noise, so a batch run with the wrong
    # seeds would not reproduce.
    clf, _ = two_class(seed=0)
    d = purify.DefendedClassifier(gaussian_model(), clf, 3)
    x = np.zeros((10, D), "float32")
    y = np.zeros(10, "int32")
    s = attack.AttackSettings(
        eps=0.3, step_size=0.1, num_steps=3, adv_replicates=2, def_replicates=3
    )
    full = attack.evaluate(d, x, y, s, str(tmp_path / "a"), batch_size=4, seed=5)
    # The contract: batch b draws its start after set_seed(seed * 100003 + b)
    # and its noise from [seed, b]. Batch 1, recomputed alone that way:
    run = attack.batch_attack(d, s)
    tf.random.set_seed(5 * 100003 + 1)
    eta0 = attack.random_start(tf.constant(x[4:8]), s)
    record, *_ = run(
        tf.constant(x[4:8]), tf.constant(y[4:8]), eta0, tf.constant([5, 1])
    )
    saved = np.load(batch_file(tmp_path / "a", 1))
    np.testing.assert_array_equal(saved["record"], record)
    # Batches of the same images draw other noise: the per-image records of
    # the three batches are not all alike.
    records = [np.load(batch_file(tmp_path / "a", b))["record"] for b in range(3)]
    assert not (
        np.array_equal(records[0], records[1])
        and np.array_equal(records[0][:, :2], records[2])
    )
    # A kill after the first batch: the missing batches are recomputed, and
    # the result equals the uninterrupted run.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for b in (1, 2):
        batch_file(tmp_path / "b", b).unlink()
    (tmp_path / "b" / "partial.json").unlink()
    resumed = attack.evaluate(d, x, y, s, str(tmp_path / "b"), batch_size=4, seed=5)
    assert resumed["per_image_robust"] == full["per_image_robust"]
    assert resumed["curve"] == full["curve"]
    lo, hi = full["robust_ci95"]
    assert lo <= full["robust_accuracy"] <= hi and hi - lo > 0.2  # n = 10
    with pytest.raises(ValueError, match="other settings"):
        attack.evaluate(d, x, y, s, str(tmp_path / "a"), batch_size=5, seed=5)
    # A prefix of the images reuses the saved batches; other images in a
    # batch's place are not mistaken for it.
    head = attack.evaluate(
        d, x[:8], y[:8], s, str(tmp_path / "a"), batch_size=4, seed=5
    )
    assert head["per_image_robust"] == full["per_image_robust"][:8]
    assert len(list((tmp_path / "a").glob("batch_*.npz"))) == 3
    attack.evaluate(d, x + 0.5, y, s, str(tmp_path / "a"), batch_size=4, seed=5)
    assert len(list((tmp_path / "a").glob("batch_*.npz"))) == 6


def test_workers_split_the_batches_and_the_chief_summarizes(tmp_path):
    # Worker 1 of 2 attacks batches 1 and 3 only and returns nothing; the
    # chief then attacks 0 and 2, reads 1 and 3, and its summary equals a
    # one-worker run (each batch's seeds are its own, whoever runs it).
    clf, _ = two_class(seed=0)
    d = purify.DefendedClassifier(gaussian_model(), clf, 3)
    x = np.zeros((14, D), "float32")
    y = np.zeros(14, "int32")
    s = attack.AttackSettings(
        eps=0.3, step_size=0.1, num_steps=2, adv_replicates=2, def_replicates=3
    )
    one = attack.evaluate(d, x, y, s, str(tmp_path / "one"), batch_size=4, seed=2)
    out = str(tmp_path / "two")
    worker = attack.Shard(1, 2, wait=False)
    assert attack.evaluate(d, x, y, s, out, batch_size=4, seed=2, shard=worker) is None
    assert sorted(p.name[:11] for p in (tmp_path / "two").glob("batch_*")) == [
        "batch_00001",
        "batch_00003",
    ]
    chief = attack.Shard(0, 2)
    two = attack.evaluate(d, x, y, s, out, batch_size=4, seed=2, shard=chief)
    assert two["per_image_robust"] == one["per_image_robust"]
    assert two["curve"] == one["curve"]
    for b in range(4):
        np.testing.assert_array_equal(
            np.load(batch_file(tmp_path / "two", b))["record"],
            np.load(batch_file(tmp_path / "one", b))["record"],
        )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="step_size <= eps"):
        attack.AttackSettings(eps=0.1, step_size=0.2, num_steps=1)
    with pytest.raises(ValueError, match="norm"):
        attack.AttackSettings(eps=0.1, step_size=0.1, num_steps=1, norm="l1")


def test_worst_case_is_per_image_and_per_seed_over_the_defended_attacks():
    from keras_ebm.defense import summary

    def run(seed, robust):
        return dict(seed=seed, per_image_robust=robust)

    runs = {
        "bpda_eot": [run(0, [1, 1, 0, 1]), run(1, [1, 0, 0, 0])],
        "full_gradient": [run(0, [1, 0, 1, 1])],
    }
    worst = summary.worst_case(runs)
    # Only seed 0 has both attacks: images 0 and 3 survive both.
    assert [w["seed"] for w in worst["per_seed"]] == [0]
    assert worst["robust_accuracy"] == 0.5 and worst["num_images"] == 4
    # An attack run on the first images only: the worst case over those.
    runs["full_gradient"] = [run(0, [0, 1]), run(1, [0, 0])]
    worst = summary.worst_case(runs)
    assert [w["robust_accuracy"] for w in worst["per_seed"]] == [0.5, 0.0]
    assert worst["robust_accuracy"] == 0.25 and worst["num_images"] == 2


def test_fields_added_later_keep_earlier_attacks_named_as_they_were():
    # Issue 13's attacks were cached under a hash of the fields of then; a
    # field added since, at its default, must not rename them.
    import hashlib
    import json

    s = attack.AttackSettings(eps=0.3, step_size=0.1, num_steps=5, grad_steps=4)
    then = {k: v for k, v in dataclasses.asdict(s).items() if k not in attack.ADDED}
    blob = json.dumps(dict(then, seed=1), sort_keys=True)
    assert (
        attack.settings_key(s, seed=1) == hashlib.sha256(blob.encode()).hexdigest()[:12]
    )
    surrogate = dataclasses.replace(s, surrogate_beta=20.0)
    assert attack.settings_key(surrogate, seed=1) != attack.settings_key(s, seed=1)
    assert attack.identity(surrogate)["surrogate_beta"] == 20.0
    assert attack.AttackSettings(**attack.identity(surrogate)) == surrogate


def test_a_cascade_attacks_the_survivors_and_enters_the_worst_case():
    from keras_ebm.defense import plan, summary

    def run(seed, robust, **kw):
        return dict(seed=seed, per_image_robust=robust, **kw)

    runs = {
        "bpda_eot": [run(0, [1, 1, 0, 1, 1]), run(1, [1, 1, 1, 1, 1])],
        "surrogate_b20": [run(0, [1, 0, 1, 1])],  # the first 4 images only
    }
    # Seed 0: image 1 broken by the surrogate, 2 by BPDA; image 4 is past
    # the surrogate's images and BPDA left it. Seed 1: only BPDA ran.
    np.testing.assert_array_equal(summary.survivors(runs, 0, 5), [0, 3, 4])
    np.testing.assert_array_equal(summary.survivors(runs, 1, 3), [0, 1, 2])
    seen = {}

    def each_seed(name, d, settings, seeds, count=None, images=None, labels=None):
        seen[seeds[0]] = images
        return [run(seeds[0], [0, 1, 1])]  # broke the first survivor

    planned = plan.Planned("spsa", None, (0,), cascade=True)
    images, labels = np.arange(5) * 10, np.arange(5)
    (r,) = summary.run_planned(planned, None, images, labels, runs, each_seed)
    np.testing.assert_array_equal(seen[0], [0, 30, 40])
    assert r["image_indices"] == [0, 3, 4] and r["images_total"] == 5
    np.testing.assert_array_equal(summary.per_image(r), [0, 0, 0, 1, 1])
    runs["spsa"] = [r]
    worst = summary.worst_case(runs)
    # Seed 0 over the 4 images every attack covered: image 3 alone.
    assert [w["seed"] for w in worst["per_seed"]] == [0]
    assert worst["robust_accuracy"] == 0.25 and worst["num_images"] == 4
    # Nothing left to attack: no run, and the worst case is not held back.
    runs["bpda_eot"][0]["per_image_robust"] = [0, 0, 0, 0, 0]
    assert summary.run_planned(planned, None, images, labels, runs, each_seed) == []
    del runs["spsa"]
    runs["spsa"] = [run(2, [1], image_indices=[0], images_total=5)]
    assert summary.worst_case(runs)["per_seed"][0]["robust_accuracy"] == 0.0


class TanhEnergy(keras.Model):
    """A small smooth energy: its Hessian is not zero, so the exact gradient
    through Langevin differs from the straight-through one."""

    def __init__(self, dim, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = (dim,)
        keras.utils.set_random_seed(seed)
        self.net = keras.Sequential(
            [keras.Input((dim,)), keras.layers.Dense(16, "tanh"), keras.layers.Dense(1)]
        )

    def call(self, x, training=False):
        return 2.0 * self.net(x)


def plain_exact_grad(d, x, y, s, seed):
    """Every Langevin step on one tape (memory linear in K_def): the
    reference the checkpointed gradient must equal."""
    h, k = s.adv_replicates, d.num_steps
    m = min(s.grad_steps, k)
    x_rep = tf.repeat(x, h, axis=0)
    head = d.purify(x_rep, seed, num_steps=k - m)
    with tf.GradientTape() as tape:
        tape.watch(x_rep)
        states = x_rep + tf.stop_gradient(head - x_rep)
        states = d.purify(states, seed, num_steps=m, first_step=k - m)
        out = d.classifier(states)
        logits = tf.reduce_mean(tf.reshape(out, (-1, h, out.shape[-1])), axis=1)
        loss = gradients.attack_loss(logits, y, s.loss)
    grad = tape.gradient(loss, x_rep)
    return logits, tf.reduce_sum(tf.reshape(grad, (-1, h, x.shape[-1])), axis=1)


@pytest.mark.parametrize("grad_steps, segment", [(13, 1), (13, 4), (13, 0), (8, 3)])
def test_checkpointed_gradient_equals_the_plain_exact_gradient(grad_steps, segment):
    k = 13
    d = defended(classifier(), k, TanhEnergy(D), step_size=0.3)
    x, y = inputs(n=5)
    seed = tf.constant([7, 8])
    s = attack.AttackSettings(
        eps=0.1,
        step_size=0.1,
        num_steps=1,
        adv_replicates=3,
        grad_steps=grad_steps,
        checkpoint_every=segment,
    )
    logits, grad = gradients.eot_logits_and_grad(d, x, y, s, seed)
    want_logits, want = plain_exact_grad(d, x, y, s, seed)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)
    # The smooth energy bends the gradient: BPDA would be visibly wrong.
    _, bpda = gradients.eot_logits_and_grad(
        d, x, y, dataclasses.replace(s, grad_steps=0), seed
    )
    assert np.abs(bpda - want).max() > 1e-2 * np.abs(want).max()


def test_full_gradient_over_many_steps_in_closed_form():
    # E = ||x||^2 / 2 at T: each step is x -> c x + noise, so the exact
    # gradient through all K_def steps is c^K_def times the straight-through
    # one, whatever the noise (13 segments of 15 steps and one of 5).
    k = 200
    d, w, c = margin_setup(num_steps=k, temperature=1.0, step_size=0.1)
    x = tf.constant(np.random.default_rng(3).normal(size=(4, D)).astype("float32"))
    y = tf.constant([0, 1, 1, 0], tf.int32)
    direction = (w[:, 1] - w[:, 0])[None] * np.where(y.numpy() == 0, 1, -1)[:, None]
    s = attack.AttackSettings(
        eps=0.1,
        step_size=0.1,
        num_steps=1,
        adv_replicates=2,
        loss="margin",
        grad_steps=k,
    )
    assert gradients.segment_length(k) == 15
    _, grad = gradients.eot_logits_and_grad(d, x, y, s, tf.constant([1, 2]))
    np.testing.assert_allclose(grad, c**k * direction, rtol=1e-4)
    assert 0.3 < c**k < 0.4


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_through_a_relu_energy_the_pathwise_gradient_is_the_bpda_gradient(activation):
    # A ReLU network's energy is piecewise linear in x: its Hessian is zero
    # almost everywhere, so every Langevin step's Jacobian is the identity
    # and the exact gradient along each noise path is straight-through.
    # (The reference's SNGAN EBMs, and ours by default, are such networks;
    # ebm_biggan is not: its attention has a softmax.) This says nothing of
    # the gradient of the expected loss, which the noise smooths into a
    # contraction that no pathwise gradient sees (gradients_test,
    # attack_unit_test). The same network with a smooth activation bends
    # even the pathwise gradient.
    from keras_ebm import networks

    keras.utils.set_random_seed(0)
    ebm = networks.build(
        "ebm_small", image_shape=(8, 8, 1), width=8, activation=activation
    )
    clf = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(C)]
    )
    model = EnergyModel(ebm, num_steps=1, step_size=0.05, temperature=1e-2)
    d = purify.DefendedClassifier(model, clf, 30)
    x = tf.random.stateless_uniform((3, 8, 8, 1), [0, 1], -1, 1)
    y = tf.constant([0, 1, 2])
    s = attack.AttackSettings(
        eps=0.1, step_size=0.1, num_steps=1, adv_replicates=2, grad_steps=30
    )
    seed = tf.constant([3, 4])
    purified = d.purify(tf.repeat(x, 2, axis=0), seed)
    assert float(tf.reduce_max(tf.abs(purified - tf.repeat(x, 2, axis=0)))) > 0.1
    _, full = gradients.eot_logits_and_grad(d, x, y, s, seed)
    _, bpda = gradients.eot_logits_and_grad(
        d, x, y, dataclasses.replace(s, grad_steps=0), seed
    )
    if activation == "relu":
        np.testing.assert_allclose(full, bpda, rtol=1e-4, atol=1e-6)
    else:
        gap = np.abs(full.numpy() - bpda.numpy()).max()
        assert gap > 1e-3 * np.abs(bpda.numpy()).max()


def test_purification_image_steps_count_every_forward_chain():
    # 3 images, 2 PGD steps (3 iterates). Row i of the record holds the
    # images defended before iterate i; an image is verified when its H_adv
    # replicates are wrong and it is still defended. Counted by hand:
    record = np.array(
        [
            [True, True, False],  # natural verification
            [True, True, False],  # after iterate 0
            [True, False, False],  # after iterate 1
            [True, False, False],  # after iterate 2
        ]
    )
    adv_correct = np.array(
        [
            [True, False, False],  # iterate 0: image 1 checked (2 not defended)
            [False, False, True],  # iterate 1: images 0 and 1 checked
            [True, True, True],  # iterate 2: none
        ]
    )
    s = attack.AttackSettings(
        eps=0.1, step_size=0.1, num_steps=2, adv_replicates=4, def_replicates=7
    )
    # K_def x (H_adv x 3 images x 3 iterates + H_def x (3 naturals + 3 checks))
    want = 10 * (4 * 3 * 3 + 7 * (3 + 3))
    assert attack.purification_image_steps(record, adv_correct, s, 10) == want
