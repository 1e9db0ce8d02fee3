"""What every schedule returns for steps that are no plain step count, eagerly, in a graph and under XLA.

The rules (README, "Reliability"): a step below 0, or NaN, is evaluated as step 0; integer steps of any
width (an int32 counter included) are compared in int64, so a warm-up longer than 2**31 updates works;
a peak beyond float32's range saturates at float32's largest value instead of overflowing to inf; an
exponential warm-up towards a peak of 0 is 0 after its first update (its geometric limit), not NaN.
Each expected value is computed here from the schedule's formula, not by the schedule.
"""

import math
import signal

import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.schedules import CosineAnnealingWarmupRestarts, MultiStepDecay, OneCycle, WarmUp

F32_MAX = float(np.finfo(np.float32).max)
NAN, INF = math.nan, math.inf
MODES = ["eager", "graph", "xla"]


def compiled(schedule, mode):
    """`step -> rate` (a float) calling `schedule` eagerly, through one tf.function, or through one XLA function."""
    call = schedule if mode == "eager" else tf.function(schedule, jit_compile=mode == "xla")
    return lambda step: float(call(step))


def evaluate(schedule, step, mode):
    return compiled(schedule, mode)(step)


def rates(schedule, steps, mode, dtype=tf.int64):
    call = compiled(schedule, mode)
    return [call(tf.constant(step, dtype)) for step in steps]


SCHEDULES = {
    "WarmUp": lambda: WarmUp(MultiStepDecay(0.1, [20], 0.5), 10, initial_learning_rate=0.01),
    "WarmUp-exponential": lambda: WarmUp(0.1, 10, mode="exponential", initial_fraction=0.01),
    "CosineAnnealingWarmupRestarts": lambda: CosineAnnealingWarmupRestarts(10, 2.0, 0.1, 0.001, 3, 0.5),
    "MultiStepDecay": lambda: MultiStepDecay(0.1, [3, 7], 0.5),
    "OneCycle": lambda: OneCycle(0.1, 20),
}
AT_ZERO = {"WarmUp": 0.01, "WarmUp-exponential": 0.001, "CosineAnnealingWarmupRestarts": 0.001,
           "MultiStepDecay": 0.1, "OneCycle": 0.1 / 25}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("step", [tf.constant(-5, tf.int64), tf.constant(-5, tf.int32), tf.constant(-2.5),
                                  tf.constant(NAN), tf.constant(-INF)],
                         ids=["-5 int64", "-5 int32", "-2.5", "nan", "-inf"])
def test_a_step_below_zero_or_nan_is_step_zero(name, step, mode):
    assert evaluate(SCHEDULES[name](), step, mode) == pytest.approx(AT_ZERO[name], rel=1e-6)


