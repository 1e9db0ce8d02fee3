"""keras_trainx.schedules against closed-form formulas and PyTorch reference numbers.

PyTorch numbers were produced once with torch 2.13.0 (CPU) by stepping each scheduler once per
update (SGD, `opt.param_groups[0]["lr"]` read before each `opt.step(); scheduler.step()`):
- torch.optim.lr_scheduler.OneCycleLR and MultiStepLR from torch 2.13.0 itself;
- CosineAnnealingWarmupRestarts from github.com/katsura-jp/pytorch-cosine-annealing-with-warmup
  (cosine_annealing_warmup/scheduler.py, commit 2e2718d).
"""

import json
import math

import keras
import numpy as np
import pytest

from keras_trainx import schedules
from keras_trainx.schedules import (
    CosineAnnealingWarmupRestarts,
    MultiStepDecay,
    OneCycle,
    WarmUp,
)

# katsura-jp CosineAnnealingWarmupRestarts(first_cycle_steps=10, cycle_mult=2.0, max_learning_rate=0.1, min_learning_rate=0.001,
# warmup_steps=2, gamma=0.5): cycles of 10, 18, 34 steps start at 0, 10, 28, 62.
TORCH_CAWR_MULT2 = {
    0: 0.001, 1: 0.0505, 2: 0.1, 3: 0.0962320368593087, 5: 0.06944282990207196, 9: 0.004767963140691307,
    10: 0.001, 11: 0.025500000000000002, 12: 0.05, 13: 0.04952923936987915, 17: 0.03911147070898026,
    20: 0.025500000000000002, 27: 0.0014707606301208546, 28: 0.001, 29: 0.013000000000000001, 30: 0.025,
    31: 0.024942216720066364, 45: 0.01417620568395473, 57: 0.0024169448278197406, 58: 0.0019134456098645592,
    59: 0.0015167159712134943, 60: 0.001230576635161235, 61: 0.0010577832799336382, 79: 0.011010468970791016,
}
# katsura-jp CosineAnnealingWarmupRestarts(first_cycle_steps=7, cycle_mult=1.5, max_learning_rate=1.0, min_learning_rate=0.0,
# warmup_steps=3, gamma=0.9): cycle lengths 7, 9, 12, 16, 22 (floor((L - 3) * 1.5) + 3).
TORCH_CAWR_MULT15 = [
    0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.3,
    0.6, 0.9, 0.8397114317029974, 0.675, 0.45, 0.22500000000000012, 0.06028856829700258, 0.0, 0.27, 0.54,
    0.81, 0.785575511418293, 0.7152479994631861, 0.6075, 0.4753275119551069, 0.33467248804489325,
    0.2025000000000001, 0.09475200053681396, 0.024424488581707135, 0.0, 0.24300000000000002,
    0.48600000000000004, 0.7290000000000001, 0.718408292451796, 0.687248721350595, 0.6373321677083664,
    0.5715596001835064, 0.49375348132700425, 0.40843561995306527, 0.3205643800469348, 0.23524651867299587,
    0.15744039981649377, 0.09166783229163362, 0.041751278649405116, 0.010591707548204043, 0.0, 0.2187,
    0.4374, 0.6561, 0.651625825581263, 0.6383253461398932, 0.6165613640832888, 0.5869275441074869,
    0.5502322195718244, 0.5074763432720621, 0.45982618405740666, 0.4085815140565392, 0.3551401542821987,
    0.30095984571780143, 0.24751848594346093, 0.1962738159425934,
]
# katsura-jp (first_cycle_steps=5, cycle_mult=1.0, max_learning_rate=0.1, min_learning_rate=0.01, warmup_steps=0), steps 1..11.
# (Its step 0 is 0.01: the constructor's init_lr() overwrites the first update's rate with min_lr.)
TORCH_CAWR_NO_WARMUP = [
    0.09140576474687263, 0.06890576474687264, 0.04109423525312737, 0.01859423525312737, 0.1,
    0.09140576474687263, 0.06890576474687264, 0.04109423525312737, 0.01859423525312737, 0.1,
    0.09140576474687263,
]
# torch.optim.lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=100) (cos, pct_start=0.3, 25, 1e4).
TORCH_ONECYCLE_COS = {
    0: 0.0040000000000000036, 1: 0.004281378056590748, 10: 0.029516394846410082, 28: 0.09971862194340926,
    29: 0.1, 30: 0.09994965352845243, 31: 0.09979871550490317, 50: 0.0793893450575732,
    98: 5.07464715475788e-05, 99: 4e-07,
}
# OneCycleLR(max_lr=1.0, total_steps=10, pct_start=0.25, div_factor=10, final_div_factor=100,
# anneal_strategy="linear"): the peak lies between steps (float end step 1.5).
TORCH_ONECYCLE_LINEAR = [
    0.1, 0.7, 0.9334, 0.8002, 0.667, 0.5338, 0.40060000000000007, 0.2674000000000001, 0.13419999999999999,
    0.0010000000000000009,
]
# torch.optim.lr_scheduler.MultiStepLR(lr=0.1, milestones=[3, 7], gamma=0.5).
TORCH_MULTISTEP = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]


