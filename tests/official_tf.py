"""The TensorFlow side of the converter tests (tests/test_convert_tf.py): the
official SACT ImageNet network's variables as TF-Slim names them, written by
TensorFlow into a checkpoint, and that network's forward pass in TF ops.

Written from the official code (mfigurnov/sact: imagenet_model.get_network and
bottleneck, resnet_act.get_halting_proba{,_conv}, act.py) layer by layer, as
TF-Slim names a layer's variables, independently of the converter's own table
(sact_det/apps/tf_variables.py), so that the tests compare two readings.
"""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up notices
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
try:  # torch's Triton, if installed, before TensorFlow: imported after it, Triton crashes the process
    import triton  # noqa: F401
except ImportError:
    pass
import tensorflow as tf  # noqa: E402  (the "tf" extra; installed by `make install`)

v1 = tf.compat.v1
BN_LEAVES = ("beta", "gamma", "moving_mean", "moving_variance")
BN_EPSILON = 1e-5  # resnet_utils.resnet_arg_scope
ACT_EPSILON = 0.01  # act.py: a position halts when its cumulative score reaches 1 - eps


def slim_variables(halting: str, units: Sequence[int], width: int = 4, stem: int = 64,
                   classes: int = 10) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape) of every model variable of the official network:
    ``halting`` "sact", "act" or "none"; ``units`` per block; block 1's
    bottleneck ``width`` (64 in the released models, doubling per block)."""
    out = []

    def batch_norm(scope, channels):  # slim.batch_norm(scale=True)
        out.extend((f"{scope}/{leaf}", (channels,)) for leaf in BN_LEAVES)

    def conv2d(scope, kernel, cin, cout, normalizer=True, bias=True):
        # slim.conv2d: a conv with a normalizer has BatchNorm and no biases;
        # without one it has biases unless biases_initializer=None.
        out.append((f"{scope}/weights", (kernel, kernel, cin, cout)))
        if normalizer:
            batch_norm(f"{scope}/BatchNorm", cout)
        elif bias:
            out.append((f"{scope}/biases", (cout,)))

    conv2d("resnet_v2/conv1", 7, 3, stem, normalizer=False)
    cin = stem
    for b, n in enumerate(units, start=1):
        bottleneck, depth = width * 2 ** (b - 1), 4 * width * 2 ** (b - 1)
        for u in range(1, n + 1):
            unit = f"resnet_v2/block{b}/unit_{u}"
            batch_norm(f"{unit}/bottleneck_v2/preact", cin)
            if depth != cin:
                conv2d(f"{unit}/bottleneck_v2/shortcut", 1, cin, depth, normalizer=False)
            conv2d(f"{unit}/bottleneck_v2/conv1", 1, cin, bottleneck)
            conv2d(f"{unit}/bottleneck_v2/conv2", 3, bottleneck, bottleneck)
            conv2d(f"{unit}/bottleneck_v2/conv3", 1, bottleneck, depth, normalizer=False)
            if halting != "none" and u < n:
                if halting == "sact":  # get_halting_proba_conv
                    batch_norm(f"{unit}/halting_proba/local_bn", depth)
                    conv2d(f"{unit}/halting_proba/local_conv", 3, depth, 1, normalizer=False)
                batch_norm(f"{unit}/halting_proba/global_bn", depth)
                conv2d(f"{unit}/halting_proba/global_conv", 1, depth, 1, normalizer=False, bias=halting == "act")
            cin = depth
    batch_norm("resnet_v2/postnorm", cin)
    conv2d("resnet_v2/logits", 1, cin, classes, normalizer=False)
    return out


def random_values(variables, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 values, batch norms far from identity and variances > 0;
    the halting biases near the official initial -3 so that some positions halt
    early and others late."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in variables:
        if name.endswith("/weights"):
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.7, 1.3, shape)
        elif "/halting_proba/" in name and name.endswith("/biases"):
            value = rng.uniform(-3.5, 0.5, shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        values[name] = value.astype(np.float32)
    return values


def write_checkpoint(prefix: str, values: Dict[str, np.ndarray], training_extras: bool = False) -> str:
    """Writes ``values`` with a TF1 ``Saver`` (as imagenet_train.py's checkpoints
    were written), plus ``global_step`` and, with ``training_extras``, the
    ``/Momentum`` and ``/ExponentialMovingAverage`` copies of a raw training
    checkpoint. Returns the checkpoint prefix."""
    saved = dict(values, global_step=np.int64(1234))
    if training_extras:
        for name, value in values.items():
            if "moving_" not in name:  # trainable
                saved[f"{name}/Momentum"] = np.zeros_like(value)
            saved[f"{name}/ExponentialMovingAverage"] = value
    graph = tf.Graph()
    with graph.as_default():
        # Saved under the dictionary's names, whatever the graph calls the variables.
        variables = {name: v1.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(saved.items())}
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return v1.train.Saver(variables).save(session, prefix)

def official_forward(values: Dict[str, np.ndarray], images: np.ndarray, halting: str,
                     units: Sequence[int]) -> Dict[str, np.ndarray]:
    """The official network's inference (batch norms with their moving statistics)
    in TF ops on ``images`` ``[B, H, W, 3]`` in [-1, 1]: ``logits`` ``[B, K]`` and,
    for ACT/SACT, each block's ``ponder_cost`` and ``num_units`` ``[B, h, w]`` (act.py;
    ACT's are ``[B, 1, 1]``)."""
    def batch_norm(x, scope):
        return tf.nn.batch_normalization(x, values[f"{scope}/moving_mean"], values[f"{scope}/moving_variance"],
                                         values[f"{scope}/beta"], values[f"{scope}/gamma"], BN_EPSILON)

    def conv(x, scope, stride=1):  # slim.conv2d, and resnet_utils.conv2d_same when strided
        weights = values[f"{scope}/weights"]
        if stride == 1:
            y = tf.nn.conv2d(x, weights, 1, "SAME")
        else:  # explicit padding, then VALID
            total = weights.shape[0] - 1
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
            y = tf.nn.conv2d(x, weights, stride, "VALID")
        return y + values[f"{scope}/biases"] if f"{scope}/biases" in values else y

    def unit(x, scope, stride, mask):  # imagenet_model.bottleneck
        preact = tf.nn.relu(batch_norm(x, f"{scope}/preact"))
        shortcut = conv(preact, f"{scope}/shortcut", stride) if f"{scope}/shortcut/weights" in values else x
        residual = tf.nn.relu(batch_norm(conv(preact, f"{scope}/conv1"), f"{scope}/conv1/BatchNorm"))
        residual = tf.nn.relu(batch_norm(conv(residual, f"{scope}/conv2", stride), f"{scope}/conv2/BatchNorm"))
        residual = conv(residual, f"{scope}/conv3")
        return shortcut + (residual if mask is None else residual * mask[..., None])

    def halting_score(x, scope):  # resnet_act.get_halting_proba{_conv}: [B, h, w] or [B, 1, 1]
        pooled = batch_norm(tf.reduce_mean(x, [1, 2], keepdims=True), f"{scope}/global_bn")
        logit = conv(pooled, f"{scope}/global_conv")
        if halting == "sact":
            logit = logit + conv(batch_norm(x, f"{scope}/local_bn"), f"{scope}/local_conv")
        return tf.sigmoid(logit)[..., 0]

    out = {}
    x = tf.nn.max_pool2d(conv(tf.constant(images), "resnet_v2/conv1", 2), 3, 2, "SAME")
    for b, n in enumerate(units, start=1):
        if halting == "none":
            for u in range(1, n + 1):
                x = unit(x, f"resnet_v2/block{b}/unit_{u}/bottleneck_v2", 2 if b > 1 and u == 1 else 1, None)
            continue
        # act.spatially_adaptive_computation_time (ACT: one position per image, no mask)
        for u in range(1, n + 1):
            mask = None if u == 1 or halting == "act" else tf.cast(tf.logical_not(finished), tf.float32)
            x = unit(x, f"resnet_v2/block{b}/unit_{u}/bottleneck_v2", 2 if b > 1 and u == 1 else 1, mask)
            if u < n:
                h = halting_score(x, f"resnet_v2/block{b}/unit_{u}/halting_proba")
                if halting == "act":
                    h = h[:, :1, :1]
            else:
                h = tf.ones_like(x[..., 0]) if halting == "sact" else tf.ones_like(x[:, :1, :1, 0])
            if u == 1:
                cumulative, finished, remainder = tf.zeros_like(h), tf.zeros_like(h, tf.bool), tf.ones_like(h)
                ponder, num_units, output = tf.ones_like(h), tf.zeros_like(h), 0.0
            cumulative += h
            now = cumulative >= 1 - ACT_EPSILON
            h = tf.where(now, tf.zeros_like(h), h)
            just = tf.logical_and(tf.logical_not(finished), now)
            weight = tf.where(just, remainder, h)
            ponder += tf.where(now, tf.where(just, remainder, tf.zeros_like(h)), tf.ones_like(h))
            num_units += tf.cast(tf.logical_not(finished), tf.float32)
            output = output + x * weight[..., None]
            remainder -= h
            finished = now
        x = output
        out[f"block{b}/ponder_cost"], out[f"block{b}/num_units"] = ponder.numpy(), num_units.numpy()
    x = tf.reduce_mean(tf.nn.relu(batch_norm(x, "resnet_v2/postnorm")), [1, 2], keepdims=True)
    out["logits"] = conv(x, "resnet_v2/logits")[:, 0, 0].numpy()
    return out
