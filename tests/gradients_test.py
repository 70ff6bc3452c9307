"""The attack gradients beyond BPDA: the surrogate potential and smooth
twins, the surrogate gradient in closed form, SPSA against analytic
gradients, the finite-difference reference and the gradient check."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import networks
from keras_ebm.defense import attack, gradients, purify
from keras_ebm.models import EnergyModel
from keras_ebm.networks import smooth
from keras_ebm.sampling import surrogate_potential
from tests.attack_unit_test import Well, linear_classifier
from tests.linear_nets import HalfSquare, gaussian_law

# === The surrogate potential and the smooth twin ===


def test_surrogate_potential_has_u_s_value_and_gradient_and_the_twin_s_hessian():
    def u(x):
        return tf.reduce_sum(tf.sin(3.0 * x), axis=1)

    def u_s(x):
        return tf.reduce_sum(x**3, axis=1)

    x = tf.constant([[0.3, -0.7, 1.1], [0.5, 0.2, -0.4]])
    v = tf.constant([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    mixed = surrogate_potential(u, u_s)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            value = mixed(x)
            total = tf.reduce_sum(value)
        grad = inner.gradient(total, x)
        directional = tf.reduce_sum(grad * v)
    hessian_v = outer.gradient(directional, x)
    np.testing.assert_allclose(value, u(x), rtol=1e-6)
    np.testing.assert_allclose(grad, 3.0 * np.cos(3.0 * x), rtol=1e-5)
    np.testing.assert_allclose(hessian_v, 6.0 * x * v, rtol=1e-5)  # hess u_s


def test_smooth_twin_swaps_every_relu_and_puts_them_back():
    keras.utils.set_random_seed(0)
    ebm = networks.build("ebm_small", image_shape=(8, 8, 1), width=8)
    x = tf.random.stateless_uniform((4, 8, 8, 1), [0, 1], -1, 1)
    before = ebm(x).numpy()
    # Each EBMBlock's act and the network's own (stem, two blocks, head).
    assert len(smooth.relu_sites([ebm])) == 4
    gaps = []
    for beta in (5.0, 50.0, 5000.0):
        with smooth.smooth_relu([ebm], beta) as swapped:
            assert swapped == 4
            gaps.append(np.abs(ebm(x).numpy() - before).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[0] > 1e-3 and gaps[2] < 1e-4
    np.testing.assert_array_equal(ebm(x).numpy(), before)  # restored
    silu = networks.build(
        "ebm_small", image_shape=(8, 8, 1), width=8, activation="silu"
    )
    assert smooth.relu_sites([silu]) == []  # already smooth: nothing to swap


def test_the_biggan_ebm_has_a_smooth_twin_too():
    # Its ReLUs are attributes (blocks and head); the attention's softmax is
    # smooth already and its max-pooling stays (the twin smooths ReLUs only).
    keras.utils.set_random_seed(0)
    net = networks.build("ebm_biggan", image_shape=(64, 64, 3), channel_width=8)
    x = tf.random.stateless_uniform((2, 64, 64, 3), [0, 2], -1, 1)
    before = net(x).numpy()
    blocks = sum(type(layer).__name__ == "EBMBlockBigGAN" for layer in net.layers_out)
    assert len(smooth.relu_sites([net])) == blocks + 1
    with smooth.smooth_relu([net], 2.0):
        assert np.abs(net(x).numpy() - before).max() > 1e-3 * np.abs(before).max()
    np.testing.assert_array_equal(net(x).numpy(), before)


def test_smooth_twin_of_leaky_relu_and_dense_activations():
    keras.utils.set_random_seed(1)
    mlp = networks.build("ebm_toy")  # LeakyReLU(0.05) between Dense layers
    dense = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, "relu")])
    x = tf.constant([[0.3, -1.2], [2.0, 0.1]])
    z = tf.constant([[-2.0, -0.001, 0.0, 0.5, 3.0]])
    for net, sites in ((mlp, 1), (dense, 1)):
        before = net(x).numpy()
        with smooth.smooth_relu([net], 2.0) as swapped:
            assert swapped == sites
            assert np.abs(net(x).numpy() - before).max() > 1e-2
        with smooth.smooth_relu([net], 1e5):
            np.testing.assert_allclose(net(x), before, atol=1e-3)
    with smooth.smooth_relu([mlp], 2.0):
        act = mlp.act
    want = 0.05 * z + 0.95 * np.log1p(np.exp(2.0 * z.numpy())) / 2.0
    np.testing.assert_allclose(act(z), want, rtol=1e-5)
    assert isinstance(mlp.act, keras.layers.LeakyReLU)
    with pytest.raises(ValueError, match="beta must be positive"):
        with smooth.smooth_relu([mlp], 0.0):
            pass


# === The surrogate gradient ===


def well_defense(k, w1=10.0):
    model = EnergyModel(Well(), num_steps=1, step_size=0.1, temperature=1.0)
    return purify.DefendedClassifier(model, linear_classifier(w1, 1.0, 0.2), k)


def settings(**kw):
    return attack.AttackSettings(eps=1.0, step_size=0.1, num_steps=1, **kw)


def test_surrogate_gradient_is_the_twin_jacobian_at_the_true_chain_states():
    # E = a |x1| is separable: the twin's step multiplies d/dx1 by
    # 1 - (eps^2 / 2T) E_s''(x1_k), E_s'' = 2 a beta s (1 - s), s =
    # sigmoid(beta x1_k), at the states x1_k of the TRUE chain (which the
    # forward pass follows); x2 passes straight through. Margin loss, one
    # replicate: d margin / d x_K = (10, 1).
    k, beta, a, drift = 12, 4.0, 20.0, 0.1**2 / 2
    d = well_defense(k)
    x = tf.constant([[0.35, -0.2], [-0.05, 0.4], [0.8, 0.0]])
    y = tf.zeros(3, tf.int32)
    seed = tf.constant([5, 6])
    s = settings(loss="margin", grad_steps=k, surrogate_beta=beta)
    _, grad = gradients.eot_logits_and_grad(d, x, y, s, seed)
    states, factor = x, np.ones(3)
    for i in range(k):
        sig = tf.sigmoid(beta * states[:, 0]).numpy()
        factor *= 1 - drift * 2 * a * beta * sig * (1 - sig)
        states = d.purify(states, seed, num_steps=1, first_step=i)
    np.testing.assert_allclose(states, d.purify(x, seed), atol=1e-6)
    np.testing.assert_allclose(grad[:, 0], 10 * factor, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad[:, 1], 1.0, rtol=1e-6)
    assert np.abs(factor).max() < 0.5  # the twin sees the contraction
    exact = gradients.eot_logits_and_grad(
        d, x, y, dataclasses.replace(s, surrogate_beta=0.0), seed
    )[1]
    np.testing.assert_allclose(exact, [[10.0, 1.0]] * 3, rtol=1e-6)  # BPDA's


def smooth_and_relu_ebms(temperature=1e-2):
    keras.utils.set_random_seed(0)
    clf = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    out = {}
    for activation in ("silu", "relu"):
        keras.utils.set_random_seed(0)
        ebm = networks.build(
            "ebm_small", image_shape=(8, 8, 1), width=8, activation=activation
        )
        model = EnergyModel(ebm, num_steps=1, step_size=0.05, temperature=temperature)
        out[activation] = purify.DefendedClassifier(model, clf, 20)
    x = tf.random.stateless_uniform((3, 8, 8, 1), [0, 1], -1, 1)
    return out, x, tf.constant([0, 1, 2])


def test_surrogate_is_the_exact_gradient_on_a_smooth_ebm_and_bpda_as_beta_grows():
    defenses, x, y = smooth_and_relu_ebms()
    seed = tf.constant([3, 4])
    s = settings(adv_replicates=2, grad_steps=20)
    d = defenses["silu"]
    _, exact = gradients.eot_logits_and_grad(d, x, y, s, seed)
    _, surrogate = gradients.eot_logits_and_grad(
        d, x, y, dataclasses.replace(s, surrogate_beta=5.0), seed
    )
    np.testing.assert_allclose(surrogate, exact, rtol=1e-4, atol=1e-6)
    # ReLU: the twin's curvature, beta s'(beta z), sits within ~1/beta of
    # each kink. At fixed states it vanishes once beta exceeds 1 / (the
    # smallest |pre-activation| along the chain), leaving BPDA's identity;
    # on the way there it is erratic (a beta-tall spike on whichever unit is
    # nearest its kink; BUILD_NOTES), so only the two ends are asserted.
    d = defenses["relu"]
    _, bpda = gradients.eot_logits_and_grad(
        d, x, y, dataclasses.replace(s, grad_steps=0), seed
    )

    def gap(beta):
        _, g = gradients.eot_logits_and_grad(
            d, x, y, dataclasses.replace(s, surrogate_beta=beta), seed
        )
        return float(tf.reduce_max(tf.abs(g - bpda)) / tf.reduce_max(tf.abs(bpda)))

    assert gap(3.0) > 3e-3
    assert gap(1e8) < 1e-5


def test_on_a_relu_energy_the_surrogate_points_where_the_expected_loss_rises():
    # The contraction pair of attack_unit_test: the gradient of the expected
    # margin is ~(0, 1) (purification forgets x1); BPDA's is (10, 1).
    d = well_defense(30)
    x = tf.constant([[-0.5, -0.5], [0.3, 0.1]])
    y = tf.zeros(2, tf.int32)
    base = settings(loss="margin", adv_replicates=32)
    check = gradients.gradient_check(
        d,
        x.numpy(),
        y.numpy(),
        {
            "bpda": base,
            "surrogate": dataclasses.replace(base, grad_steps=30, surrogate_beta=10.0),
            "spsa": dataclasses.replace(
                base, adv_replicates=8, spsa_samples=64, spsa_delta=0.1
            ),
        },
        loss="margin",
        replicates=512,
        delta=0.1,
        draws=2,
        seed=0,
    )
    cos = {k: np.array(v["cos_mean"]) for k, v in check["estimators"].items()}
    assert np.all(np.array(check["fd_split_half"]) > 0.9)
    assert np.all(cos["bpda"] < 0.3)
    assert np.all(cos["surrogate"] > 0.9)
    assert np.all(cos["spsa"] > 0.9)


# === SPSA ===


def quadratic_logits(a, b):
    """Two classes, logit 1 - logit 0 = q(x) = x^T A x / 2 + b^T x, so the
    margin loss of label 0 is q and its gradient A x + b."""

    def logits(x, num_replicates, seed):
        q = 0.5 * tf.einsum("bi,ij,bj->b", x, a, x) + tf.matmul(x, b)[:, 0]
        return tf.stack([tf.zeros_like(q), q], axis=1)

    return logits


def test_spsa_agrees_with_the_analytic_gradient_of_a_quadratic():
    # Central differences are exact on a quadratic: each pair gives
    # v . g, and the estimate (1/N) sum v v^T g has mean g and per-entry
    # variance (||g||^2 - g_j^2) / N.
    rng = np.random.default_rng(0)
    dim, n = 6, 16
    m = rng.normal(size=(dim, dim)).astype("float32")
    a = tf.constant(m + m.T)
    b = tf.constant(rng.normal(size=(dim, 1)).astype("float32"))
    x = tf.constant(rng.normal(size=(1, dim)).astype("float32"))
    y = tf.zeros(1, tf.int32)
    g = (tf.linalg.matvec(a, x[0]) + b[:, 0]).numpy()
    s = settings(loss="margin", spsa_samples=n, spsa_delta=0.05)
    fn = quadratic_logits(a, b)
    draws = np.stack(
        [
            gradients.spsa_logits_and_grad(fn, x, y, s, tf.constant([i, 7]))[1][0]
            for i in range(400)
        ]
    )
    sd = np.sqrt((np.sum(g**2) - g**2) / n)
    assert np.all(np.abs(draws.mean(0) - g) < 4 * sd / np.sqrt(len(draws)))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.2)
    # One draw's pairs, recomputed by hand from the same directions.
    v = gradients.rademacher((n, 1, dim), gradients._fold(tf.constant([0, 7]), 1))
    np.testing.assert_allclose(
        draws[0],
        np.mean((v.numpy()[:, 0] @ g)[:, None] * v.numpy()[:, 0], 0),
        rtol=1e-3,
        atol=1e-3,
    )


def gaussian_defense(k=6, step_size=0.3, temperature=0.5, dim=4):
    """E = ||x||^2 / 2: purification is x -> c^K x + N(0, v), so with a
    linear classifier and the margin loss every expected-loss gradient is
    c^K w, w the margin's direction."""
    model = EnergyModel(
        HalfSquare(dim), num_steps=1, step_size=step_size, temperature=temperature
    )
    w = np.random.default_rng(2).normal(size=(dim, 2)).astype("float32")
    clf = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(2, use_bias=False)])
    clf.layers[0].kernel.assign(w)
    ck, _ = gaussian_law(k, step_size, temperature)
    # Label 0: margin = z_1 - z_0.
    return purify.DefendedClassifier(model, clf, k), ck, w[:, 1] - w[:, 0]


