"""The reference's BigGAN networks as its checkpoints hold them.

Written from ebm-life-cycle `nets.py` (`EBMBigGAN`, `GenBigGANCond`) and
tf2-model-clones `save_biggan_tf2.ipynb`, independently of
`keras_ebm.networks.biggan`: the key layout of each checkpoint (with the
`tfa` spectral-norm wrappers' `w`, `layer/bias`, `sn_u`), a writer that
saves random tensors in that object-graph layout, and a forward pass that
reads the tensors by key. A loaded keras_ebm network must compute what this
forward pass computes from the same checkpoint.
"""

import numpy as np
import tensorflow as tf

# (down/up, in, out) per block, "A" where the attention layer sits.
EBM_PLANS = {
    224: "T12 F22 T24 F44 A T48 F88 T88 F88 T8g Fgg Tgg Fgg",
    128: "T12 F22 A T24 F44 T48 F88 T8g Fgg Tgg Fgg",
    64: "F11 A T12 F22 T24 F44 T48 F88 T8g Fgg",
}
GEN_PLANS = {
    128: "Fgg Tgg Fgg Tg8 F88 T84 F44 T42 A F22 T21",
    256: "Fgg Tgg Fgg Tg8 F88 T88 F88 T84 A F44 T42 F22 T21",
}


def _plan(text):
    mult = {"1": 1, "2": 2, "4": 4, "8": 8, "g": 16}
    return [
        "attention" if t == "A" else (t[0] == "T", mult[t[1]], mult[t[2]])
        for t in text.split()
    ]


def _sn_conv(spec, name, k, c_in, c_out, bias=True):
    spec[f"{name}/w"] = (k, k, c_in, c_out)
    if bias:
        spec[f"{name}/layer/bias"] = (c_out,)
    spec[f"{name}/sn_u"] = (1, c_out)


def _sn_dense(spec, name, c_in, c_out, bias=False):
    spec[f"{name}/w"] = (c_in, c_out)
    if bias:
        spec[f"{name}/layer/bias"] = (c_out,)
    spec[f"{name}/sn_u"] = (1, c_out)


