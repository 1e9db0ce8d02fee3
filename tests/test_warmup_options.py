"""WarmUp's relative start (`initial_fraction`), staircase warm-up (`staircase_steps`) and `offset`:
values against float64 closed forms, configs saved before these options existed, bad arguments."""

import json

import keras
import numpy as np
import pytest

from keras_trainx import schedules
from keras_trainx.schedules import MultiStepDecay, WarmUp


def test_initial_fraction_starts_at_that_fraction_of_the_peak_whatever_the_peak():
    for peak in (0.8, 4.8, 12.8):
        steps = np.arange(12)
        exponential = WarmUp(peak, warmup_steps=10, mode="exponential", initial_fraction=0.01)
        linear = WarmUp(peak, warmup_steps=10, initial_fraction=0.25)
        fraction = np.minimum(steps / 10.0, 1.0)
        np.testing.assert_allclose(schedules.values(exponential, steps), peak * 0.01 ** (1 - fraction), rtol=1e-5)
        np.testing.assert_allclose(schedules.values(linear, steps), peak * (0.25 + 0.75 * fraction), rtol=1e-6)


def test_initial_fraction_is_relative_to_the_wrapped_schedules_first_value():
    decay = keras.optimizers.schedules.ExponentialDecay(2.0, decay_steps=1, decay_rate=0.5)
    schedule = WarmUp(decay, warmup_steps=4, initial_fraction=0.5)
    # ramp 1.0 -> 2.0 over 4 steps, then 2.0 * 0.5 ** (step - 4)
    np.testing.assert_allclose(schedules.values(schedule, 7), [1.0, 1.25, 1.5, 1.75, 2.0, 1.0, 0.5], rtol=1e-6)


def test_staircase_holds_each_value_for_staircase_steps_updates():
    schedule = WarmUp(1.0, warmup_steps=10, staircase_steps=4)
    # stairs at 0, 4, 8 (the last one shorter): fractions 0, 0.4, 0.8, then the target at 10
    np.testing.assert_allclose(schedules.values(schedule, 12), [0] * 4 + [0.4] * 4 + [0.8] * 2 + [1, 1], atol=1e-7)


def test_staircase_steps_one_is_the_smooth_ramp():
    smooth = WarmUp(MultiStepDecay(0.3, [9]), 7, 0.003, "exponential")
    stairs = WarmUp(MultiStepDecay(0.3, [9]), 7, 0.003, "exponential", staircase_steps=1)
    np.testing.assert_array_equal(schedules.values(stairs, 12), schedules.values(smooth, 12))


def test_the_article_recipe_once_per_epoch_with_absolute_milestones():
    """Goyal et al.: lr = 10 ** (-2 + 0.4 e) * lr0 for epochs e <= 5, /10 at epochs 60 and 85 of 100."""
    per_epoch, lr0 = 3, 3.2
    schedule = WarmUp(
        MultiStepDecay(lr0, schedules.epochs_to_steps([60, 85], per_epoch), factor=0.1),
        warmup_steps=schedules.epochs_to_steps(5, per_epoch), mode="exponential",
        initial_fraction=0.01, staircase_steps=per_epoch, offset=False,
    )
    steps = np.arange(100 * per_epoch)
    epoch = steps // per_epoch
    expected = np.where(epoch <= 5, 10.0 ** (-2 + 0.4 * np.minimum(epoch, 5)) * lr0,
                        lr0 * 0.1 ** ((epoch >= 60).astype(float) + (epoch >= 85)))
    np.testing.assert_allclose(schedules.values(schedule, steps), expected, rtol=1e-5)