def test_spsa_pairs_share_their_purification_noise():
    # With common noise the noise cancels in each pair: the estimate is the
    # deterministic (1/N) sum v v^T (c^K w), whatever the noise scale.
    d, ck, w = gaussian_defense()
    x = tf.constant([[0.2, -0.1, 0.4, 0.0]])
    y = tf.zeros(1, tf.int32)
    s = settings(loss="margin", adv_replicates=2, spsa_samples=8, spsa_delta=0.01)
    seed = tf.constant([1, 2])
    _, g = gradients.spsa_logits_and_grad(d.logits, x, y, s, seed)
    v = gradients.rademacher((8, 1, 4), gradients._fold(seed, 1)).numpy()[:, 0]
    want = np.mean((v @ (ck * w))[:, None] * v, axis=0)
    np.testing.assert_allclose(g[0], want, rtol=1e-3, atol=1e-4)


# === The finite-difference reference and the check ===


def test_finite_differences_of_the_expected_loss_in_closed_form():
    # Two images of two labels: label 1's margin is -(label 0's).
    d, ck, w = gaussian_defense()
    x = np.array([[0.2, -0.1, 0.4, 0.0], [0.5, 0.3, -0.2, 0.1]], "float32")
    full, half_a, half_b = gradients.finite_difference_gradient(
        d,
        x,
        np.array([0, 1]),
        replicates=4,
        delta=0.05,
        loss="margin",
        seed=tf.constant([0, 3]),
        max_chains=12,  # three directions a call: chunks share nothing
    )
    for g in (full, half_a, half_b):
        np.testing.assert_allclose(g, [ck * w, -ck * w], rtol=1e-4, atol=1e-5)