def test_cosine_annealing_warmup_restarts_matches_katsura_jp_with_growing_cycles():
    schedule = CosineAnnealingWarmupRestarts(10, cycle_mult=2.0, max_learning_rate=0.1, min_learning_rate=0.001, warmup_steps=2, gamma=0.5)
    steps = sorted(TORCH_CAWR_MULT2)
    np.testing.assert_allclose(schedules.values(schedule, steps), [TORCH_CAWR_MULT2[s] for s in steps], rtol=1e-5)


def test_cosine_annealing_warmup_restarts_matches_katsura_jp_with_fractional_cycle_mult():
    schedule = CosineAnnealingWarmupRestarts(7, cycle_mult=1.5, max_learning_rate=1.0, min_learning_rate=0.0, warmup_steps=3, gamma=0.9)
    np.testing.assert_allclose(schedules.values(schedule, 60), TORCH_CAWR_MULT15, rtol=1e-5, atol=1e-7)


def test_cosine_annealing_warmup_restarts_without_warmup_restarts_at_max_lr():
    schedule = CosineAnnealingWarmupRestarts(5, max_learning_rate=0.1, min_learning_rate=0.01)
    lrs = schedules.values(schedule, 12)
    assert lrs[0] == pytest.approx(0.1)
    np.testing.assert_allclose(lrs[1:], TORCH_CAWR_NO_WARMUP, rtol=1e-6)


def test_cosine_annealing_warmup_restarts_far_steps_follow_the_cycle_recurrence():
    schedule = CosineAnnealingWarmupRestarts(100, cycle_mult=1.3, max_learning_rate=1.0, min_learning_rate=0.0, warmup_steps=10, gamma=0.8)
    starts, length = [0], 100
    while starts[-1] < 100_000:
        starts.append(starts[-1] + length)
        length = math.floor((length - 10) * 1.3) + 10
    steps = [s + offset for s in starts[:-1] for offset in (0, 5, 10)]
    expected = []
    for cycle, s in enumerate(starts[:-1]):
        peak = 0.8**cycle
        expected += [0.0, peak * 0.5, peak]
    np.testing.assert_allclose(schedules.values(schedule, steps), expected, rtol=1e-5, atol=1e-7)


def test_one_cycle_matches_torch_cos():
    schedule = OneCycle(0.1, total_steps=100)
    steps = sorted(TORCH_ONECYCLE_COS)
    np.testing.assert_allclose(
        schedules.values(schedule, steps), [TORCH_ONECYCLE_COS[s] for s in steps], rtol=1e-5, atol=1e-8
    )


def test_one_cycle_matches_torch_linear_and_holds_the_final_rate_after_the_cycle():
    schedule = OneCycle(1.0, total_steps=10, pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal="linear")
    lrs = schedules.values(schedule, 14)
    np.testing.assert_allclose(lrs[:10], TORCH_ONECYCLE_LINEAR, rtol=1e-5)
    np.testing.assert_allclose(lrs[10:], [0.001] * 4, rtol=1e-5)


def test_multi_step_decay_matches_torch_multisteplr_at_milestones():
    schedule = MultiStepDecay(0.1, milestones=[3, 7], factor=0.5)
    np.testing.assert_allclose(schedules.values(schedule, 10), TORCH_MULTISTEP, rtol=1e-6)