def test_offset_default_is_true_and_false_keeps_absolute_milestones():
    decay = MultiStepDecay(1.0, [6], factor=0.1)
    assert WarmUp(decay, 4).offset is True
    # offset=True: the milestone moves to 6 + 4 = 10; offset=False: it stays at 6
    np.testing.assert_allclose(schedules.values(WarmUp(decay, 4), [5, 6, 9, 10]), [1, 1, 1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(schedules.values(WarmUp(decay, 4, offset=False), [5, 6, 9, 10]),
                               [1, 0.1, 0.1, 0.1], rtol=1e-6)


OLD_MULTI_STEP = {
    "module": "keras_trainx.schedules.multi_step", "class_name": "MultiStepDecay",
    "config": {"initial_learning_rate": 0.1, "milestones": [3, 7], "factor": 0.5},
    "registered_name": "keras_trainx>MultiStepDecay",
}


def _old_warmup(offset):
    """A WarmUp as saved before `initial_fraction` and `staircase_steps` existed."""
    return {
        "module": "keras_trainx.schedules.warmup", "class_name": "WarmUp",
        "config": {"after": OLD_MULTI_STEP, "warmup_steps": 4, "initial_learning_rate": 0.001,
                   "mode": "exponential", "offset": offset},
        "registered_name": "keras_trainx>WarmUp",
    }


@pytest.mark.parametrize("offset", [True, False])
def test_configs_saved_before_the_new_options_load_with_the_same_schedule(offset):
    steps = np.arange(16)
    ramp = 0.001 * 100.0 ** (steps / 4)
    after_step = steps - 4 if offset else steps
    decayed = 0.1 * 0.5 ** ((after_step >= 3).astype(float) + (after_step >= 7))
    expected = np.where(steps < 4, ramp, decayed)
    for restored in (keras.saving.deserialize_keras_object(json.loads(json.dumps(_old_warmup(offset)))),
                     WarmUp.from_config(_old_warmup(offset)["config"])):
        assert restored.offset is offset
        assert restored.initial_fraction is None and restored.staircase_steps is None
        np.testing.assert_allclose(schedules.values(restored, steps), expected, rtol=1e-5)


def test_an_optimizer_saved_before_the_new_options_loads_with_the_same_schedule():
    optimizer_config = {
        "module": "keras.optimizers", "class_name": "SGD",
        "config": {"name": "SGD", "learning_rate": _old_warmup(True), "momentum": 0.9, "nesterov": False},
        "registered_name": None,
    }
    restored = keras.optimizers.deserialize(optimizer_config)
    expected = [0.001 * 100 ** (s / 4) for s in range(4)] + [0.1, 0.1, 0.1, 0.05]
    np.testing.assert_allclose(schedules.values(restored._learning_rate, 8), expected, rtol=1e-5)


def test_new_options_round_trip_through_json():
    schedule = WarmUp(MultiStepDecay(0.4, [9, 12]), 6, mode="exponential", offset=False,
                      initial_fraction=0.05, staircase_steps=2)
    config = schedule.get_config()
    assert config["initial_fraction"] == 0.05 and config["staircase_steps"] == 2 and config["offset"] is False
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(schedule))))
    assert restored.get_config() == config
    np.testing.assert_array_equal(schedules.values(restored, 15), schedules.values(schedule, 15))


@pytest.mark.parametrize(
    "make,error,words",
    [
        (lambda: WarmUp(0.1, 10, initial_fraction=1.5), ValueError, "`initial_fraction` must be a number >= 0.0 and <= 1.0"),
        (lambda: WarmUp(0.1, 10, initial_fraction=-0.1), ValueError, "`initial_fraction`"),
        (lambda: WarmUp(0.1, 10, initial_fraction=float("nan")), ValueError, "`initial_fraction` must be a finite"),
        (lambda: WarmUp(0.1, 10, initial_fraction="0.01"), TypeError, "`initial_fraction` must be a number"),
        (lambda: WarmUp(0.1, 10, initial_learning_rate=1e-3, initial_fraction=0.01), ValueError, "not both"),
        (lambda: WarmUp(0.1, 10, mode="exponential", initial_fraction=0.0), ValueError,
         "`initial_fraction` must be > 0 with mode='exponential'"),
        (lambda: WarmUp(0.1, 10, staircase_steps=0), ValueError, "`staircase_steps` must be an int >= 1"),
        (lambda: WarmUp(0.1, 10, staircase_steps=11), ValueError, "`staircase_steps` must be an int >= 1 and <= 10"),
        (lambda: WarmUp(0.1, 0, staircase_steps=2), ValueError, "`staircase_steps`"),
        (lambda: WarmUp(0.1, 10, staircase_steps=2.0), TypeError, "`staircase_steps` must be an int"),
        (lambda: WarmUp(0.1, 10, staircase_steps=True), TypeError, "`staircase_steps`"),
        (lambda: WarmUp(0.1, 10, offset=1), TypeError, "`offset` must be True or False"),
        (lambda: WarmUp(0.1, 10, mode="cosine"), ValueError, "`mode` must be one of"),
        (lambda: WarmUp(float("nan"), 10), ValueError, "`after` must be a finite"),
    ],
)
def test_rejected_arguments(make, error, words):
    with pytest.raises(error, match=words):
        make()