def _attention(spec, p, c):
    for part, out in (("theta", c // 8), ("phi", c // 8), ("g", c // 2)):
        _sn_conv(spec, f"{p}/snconv1x1_{part}", 1, c, out, bias=False)
    _sn_conv(spec, f"{p}/snconv1x1_o_conv", 1, c // 2, c, bias=False)
    spec[f"{p}/gamma"] = (1,)


def ebm_spec(size, ch=48):
    """Key -> shape of an `EBMBigGAN` checkpoint (keys below the model)."""
    spec = {}
    _sn_conv(spec, "rgb_conv", 3, 3, ch)
    for i, item in enumerate(_plan(EBM_PLANS[size])):
        p = f"layers_out/{i}"
        if item == "attention":
            _attention(spec, p, ch * _plan(EBM_PLANS[size])[i + 1][1])
            continue
        _, c_in, c_out = item
        c_in, c_out = ch * c_in, ch * c_out
        _sn_conv(spec, f"{p}/conv_0", 1, c_in, c_in // 4)
        _sn_conv(spec, f"{p}/conv_1", 3, c_in // 4, c_in // 4)
        _sn_conv(spec, f"{p}/conv_2", 3, c_in // 4, c_in // 4)
        _sn_conv(spec, f"{p}/conv_3", 1, c_in // 4, c_out)
        if c_in != c_out:
            _sn_conv(spec, f"{p}/conv_sc", 1, c_in, c_out - c_in)
    _sn_dense(spec, "linear_head", 16 * ch, 1)
    return spec


def _bn(spec, p, c, n_stats, conditional=True, cond_dim=256):
    spec[f"{p}/mean"] = (n_stats, c)
    spec[f"{p}/var"] = (n_stats, c)
    if conditional:
        _sn_dense(spec, f"{p}/scale", cond_dim, c)
        _sn_dense(spec, f"{p}/offset", cond_dim, c)
    else:
        spec[f"{p}/w"] = (c,)
        spec[f"{p}/b"] = (c,)


def gen_spec(resolution, ch=128, num_classes=1000, z_dim=128, n_stats=51):
    """Key -> shape of a tf2-model-clones `BigGANTF2` checkpoint."""
    spec = {"embeddings/kernel": (num_classes, z_dim)}
    cond = 2 * z_dim
    _sn_dense(spec, "gen_z", cond, 16 * ch * 16, bias=True)
    plan = _plan(GEN_PLANS[resolution])
    for i, item in enumerate(plan):
        p = f"layers_out/{i}"
        if item == "attention":
            _attention(spec, p, ch * plan[i + 1][1])
            continue
        _, c_in, c_out = item
        c_in, c_out, mid = ch * c_in, ch * c_out, ch * c_in // 4
        _bn(spec, f"{p}/bn_0", c_in, n_stats, cond_dim=cond)
        _sn_conv(spec, f"{p}/conv_0", 1, c_in, mid)
        for j in (1, 2):
            _bn(spec, f"{p}/bn_{j}", mid, n_stats, cond_dim=cond)
            _sn_conv(spec, f"{p}/conv_{j}", 3, mid, mid)
        _bn(spec, f"{p}/bn_3", mid, n_stats, cond_dim=cond)
        _sn_conv(spec, f"{p}/conv_3", 1, mid, c_out)
    _bn(spec, "bn", ch, n_stats, conditional=False)
    _sn_conv(spec, "conv_to_rgb", 3, ch, ch)
    return spec


def random_values(spec, seed=0, scale=0.3):
    """Random tensors for `spec`; variances positive, as a network's."""
    rng = np.random.default_rng(seed)
    values = {}
    for key, shape in spec.items():
        v = rng.normal(0.0, scale, size=shape)
        if key.endswith("/var"):
            v = rng.uniform(0.5, 1.5, size=shape)
        elif key.endswith("/w") and len(shape) == 4:
            v = v / np.sqrt(np.prod(shape[:3]))  # keeps activations O(1)
        elif key.endswith("/w") and len(shape) == 2:
            v = v / np.sqrt(shape[0])
        values[key] = v.astype("float32")
    return values


def write(values, prefix, root=None, extra=None):
    """Saves `values` in their object-graph layout (numbered lists), below
    `root` (`layer_with_weights-0` for EBMs, none for the generators)."""
    values = dict(values, **(extra or {}))
    tree = {}
    for key, value in values.items():
        node = tree
        *parts, leaf = key.split("/")
        for part in parts:
            node = node.setdefault(part, {})
        node[leaf] = tf.Variable(value)

    def build(node):
        if not isinstance(node, dict):
            return node
        if all(k.isdigit() for k in node):
            return [build(node[str(i)]) for i in range(len(node))]
        module = tf.Module()
        for name, child in node.items():
            setattr(module, name, build(child))
        return module

    top = {root: build(tree)} if root else {k: build(v) for k, v in tree.items()}
    tf.train.Checkpoint(**top).write(prefix)


def _conv(P, x, name):
    y = tf.nn.conv2d(x, P[f"{name}/w"], 1, "SAME")
    return y + P[f"{name}/layer/bias"] if f"{name}/layer/bias" in P else y


def _pool(x, op):
    return op(x, 2, 2, "VALID")


def _attend(P, x, p):
    _, h, w, c = x.shape
    theta = tf.reshape(_conv(P, x, f"{p}/snconv1x1_theta"), [-1, h * w, c // 8])
    phi = _pool(_conv(P, x, f"{p}/snconv1x1_phi"), tf.nn.max_pool2d)
    phi = tf.reshape(phi, [-1, h * w // 4, c // 8])
    attn = tf.nn.softmax(tf.matmul(theta, phi, transpose_b=True))
    g = _pool(_conv(P, x, f"{p}/snconv1x1_g"), tf.nn.max_pool2d)
    g = tf.reshape(g, [-1, h * w // 4, c // 2])
    o = _conv(
        P, tf.reshape(tf.matmul(attn, g), [-1, h, w, c // 2]), f"{p}/snconv1x1_o_conv"
    )
    return x + P[f"{p}/gamma"] * o


def ebm_forward(P, x, size, relu=tf.nn.relu):
    """`EBMBigGAN.call` on the tensors `P` (keys of `ebm_spec`); `relu`
    replaces every ReLU (a smooth twin's activation)."""
    x = _conv(P, tf.convert_to_tensor(x), "rgb_conv")
    for i, item in enumerate(_plan(EBM_PLANS[size])):
        p = f"layers_out/{i}"
        if item == "attention":
            x = _attend(P, x, p)
            continue
        down = item[0]
        h = relu(_conv(P, relu(x), f"{p}/conv_0"))
        h = relu(_conv(P, relu(_conv(P, h, f"{p}/conv_1")), f"{p}/conv_2"))
        x0 = x
        if down:
            h, x0 = _pool(h, tf.nn.avg_pool2d), _pool(x0, tf.nn.avg_pool2d)
        h = _conv(P, h, f"{p}/conv_3")
        if f"{p}/conv_sc/w" in P:
            x0 = tf.concat([x0, _conv(P, x0, f"{p}/conv_sc")], -1)
        x = h + x0
    return tf.matmul(tf.reduce_mean(relu(x), [1, 2]), P["linear_head/w"])


def _stats(P, p, truncation, n_stats):
    """The statistics of `truncation` as the HuggingFace port reads them,
    as a weighted sum of the table's rows: the position is `truncation`
    divided by the step `1 / (n_stats - 1)` (divided, as the port does: 0.94
    lands just below row 47); a whole position takes its row, any other the
    row below it weighted by the fraction and the row above by the rest
    (the port's weights, the reverse of linear interpolation)."""
    position = truncation / (1.0 / (n_stats - 1))
    below = int(np.floor(position))
    fraction = position - below
    weights = np.zeros(n_stats)
    if fraction == 0.0:
        weights[below] = 1.0
    else:
        weights[below], weights[below + 1] = fraction, 1.0 - fraction
    weights = tf.constant(weights[None, :], tf.float32)
    mean = tf.matmul(weights, P[f"{p}/mean"])[0]
    var = tf.matmul(weights, P[f"{p}/var"])[0]
    return mean, var


def _norm(P, x, p, truncation, n_stats, cond=None, eps=1e-4):
    mean, var = _stats(P, p, truncation, n_stats)
    x = (x - mean) / tf.sqrt(var + eps)
    if cond is None:
        return x * P[f"{p}/w"] + P[f"{p}/b"]
    weight = 1 + tf.matmul(cond, P[f"{p}/scale/w"])[:, None, None, :]
    return x * weight + tf.matmul(cond, P[f"{p}/offset/w"])[:, None, None, :]


def gen_forward(P, z, labels, resolution, truncation, out_size=None, n_stats=51):
    """`GenBigGANCond.call(z, one_hot(labels), truncation)` on `P`."""
    relu = tf.nn.relu
    num_classes = P["embeddings/kernel"].shape[0]
    embed = tf.matmul(tf.one_hot(labels, num_classes), P["embeddings/kernel"])
    cond = tf.concat([tf.constant(z), embed], 1)
    ch16 = P["gen_z/w"].shape[1] // 16
    x = tf.reshape(
        tf.matmul(cond, P["gen_z/w"]) + P["gen_z/layer/bias"], [-1, 4, 4, ch16]
    )
    for i, item in enumerate(_plan(GEN_PLANS[resolution])):
        p = f"layers_out/{i}"
        if item == "attention":
            x = _attend(P, x, p)
            continue
        upsample = item[0]

        def bn(h, j, p=p):
            return relu(_norm(P, h, f"{p}/bn_{j}", truncation, n_stats, cond))

        h = _conv(P, bn(x, 0), f"{p}/conv_0")
        h = bn(h, 1)
        if upsample:
            h = tf.repeat(tf.repeat(h, 2, 1), 2, 2)
        h = _conv(P, bn(_conv(P, h, f"{p}/conv_1"), 2), f"{p}/conv_2")
        h = _conv(P, bn(h, 3), f"{p}/conv_3")
        x0 = x
        if item[1] != item[2]:
            x0 = x0[..., : x0.shape[-1] // 2]
        if upsample:
            x0 = tf.repeat(tf.repeat(x0, 2, 1), 2, 2)
        x = h + x0
    x = relu(_norm(P, x, "bn", truncation, n_stats))
    x = tf.tanh(_conv(P, x, "conv_to_rgb")[..., :3])
    if out_size:
        x = tf.image.resize(x, [out_size, out_size])
    return x