# +inf: the last rate where the schedule has one; restarts count it as step 2**63 - 1 (int64's last step)
AT_INFINITY = {"WarmUp": 0.05, "WarmUp-exponential": 0.1, "MultiStepDecay": 0.025, "OneCycle": 0.1 / 25 / 1e4}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_an_infinite_step_gives_a_finite_rate(name, mode):
    schedule = SCHEDULES[name]()
    got = evaluate(schedule, tf.constant(INF), mode)
    if name == "CosineAnnealingWarmupRestarts":
        assert got == evaluate(schedule, tf.constant(2**63 - 1, tf.int64), mode)
        assert 0.0 <= got <= 0.1
    else:
        assert got == pytest.approx(AT_INFINITY[name], rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_warmup_longer_than_int32_with_an_int32_step_counter(mode):
    schedule = WarmUp(0.1, 3_000_000_000)
    for step in (5, 2**31 - 1):
        assert evaluate(schedule, tf.constant(step, tf.int32), mode) == pytest.approx(0.1 * step / 3e9, rel=1e-6)
    assert evaluate(schedule, tf.constant(3_000_000_000, tf.int64), mode) == pytest.approx(0.1)
    milestones = MultiStepDecay(0.1, [3_000_000_000], 0.5)
    assert evaluate(milestones, tf.constant(2**31 - 1, tf.int32), mode) == pytest.approx(0.1)
    assert evaluate(milestones, tf.constant(3_000_000_000, tf.int64), mode) == pytest.approx(0.05)


def restarts_reference(step, first, mult, high, low, warmup, gamma):
    """katsura-jp's recurrence walked in float64 Python (small steps only), the peak saturating."""
    cycle, start, length = 0, 0, first
    while start + length <= step:
        cycle, start = cycle + 1, start + length
        length = math.floor((length - warmup) * mult) + warmup
    position, peak = step - start, min(high * gamma**cycle, F32_MAX)
    if position < warmup:
        return low + (peak - low) * position / warmup
    return low + (peak - low) * (1 + math.cos(math.pi * (position - warmup) / (length - warmup))) / 2


@pytest.mark.parametrize("mode", MODES)
def test_growing_peaks_saturate_at_float32s_largest_value(mode):
    config = (10, 1.0, 0.1, 0.001, 2, 1e30)
    schedule = CosineAnnealingWarmupRestarts(*config)
    steps = [0, 1, 5, 10, 12, 15, 19, 20, 21, 22, 25, 29, 30, 40]
    got = rates(schedule, steps, mode)
    expected = [restarts_reference(s, *config) for s in steps]
    assert all(math.isfinite(g) for g in got)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    growing = MultiStepDecay(0.1, [1, 2, 3], factor=1e30)
    got = rates(growing, range(4), mode)
    np.testing.assert_allclose(got, [0.1, 1e29, F32_MAX, F32_MAX], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_an_exponential_warmup_towards_a_peak_of_zero_is_zero_not_nan(mode):
    from_fraction = WarmUp(0.0, 10, mode="exponential", initial_fraction=0.1)
    assert rates(from_fraction, (0, 5, 10), mode) == [0.0, 0.0, 0.0]
    from_rate = WarmUp(0.0, 10, initial_learning_rate=0.01, mode="exponential")
    got = rates(from_rate, (0, 1, 9, 10), mode)
    assert got == [pytest.approx(0.01), 0.0, 0.0, 0.0]


def test_a_huge_restarts_table_is_bounded_and_exact_where_it_reaches():
    """cycle_mult just above 1 with long cycles: 4.5e7 cycles before step 2**53 alone. The table stops after
    `MAX_CYCLES` cycles (construction in well under a second); up to there the values are the
    recurrence's, after it the last cycle's length repeats (documented)."""
    from keras_trainx.schedules.cosine_restarts import MAX_CYCLES

    def expire(signum, frame):
        raise TimeoutError("building the table took more than 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    try:
        schedule = CosineAnnealingWarmupRestarts(10_000_000, 1.0000001, 0.1, 0.0, 0, 1.0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    # the documented lengths: the recurrence for MAX_CYCLES cycles, then the last length repeating
    start, length = 0, 10_000_000
    for _ in range(MAX_CYCLES - 1):
        start, length = start + length, math.floor(length * 1.0000001)
    last_start, last_length = start, length
    checks = {
        9_999_999: 0.1 * (1 + math.cos(math.pi * 9_999_999 / 10_000_000)) / 2,
        10_000_000: 0.1,
        10_000_000 + 10_000_001 + 5_000_000: 0.1 * (1 + math.cos(math.pi * 5_000_000 / 10_000_002)) / 2,
        last_start + 7: 0.1 * (1 + math.cos(math.pi * 7 / last_length)) / 2,
        last_start + 3 * last_length + 11: 0.1 * (1 + math.cos(math.pi * 11 / last_length)) / 2,
    }
    for mode in MODES:
        got = rates(schedule, list(checks), mode)
        np.testing.assert_allclose(got, list(checks.values()), rtol=1e-5, atol=1e-7)


# Steps counted exactly up to 2**63 - 1, the last step of the optimizer's int64 counter (issue #26): each
# expected value is the formula evaluated in exact integer (or float64) arithmetic here.

@pytest.mark.parametrize("mode", MODES)
def test_restarts_count_cycles_of_2_to_the_62_steps_exactly(mode):
    """A first cycle of 2**62 steps is at half its peak at step 2**61 (it gave 0.099999: the step was
    clamped at 2**53), and so is a warm-up of 2**61 steps halfway."""
    plain = CosineAnnealingWarmupRestarts(2**62, max_learning_rate=0.1, min_learning_rate=0.0)
    assert rates(plain, [2**61, 2**62 - 1, 2**62, 2**62 + 2**61], mode) == pytest.approx([0.05, 0.0, 0.1, 0.05],
                                                                                         abs=1e-8)
    warming = CosineAnnealingWarmupRestarts(2**62, max_learning_rate=0.1, min_learning_rate=0.0,
                                            warmup_steps=2**61)
    steps = [2**60, 2**61, 2**61 + 2**60, 2**62 + 2**60, 2**63 - 1]
    expected = [0.05, 0.1, 0.05, 0.05, 0.1 * (1 + math.cos(math.pi * (2**61 - 1) / 2**61)) / 2]
    assert rates(warming, steps, mode) == pytest.approx(expected, abs=1e-8)
    assert evaluate(warming, tf.constant(INF), mode) == rates(warming, [2**63 - 1], mode)[0]


@pytest.mark.parametrize("mode", MODES)
def test_fractional_float_steps_of_restarts_keep_their_fraction(mode):
    schedule = CosineAnnealingWarmupRestarts(10, max_learning_rate=0.1, min_learning_rate=0.0, warmup_steps=4)
    got = [evaluate(schedule, tf.constant(step, tf.float64), mode) for step in (1.5, 7.5, 12.5)]
    expected = [0.1 * 1.5 / 4, 0.1 * (1 + math.cos(math.pi * 3.5 / 6)) / 2, 0.1 * 2.5 / 4]
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_warmup_stairs_are_exact_past_float32s_integers(mode):
    """Stairs of 2**60 // 7 steps: the step before the third stair is still on the second (float32 rounded it
    up onto the third)."""
    stair = 2**60 // 7
    schedule = WarmUp(0.1, 7 * stair, mode="exponential", initial_fraction=0.01, staircase_steps=stair)
    got = rates(schedule, [3 * stair - 1, 3 * stair], mode)
    assert got == pytest.approx([0.001 * 100 ** (2 / 7), 0.001 * 100 ** (3 / 7)], rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_uint64_step_beyond_int64_is_the_last_step_not_a_negative_one(name, mode):
    """A uint64 step from 2**63 on wrapped round to a negative int64 (so step 0: OneCycle's first rate)."""
    schedule = SCHEDULES[name]()
    last = rates(schedule, [2**63 - 1], mode)[0]
    assert rates(schedule, [2**63, 2**64 - 1], mode, tf.uint64) == [last, last]
    assert rates(schedule, [5], mode, tf.uint64) == rates(schedule, [5], mode)
    if name == "OneCycle":
        assert last == pytest.approx(0.1 / 25 / 1e4, rel=1e-6)
