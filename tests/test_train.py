"""The fast recipe's learning-rate schedule."""

import keras
import numpy as np
import tensorflow as tf

from conftest import TINY
from maskvit import masking, models, train

STEPS = 10  # over a 3-step warm-up, a 5-step decay and beyond it


def schedules():
    return train.WarmupCosine(1e-2, 3, 5, 0.1), keras.optimizers.schedules.CosineDecay(0.0, 5, 0.1, warmup_target=1e-2, warmup_steps=3)


def test_warmup_cosine_gives_keras_cosine_decay_rates():
    ours, reference = schedules()
    assert [float(ours(s)) for s in range(STEPS)] == [float(reference(s)) for s in range(STEPS)]  # eager: bit for bit
    step = tf.Variable(0, dtype=tf.int64)
    in_graph = tf.function(lambda: (ours(step), ours(step), reference(step)))  # asked twice in one graph, as the optimizer does
    for s in range(STEPS):
        step.assign(s)
        first, again, expected = (float(r) for r in in_graph())
        assert first == again
        np.testing.assert_allclose(first, expected, rtol=1e-6)  # a graph may round the last bit otherwise


def test_warmup_cosine_trains_as_keras_cosine_decay():
    """AdamW's update and its weight decay each ask for the rate; the once-per-graph rate must
    follow the step as each asking did."""
    images = tf.random.stateless_uniform([8, 32, 32, 3], seed=[0, 1])
    mask = masking.make_masks("random", 0.5, 8, [0, 2])
    batches = tf.data.Dataset.from_tensors(((images, mask), images)).repeat(STEPS)
    weights = []
    for schedule in schedules():
        keras.utils.set_random_seed(0)
        net = models.build("mae", **TINY["mae"])
        start = net.get_weights()
        net.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.05))
        net.fit(batches, epochs=1, verbose=0, shuffle=False)
        weights.append(net.get_weights())
    assert max(np.abs(a - b).max() for a, b in zip(weights[0], start)) > 1e-3  # it trained
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # the rates differ at most in their last bit
