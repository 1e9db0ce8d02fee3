"""CosineAnnealingWarmupRestarts late in a long run: exact values, and a cost that does not grow.

The reference walks the cycles in float64 Python, exactly as katsura-jp's scheduler steps them
(`L[c + 1] = floor((L[c] - warmup) * cycle_mult) + warmup`); the schedule must agree at steps 1e3, 1e5
and 1e7, compiled, under XLA, and without a loop in its graph.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.schedules import CosineAnnealingWarmupRestarts

STEPS = [1_000, 100_000, 10_000_000]
CONFIGS = [
    dict(first_cycle_steps=10, cycle_mult=2.0, max_learning_rate=0.1, min_learning_rate=0.001, warmup_steps=2, gamma=0.9),
    dict(first_cycle_steps=10, cycle_mult=1.1, max_learning_rate=1.0, min_learning_rate=0.0, warmup_steps=3, gamma=0.99),
    # floor((10 - 5) * 1.05) = 5: every cycle as long as the first, 1e6 cycles by step 1e7
    dict(first_cycle_steps=10, cycle_mult=1.05, max_learning_rate=0.5, min_learning_rate=0.01, warmup_steps=5, gamma=1.0),
    dict(first_cycle_steps=7, cycle_mult=1.0, max_learning_rate=0.2, min_learning_rate=0.0, warmup_steps=0, gamma=0.5),
]


def reference(step, first_cycle_steps, cycle_mult, max_learning_rate, min_learning_rate, warmup_steps, gamma):
    cycle, start, length = 0, 0, first_cycle_steps
    while start + length <= step:
        cycle, start = cycle + 1, start + length
        length = math.floor((length - warmup_steps) * cycle_mult) + warmup_steps
    position = step - start
    peak, low = max_learning_rate * gamma**cycle, min_learning_rate
    if position < warmup_steps:
        return low + (peak - low) * position / warmup_steps
    progress = (position - warmup_steps) / (length - warmup_steps)
    return low + (peak - low) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("config", CONFIGS, ids=["x2", "x1.1", "stalled-x1.05", "x1"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_late_steps_equal_the_cycle_walk(config, jit_compile):
    schedule = CosineAnnealingWarmupRestarts(**config)
    compiled = tf.function(schedule, jit_compile=jit_compile)
    got = [float(compiled(tf.constant(step, tf.int64))) for step in STEPS]
    expected = [reference(step, **config) for step in STEPS]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("config", CONFIGS, ids=["x2", "x1.1", "stalled-x1.05", "x1"])
def test_graph_has_no_loop(config):
    schedule = CosineAnnealingWarmupRestarts(**config)
    graph = tf.function(schedule).get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert not [op.type for op in graph.get_operations() if "While" in op.type]
