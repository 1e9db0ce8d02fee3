"""`schedules.plot(s, n)` and `keras-trainx plot-schedule` evaluate a schedule where it is drawn.

A figure has a few thousand pixels across: `plot` evaluates at most `DRAWN_STEPS` evenly spaced steps
plus the steps around every step where the schedule jumps or bends (milestones, warm-up ends, cycle
starts, the one-cycle peak), so `--steps 10000000` costs what `--steps 2000` costs and every jump is
drawn as a vertical edge. The drawn values are compared with the schedules' formulas, computed here.
"""

import math
import signal

import keras
import numpy as np
import pytest

from keras_trainx import cli, schedules
from keras_trainx.schedules import CosineAnnealingWarmupRestarts, MultiStepDecay, OneCycle, WarmUp
from keras_trainx.schedules.plotting import DRAWN_STEPS

N = 10_000_000


def multi_step(x):
    return 0.1 * 0.5 ** ((x >= 3_000_000).astype(float) + (x >= 7_000_000))


def one_cycle(x):
    peak = 0.3 * N - 1
    x = np.minimum(x, N - 1)
    rising = 0.1 + (0.004 - 0.1) * (1 + np.cos(np.pi * x / peak)) / 2
    falling = 4e-7 + (0.1 - 4e-7) * (1 + np.cos(np.pi * (x - peak) / (N - 1 - peak))) / 2
    return np.where(x <= peak, rising, falling)


def stair_warmup(x):
    """From 0 to 0.2 in 10 stairs of 100,000 steps, then the milestones at absolute steps."""
    stairs = np.floor(x / 100_000) * 100_000
    return np.where(x < 1_000_000, 0.2 * stairs / 1_000_000, 2 * multi_step(x))


def restart_cycles():
    """Cycle starts and lengths of the recurrence L[c + 1] = floor((L[c] - 1000) * 2) + 1000 from 1e6."""
    starts, lengths = [0], [1_000_000]
    while starts[-1] + lengths[-1] < N:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(math.floor((lengths[-1] - 1000) * 2.0) + 1000)
    return np.array(starts), np.array(lengths, float)


def restarts(x):
    """Warm-up of 1000 steps to 0.1 * 0.5**c, then a cosine down to 0.001, in each cycle c."""
    starts, lengths = restart_cycles()
    cycle = np.searchsorted(starts, x, side="right") - 1
    position, length = x - starts[cycle], lengths[cycle]
    peak = 0.1 * 0.5**cycle
    warming = 0.001 + (peak - 0.001) * position / 1000
    annealed = 0.001 + (peak - 0.001) * (1 + np.cos(np.pi * (position - 1000) / (length - 1000))) / 2
    return np.where(position < 1000, warming, annealed)


CASES = {
    "MultiStepDecay": (MultiStepDecay(0.1, [3_000_000, 7_000_000], 0.5), multi_step, [3_000_000, 7_000_000]),
    "OneCycle": (OneCycle(0.1, N), one_cycle, [2_999_999]),
    "WarmUp": (WarmUp(MultiStepDecay(0.2, [3_000_000, 7_000_000], 0.5), 1_000_000, staircase_steps=100_000,
                      offset=False), stair_warmup, [100_000 * k for k in range(1, 11)] + [3_000_000, 7_000_000]),
    "CosineAnnealingWarmupRestarts": (CosineAnnealingWarmupRestarts(1_000_000, 2.0, 0.1, 0.001, 1000, 0.5),
                                      restarts, [s + w for s in restart_cycles()[0] for w in (0, 1000) if s + w]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_drawn_curve_is_the_schedule_at_the_drawn_steps_and_every_jump(name):
    schedule, formula, jumps = CASES[name]
    (line,) = schedules.plot(schedule, N).axes[0].get_lines()
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert len(x) <= DRAWN_STEPS + 3 * len(jumps) + 3
    assert x[0] == 0 and x[-1] == N - 1 and (np.diff(x) > 0).all()
    assert set(np.linspace(0, N - 1, DRAWN_STEPS).round().astype(int)) <= set(x.tolist())
    for jump in jumps:  # the step before and the step of each jump, so the edge is vertical
        assert {jump - 1, jump} <= set(x.tolist()), jump
    # float32 rates: within 1e-7 of the peak (0.1) where the rate is tiny, else to 1e-5 relative
    np.testing.assert_allclose(y, formula(x.astype(float)), rtol=1e-5, atol=1e-8)


def test_a_plain_keras_schedule_is_drawn_on_the_grid():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4_000_000], [0.1, 0.01])
    (line,) = schedules.plot(schedule, N).axes[0].get_lines()
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert {3_999_999, 4_000_000, 4_000_001} <= set(x.tolist())  # Keras' boundary b holds until b + 1
    np.testing.assert_allclose(y, np.where(x <= 4_000_000, 0.1, 0.01), rtol=1e-6)


@pytest.mark.parametrize("n", [2**62, 2**63 - 1])
def test_the_grid_of_a_huge_plot_holds_exact_steps_below_n(n):
    """The grid is `round(i * (n - 1) / (DRAWN_STEPS - 1))` in integers (float64 drew step n itself past
    2**53), and a breakpoint within a step of int64's end is drawn without overflowing."""
    steps = schedules.drawn_steps(MultiStepDecay(0.1, [n - 1]), n)
    grid = [(2 * i * (n - 1) + DRAWN_STEPS - 1) // (2 * (DRAWN_STEPS - 1)) for i in range(DRAWN_STEPS)]
    assert steps.dtype == np.int64 and set(grid) <= set(steps.tolist())
    assert steps[0] == 0 and steps[-1] == n - 1 and {n - 2, n - 1} <= set(steps.tolist())
    assert len(steps) == DRAWN_STEPS + 1


def test_short_schedules_are_drawn_at_every_step():
    (line,) = schedules.plot(MultiStepDecay(1.0, [2], 0.5), 4).axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2, 3])


def test_plot_schedule_of_ten_million_steps_reports_the_exact_extremes(tmp_path, capsys):
    """The rate doubles at step 4,000,001, which no evenly spaced grid of 2000 steps holds."""
    def expire(signum, frame):
        raise TimeoutError("plot-schedule --steps 10000000 still running after 60 s")

    config = '{"initial_learning_rate": 0.1, "milestones": [4000001], "factor": 2.0}'
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        status = cli.main(["plot-schedule", "MultiStepDecay", "--config", config, "--steps", str(N),
                           "-o", str(tmp_path / "lr.png")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert status == 0
    assert capsys.readouterr().out == (
        f"wrote {tmp_path / 'lr.png'}: MultiStepDecay, {N} steps, first 0.1, max 0.2 at step 4000001, last 0.2\n"
    )
