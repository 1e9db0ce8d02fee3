"""Every schedule refuses values that have no meaning, naming the argument and the accepted range."""

import pytest

from keras_trainx import schedules

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: schedules.CosineAnnealingWarmupRestarts(10, max_learning_rate=0.01, min_learning_rate=0.1),
         ValueError, "`min_learning_rate` must be a number >= 0.0 and <= 0.01; received min_learning_rate=0.1"),
        (lambda: schedules.CosineAnnealingWarmupRestarts(10, max_learning_rate=NAN), ValueError,
         "`max_learning_rate` must be a finite number"),
        (lambda: schedules.CosineAnnealingWarmupRestarts(10, max_learning_rate=0.2, max_lr=0.3), TypeError,
         "pass `max_learning_rate` only; `max_lr` is its deprecated name"),
        (lambda: schedules.CosineAnnealingWarmupRestarts(10, cycle_mult=INF), ValueError,
         "`cycle_mult` must be a finite number"),
        (lambda: schedules.CosineAnnealingWarmupRestarts(10, gamma=0.0), ValueError,
         "`gamma` must be a number > 0.0"),
        (lambda: schedules.CosineAnnealingWarmupRestarts(10.0), TypeError,
         "`first_cycle_steps` must be an int"),
        (lambda: schedules.WarmUp(NAN, 10), ValueError, "`after` must be a finite number"),
        (lambda: schedules.WarmUp(-0.1, 10), ValueError, "`after` must be a number >= 0.0"),
        (lambda: schedules.WarmUp(0.1, 10, initial_learning_rate=INF), ValueError,
         "`initial_learning_rate` must be a finite number"),
        (lambda: schedules.MultiStepDecay(NAN, [2]), ValueError,
         "`initial_learning_rate` must be a finite number"),
        (lambda: schedules.MultiStepDecay(0.1, [2], INF), ValueError, "`factor` must be a finite"),
        (lambda: schedules.MultiStepDecay(0.1, (2, 1)), ValueError, "strictly increasing"),
        (lambda: schedules.OneCycle(NAN, 100), ValueError, "`max_learning_rate` must be a finite"),
        (lambda: schedules.OneCycle(0.1, 100, div_factor=-1.0), ValueError,
         "`div_factor` must be a number > 0.0"),
        (lambda: schedules.values(schedules.MultiStepDecay(0.1, [2]), [-1]), ValueError,
         "`steps` must be"),
    ],
    ids=["cosine-min-above-max", "cosine-nan", "cosine-old-and-new-name", "cosine-inf-mult", "cosine-gamma-0",
         "cosine-float-steps", "warmup-nan", "warmup-negative", "warmup-inf-start", "multistep-nan",
         "multistep-inf-factor", "multistep-decreasing", "onecycle-nan", "onecycle-negative-div",
         "values-negative-step"],
)
def test_meaningless_values_are_refused(make, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[")):
        make()


def test_old_argument_names_still_load_old_configs_with_a_deprecation_warning():
    """A config saved by keras_trainx 0.1.0 (max_lr/min_lr) gives the same schedule, with a warning."""
    import keras
    import numpy as np

    old_config = {"first_cycle_steps": 10, "cycle_mult": 2.0, "max_lr": 0.1, "min_lr": 0.001,
                  "warmup_steps": 2, "gamma": 0.5}
    with pytest.warns(DeprecationWarning, match="`max_lr` is deprecated; use `max_learning_rate`"):
        loaded = keras.saving.deserialize_keras_object(
            {"module": None, "class_name": "keras_trainx>CosineAnnealingWarmupRestarts", "config": old_config,
             "registered_name": "keras_trainx>CosineAnnealingWarmupRestarts"})
    current = schedules.CosineAnnealingWarmupRestarts(10, 2.0, max_learning_rate=0.1, min_learning_rate=0.001,
                                                      warmup_steps=2, gamma=0.5)
    assert loaded.get_config() == current.get_config()
    np.testing.assert_array_equal(schedules.values(loaded, 70), schedules.values(current, 70))
    assert "max_lr" not in current.get_config() and current.get_config()["max_learning_rate"] == 0.1