def test_gradient_check_reports_each_estimator_against_the_reference():
    # Gaussian purifier: the exact gradient is c^K w (cosine 1, norm ratio
    # 1); BPDA's is w (cosine 1, norm ratio c^-K); SPSA's points roughly
    # along it. Every estimator is compared on the check's loss (margin),
    # whatever its attack ascends.
    d, ck, w = gaussian_defense(k=8)
    x = np.array([[0.2, -0.1, 0.4, 0.0], [0.0, 0.3, -0.2, 0.1]], "float32")
    y = np.zeros(2, "int32")
    base = settings(loss="ce", adv_replicates=4)
    check = gradients.gradient_check(
        d,
        x,
        y,
        {
            "bpda": base,
            "exact": dataclasses.replace(base, grad_steps=8),
            "spsa": dataclasses.replace(base, spsa_samples=64, spsa_delta=0.02),
        },
        loss="margin",
        replicates=4,
        delta=0.05,
        draws=3,
        seed=1,
    )
    assert (check["points"], check["replicates"], check["draws"]) == (2, 4, 3)
    assert check["loss"] == "margin" and list(check["estimators"]) == [
        "bpda",
        "exact",
        "spsa",
    ]
    e = check["estimators"]
    np.testing.assert_allclose(e["exact"]["cos_one_draw"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(e["exact"]["norm_ratio"], 1.0, rtol=1e-4)
    np.testing.assert_allclose(e["bpda"]["cos_mean"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(e["bpda"]["norm_ratio"], 1.0 / ck, rtol=1e-4)
    assert ck < 0.6
    # SPSA's draws, recomputed from the seeds the check gives them: one
    # draw's cosine is their mean cosine, the mean's is the mean draw's.
    spsa = dataclasses.replace(base, loss="margin", spsa_samples=64, spsa_delta=0.02)
    draws = np.stack(
        [
            gradients.logits_and_grad(d, x, y, spsa, tf.constant([1, 2000 + i]))[1]
            for i in range(3)
        ]
    )
    ref = ck * w
    for i in range(2):
        one = np.mean([gradients.cosine(g[i], ref) for g in draws])
        mean = draws[:, i].mean(0)
        assert e["spsa"]["cos_one_draw"][i] == pytest.approx(one, rel=1e-5)
        assert e["spsa"]["cos_mean"][i] == pytest.approx(
            gradients.cosine(mean, ref), rel=1e-5
        )
        assert e["spsa"]["norm_ratio"][i] == pytest.approx(
            np.linalg.norm(mean) / np.linalg.norm(ref), rel=1e-4
        )
    assert np.all(np.array(e["spsa"]["cos_mean"]) > np.array(e["spsa"]["cos_one_draw"]))
    np.testing.assert_allclose(check["fd_split_half"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(check["ceiling"], 1.0, rtol=1e-5)


def test_reliability_is_the_spearman_brown_ceiling():
    # Halves that agree at r predict a full-sample reliability 2r / (1 + r).
    assert gradients.reliability(1.0) == pytest.approx(1.0)
    assert gradients.reliability(1 / 3) == pytest.approx(np.sqrt(0.5))
    assert gradients.reliability(-0.2) == 0.0


def test_non_finite_gradients_are_zeroed_and_counted():
    @tf.custom_gradient
    def poisoned(x):
        # Identity forward; the gradient of images with x1 > 0 is NaN.
        def grad(upstream):
            bad = tf.reshape(x[:, 0] > 0, (-1, 1))
            return tf.where(bad, np.nan, upstream)

        return tf.identity(x), grad

    clf = linear_classifier(1.0, 1.0, 0.0)
    wrapped = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(poisoned), clf])
    d, _, _ = gaussian_defense(dim=2)
    d = purify.DefendedClassifier(d.model, wrapped, 0)
    x = tf.constant([[0.5, -0.9], [-0.5, -0.9], [0.5, -0.9]])
    s = attack.AttackSettings(eps=1.0, step_size=0.1, num_steps=3, random_start=False)
    result = attack.batch_attack(d, s)(
        x, tf.zeros(3, tf.int32), tf.zeros_like(x), tf.constant([0, 0])
    )
    # Images 0 and 2 never move (their gradient is zeroed at each of the 4
    # evaluations); image 1 does.
    assert int(result.nonfinite) == 2 * 4
    np.testing.assert_array_equal(result.x_adv.numpy()[[0, 2]], x.numpy()[[0, 2]])
    assert np.abs(result.x_adv.numpy()[1] - x.numpy()[1]).max() > 0.1


def test_momentum_accumulates_l1_normalized_gradients():
    g1 = tf.constant([[1.0, -3.0], [0.0, 0.0]])
    g2 = tf.constant([[-4.0, 0.0], [2.0, -2.0]])
    v = attack.accumulate(tf.zeros_like(g1), g1, 0.5)
    np.testing.assert_allclose(v, [[0.5, -1.5], [0.0, 0.0]])  # /mean|g|; 0 stays 0
    v = attack.accumulate(v, g2, 0.5)
    np.testing.assert_allclose(v, [[0.25 - 2.0, -0.75], [1.0, -1.0]])
    # Momentum 0: the sign (l_inf) and the l2 direction of the gradient.
    plain = attack.accumulate(v, g2, 0.0)
    np.testing.assert_array_equal(np.sign(plain), np.sign(g2))


def test_pgd_steps_along_the_accumulated_direction():
    # No purification, a deterministic tanh classifier: the attack's iterates
    # are PGD on MI-FGSM's accumulated direction, recomputed by hand.
    from tests.attack_test import classifier, inputs

    clf = classifier()
    x, y = inputs(n=4)
    s = attack.AttackSettings(
        eps=0.3, step_size=0.05, num_steps=6, random_start=False, momentum=0.8
    )
    d = purify.DefendedClassifier(gaussian_defense(dim=6)[0].model, clf, 0)
    got = attack.batch_attack(d, s)(x, y, tf.zeros_like(x), tf.constant([0, 0]))
    x_adv, v = x, tf.zeros_like(x)
    for _ in range(s.num_steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = gradients.attack_loss(clf(x_adv), y, "ce")
        v = attack.accumulate(v, tape.gradient(loss, x_adv), s.momentum)
        x_adv = attack.pgd_step(x_adv, v, x, s)
    np.testing.assert_allclose(got.x_adv, x_adv, atol=1e-6)
    plain = attack.batch_attack(d, dataclasses.replace(s, momentum=0.0))(
        x, y, tf.zeros_like(x), tf.constant([0, 0])
    )
    assert np.abs(plain.x_adv.numpy() - x_adv.numpy()).max() > 1e-3


def test_bad_estimator_settings_are_refused():
    for kw, match in [
        (dict(surrogate_beta=5.0), "surrogate_beta"),
        (dict(grad_steps=3, surrogate_beta=-1.0), "surrogate_beta"),
        (dict(spsa_samples=4), "spsa_delta"),
        (dict(spsa_samples=4, spsa_delta=0.1, grad_steps=2), "SPSA uses no gradient"),
        (dict(spsa_samples=-1), "spsa_samples"),
        (dict(momentum=1.0), "momentum"),
    ]:
        with pytest.raises(ValueError, match=match):
            settings(**kw)
    assert settings().estimator == "bpda"
    assert settings(grad_steps=2).estimator == "exact"
    assert settings(grad_steps=2, surrogate_beta=1.0).estimator == "surrogate"
    assert settings(spsa_samples=2, spsa_delta=0.1).estimator == "spsa"