def test_warmup_linear_then_polynomial_decay_closed_form():
    decay = keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=100, end_learning_rate=0.01, power=2.0)
    schedule = WarmUp(decay, warmup_steps=10, initial_learning_rate=0.001)
    steps = [0, 1, 5, 9, 10, 11, 60, 110, 200]

    def expected(step):
        if step < 10:
            return 0.001 + (0.1 - 0.001) * step / 10
        t = min(step - 10, 100)
        return (0.1 - 0.01) * (1 - t / 100) ** 2 + 0.01

    np.testing.assert_allclose(schedules.values(schedule, steps), [expected(s) for s in steps], rtol=1e-6)


def test_warmup_without_offset_hands_over_the_undelayed_step():
    decay = keras.optimizers.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    schedule = WarmUp(decay, warmup_steps=4, offset=False)
    np.testing.assert_allclose(schedules.values(schedule, 7), [0.0, 0.25, 0.5, 0.75, 0.5**4, 0.5**5, 0.5**6])


def test_warmup_around_a_constant_and_zero_warmup_steps():
    np.testing.assert_allclose(schedules.values(WarmUp(0.2, warmup_steps=4), 6), [0, 0.05, 0.1, 0.15, 0.2, 0.2])
    decay = MultiStepDecay(0.1, [2])
    np.testing.assert_allclose(schedules.values(WarmUp(decay, 0), 4), [0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_warmup_exponential_with_multi_step_reproduces_the_cifar10_large_batch_recipe():
    """lr(e) = 0.1 * 10 ** (-2 + 0.4 e) for epochs e = 0..5, then x0.1 at epochs 15 and 20."""
    steps_per_epoch = 8
    decay = MultiStepDecay(0.1, milestones=[(15 - 5) * steps_per_epoch, (20 - 5) * steps_per_epoch], factor=0.1)
    schedule = WarmUp(decay, warmup_steps=5 * steps_per_epoch, initial_learning_rate=1e-3, mode="exponential")
    epochs = np.arange(6)
    np.testing.assert_allclose(
        schedules.values(schedule, epochs * steps_per_epoch), 0.1 * 10.0 ** (-2 + 0.4 * epochs), rtol=1e-5
    )
    steps = np.arange(5 * steps_per_epoch)
    np.testing.assert_allclose(schedules.values(schedule, steps), 1e-3 * 100.0 ** (steps / 40), rtol=1e-5)
    later = [15 * steps_per_epoch - 1, 15 * steps_per_epoch, 20 * steps_per_epoch - 1, 20 * steps_per_epoch]
    np.testing.assert_allclose(schedules.values(schedule, later), [0.1, 0.01, 0.01, 0.001], rtol=1e-5)


ALL_SCHEDULES = [
    WarmUp(keras.optimizers.schedules.CosineDecay(0.1, 50, alpha=0.1), 10, 0.01, "exponential", False),
    WarmUp(WarmUp(MultiStepDecay(0.5, [5, 9], 0.2), 3), 2, 0.0),
    WarmUp(0.3, 5),
    WarmUp(MultiStepDecay(0.5, [8]), 6, 0.0, "exponential", False, initial_fraction=0.1, staircase_steps=3),
    CosineAnnealingWarmupRestarts(10, 2.0, 0.2, 0.002, 3, 0.7),
    MultiStepDecay(0.1, [4, 8], 0.3),
    OneCycle(0.2, 30, 0.4, 10.0, 100.0, "linear"),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_config_round_trips_through_json(schedule):
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    again = type(schedule).from_config(json.loads(json.dumps(schedule.get_config())))
    np.testing.assert_array_equal(schedules.values(restored, 60), schedules.values(schedule, 60))
    np.testing.assert_array_equal(schedules.values(again, 60), schedules.values(schedule, 60))


def test_registered_names():
    for cls in (WarmUp, CosineAnnealingWarmupRestarts, MultiStepDecay, OneCycle):
        assert keras.saving.get_registered_name(cls) == f"keras_trainx>{cls.__name__}"


def test_optimizer_holding_a_nested_schedule_saves_and_loads():
    schedule = WarmUp(keras.optimizers.schedules.CosineDecay(0.1, 100), warmup_steps=10)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01)
    config = json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
    assert config["config"]["learning_rate"]["registered_name"] == "keras_trainx>WarmUp"
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored._learning_rate, WarmUp)
    assert isinstance(restored._learning_rate.after, keras.optimizers.schedules.CosineDecay)
    np.testing.assert_array_equal(schedules.values(restored._learning_rate, 120), schedules.values(schedule, 120))


def _learning_rates_seen_by_fit(schedule, steps, jit_compile):
    """Trains w <- w - lr * 1 (loss = w * 1) for `steps` updates and returns the lr of each update."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule),
        loss=lambda y_true, y_pred: y_pred[:, 0],
        jit_compile=jit_compile,
    )
    kernels = [0.0]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: kernels.append(float(model.layers[0].kernel.numpy()[0, 0]))
    )
    x = np.ones((steps, 1), "float32")
    model.fit(x, np.zeros((steps, 1), "float32"), batch_size=1, shuffle=False, verbose=0, callbacks=[record])
    return -np.diff(kernels)


FIT_CASES = [
    (CosineAnnealingWarmupRestarts(7, 1.5, 1.0, 0.0, 3, 0.9), TORCH_CAWR_MULT15[:20]),
    (WarmUp(MultiStepDecay(0.1, [3, 7], 0.5), 4, 0.001, "exponential"),
     [0.001 * 100 ** (s / 4) for s in range(4)] + TORCH_MULTISTEP),
    (OneCycle(1.0, 10, 0.25, 10.0, 100.0, "linear"), TORCH_ONECYCLE_LINEAR),
    # from 1% of the peak, once every 2 updates, then the milestone at the absolute step 6
    (WarmUp(MultiStepDecay(0.4, [6], 0.5), 4, mode="exponential", offset=False, initial_fraction=0.01,
            staircase_steps=2),
     [0.004, 0.004, 0.04, 0.04, 0.4, 0.4, 0.2, 0.2]),
]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("schedule,expected", FIT_CASES, ids=lambda c: type(c).__name__)
def test_schedules_drive_model_fit_with_and_without_jit(schedule, expected, jit_compile):
    lrs = _learning_rates_seen_by_fit(schedule, len(expected), jit_compile)
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=2e-6)


def test_values_and_plot():
    schedule = MultiStepDecay(1.0, [2], 0.5)
    np.testing.assert_array_equal(schedules.values(schedule, 4), [1.0, 1.0, 0.5, 0.5])
    np.testing.assert_array_equal(schedules.values(schedule, [3, 0]), [0.5, 1.0])
    figure = schedules.plot(schedule, 4)
    (line,) = figure.axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), [1.0, 1.0, 0.5, 0.5])
    assert figure.axes[0].get_ylabel() == "learning rate"


@pytest.mark.parametrize(
    "make,error,words",
    [
        (lambda: WarmUp(0.1, 10, mode="cosine"), ValueError, "`mode`"),
        (lambda: WarmUp(0.1, 10, mode="exponential"), ValueError, "`initial_learning_rate` must be > 0"),
        (lambda: WarmUp(0.1, -1), ValueError, "`warmup_steps`"),
        (lambda: WarmUp(0.1, 2.5), TypeError, "`warmup_steps`"),
        (lambda: WarmUp({"class_name": "CosineDecay"}, 2), TypeError, "`after` is a config dict"),
        (lambda: WarmUp("0.1", 2), TypeError, "`after`"),
        (lambda: CosineAnnealingWarmupRestarts(10, warmup_steps=10), ValueError, "`warmup_steps` must be <"),
        (lambda: CosineAnnealingWarmupRestarts(10, cycle_mult=0.5), ValueError, "`cycle_mult`"),
        (lambda: MultiStepDecay(0.1, [5, 5]), ValueError, "strictly increasing"),
        (lambda: MultiStepDecay(0.1, []), TypeError, "`milestones`"),
        (lambda: MultiStepDecay(0.1, [0]), ValueError, "milestones"),
        (lambda: OneCycle(0.1, 3, pct_start=0.3), ValueError, "pct_start"),
        (lambda: OneCycle(0.1, 100, anneal="cosine"), ValueError, "`anneal`"),
        (lambda: schedules.values(MultiStepDecay(0.1, [2]), 0), ValueError, "`steps`"),
        (lambda: schedules.values(MultiStepDecay(0.1, [2]), [0.5]), ValueError, "`steps`"),
        (lambda: schedules.values(lambda step: 0.1, 3), TypeError, "`schedule`"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(make, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        make()
