"""accum_steps that changes by epoch ({epoch: accum_steps}): each epoch exact at its own window size."""

import keras
import numpy as np
import pytest

import keras_trainx
from accumulation_helpers import max_weight_difference, regression_data, regression_model
from keras_trainx.schedules import AccumulationSchedule, epochs_to_steps, updates_per_epoch


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def _reference(x, y, weights, batch_per_epoch):
    """Model.fit one epoch at a time, at each epoch's big batch (micro-batch x accum_steps)."""
    model = regression_model(_sgd())
    for batch in batch_per_epoch:
        model.fit(x, y, sample_weight=weights, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return model


def test_each_epoch_is_exact_at_its_own_window_size():
    # 27 samples in micro-batches of 3: 9 per epoch. Epochs 0-1 one per update, 2-3 three.
    x, y, weights = regression_data()
    accumulated = regression_model(_sgd())
    history = keras_trainx.fit_accumulated(accumulated, x, y, sample_weight=weights, batch_size=3,
                                           accum_steps={2: 3}, epochs=4, shuffle=False, verbose=0)
    reference = _reference(x, y, weights, [3, 3, 9, 9])
    assert int(accumulated.optimizer.iterations) == 9 + 9 + 3 + 3
    assert max_weight_difference(reference, accumulated) < 1e-6
    assert len(history.history["loss"]) == 4


@pytest.mark.parametrize("remainder, expected", [("apply", [4, 3]), ("drop", [3, 2])])
def test_remainder_applies_to_each_epochs_own_windows(remainder, expected):
    # 27 samples in micro-batches of 4: 7 per epoch. Epoch 0 windows of 2 (2,2,2,1), epoch 1 of 3
    # (3,3,1): the short last window of each epoch is applied or dropped.
    x, y, weights = regression_data()
    accumulated = regression_model(_sgd())
    keras_trainx.fit_accumulated(accumulated, x, y, sample_weight=weights, batch_size=4,
                                 accum_steps={0: 2, 1: 3}, remainder=remainder, epochs=2,
                                 shuffle=False, verbose=0)
    per_epoch = updates_per_epoch(27, 4, accum_steps={0: 2, 1: 3}, remainder=remainder, epochs=2)
    assert per_epoch == expected
    assert int(accumulated.optimizer.iterations) == sum(expected)
    if remainder == "apply":
        assert max_weight_difference(_reference(x, y, weights, [8, 12]), accumulated) < 1e-6


def test_a_run_resumed_at_initial_epoch_uses_that_epochs_window():
    x, y, weights = regression_data()
    schedule = AccumulationSchedule({0: 1, 1: 9})
    model = regression_model(_sgd())
    keras_trainx.fit_accumulated(model, x, y, sample_weight=weights, batch_size=3, accum_steps=schedule,
                                 epochs=1, shuffle=False, verbose=0)
    keras_trainx.fit_accumulated(model, x, y, sample_weight=weights, batch_size=3, accum_steps=schedule,
                                 epochs=3, initial_epoch=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 9 + 1 + 1
    assert max_weight_difference(_reference(x, y, weights, [3, 27, 27]), model) < 1e-6


def test_a_learning_rate_schedule_stated_in_epochs_follows_the_accumulation_schedule():
    # Decay by 10 at epoch 2, stated in epochs through the per-epoch update counts.
    x, y, weights = regression_data()
    per_epoch = updates_per_epoch(27, 3, accum_steps={1: 3}, epochs=3)
    assert per_epoch == [9, 3, 3]
    boundary = epochs_to_steps(2, per_epoch)
    assert boundary == 12
    learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay([boundary], [0.05, 0.005])
    model = regression_model(keras.optimizers.SGD(learning_rate))
    keras_trainx.fit_accumulated(model, x, y, sample_weight=weights, batch_size=3, accum_steps={1: 3},
                                 epochs=3, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 15
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)


def test_schedule_values_and_errors():
    schedule = AccumulationSchedule({3: 2, 6: 8})
    assert [schedule.at(e) for e in range(8)] == [1, 1, 1, 2, 2, 2, 8, 8]
    assert schedule.micro_batches_per_call == 8
    assert AccumulationSchedule({0: 3, 2: 4}).micro_batches_per_call == 12
    assert schedule.get_config() == {"scheduling": {0: 1, 3: 2, 6: 8}}
    with pytest.raises(ValueError, match=r"^`scheduling\[2\]` must be an int >= 1; received scheduling\[2\]=0\."):
        AccumulationSchedule({2: 0})
    with pytest.raises(ValueError, match="`scheduling key` must be an int >= 0; received scheduling key=-1"):
        AccumulationSchedule({-1: 2})
    with pytest.raises(TypeError, match=r"`scheduling` must be a non-empty dict \{epoch: accum_steps\}"):
        AccumulationSchedule({})
    with pytest.raises(ValueError, match="changes by epoch: pass `epochs`"):
        updates_per_epoch(27, 3, accum_steps={1: 3})
    with pytest.raises(ValueError, match=r"^`epochs` must be a number >= 0.0 and <= 3.0; received epochs=4.0. updates_per_epoch lists 3 epochs.$"):
        epochs_to_steps(4, [9, 3, 3])
    assert epochs_to_steps(3, [9, 3, 3]) == 15
