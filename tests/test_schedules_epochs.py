"""updates_per_epoch / epochs_to_steps against hand-counted windows, and against fit_accumulated."""

import keras
import numpy as np
import pytest

import keras_trainx
from keras_trainx.schedules import epochs_to_steps, updates_per_epoch

# (num_samples, batch_size, accum_steps, updates with remainder="apply", with "drop"), counted by hand:
HAND_COUNTED = [
    # 23 micro-batches (22 x 64 + 29); windows 6+6+6+5: the short fourth is applied or dropped
    (1437, 64, 6, 4, 3),
    # 23 micro-batches in windows of 16: 16 + 7
    (1437, 64, 16, 2, 1),
    # 4 micro-batches 8, 8, 8, 3 in one window of 4: the window is full (in micro-batches), kept
    (27, 8, 4, 1, 1),
    # 10 micro-batches, windows 3+3+3+1
    (100, 10, 3, 4, 3),
    # 10 micro-batches, windows 5+5: equal windows, nothing to drop
    (100, 10, 5, 2, 2),
    # 11 micro-batches (the last of 1 sample), windows 5+5+1
    (101, 10, 5, 3, 2),
    # no accumulation: one update per micro-batch, the last one short
    (101, 10, 1, 11, 11),
    # a single micro-batch larger than the data
    (5, 10, 1, 1, 1),
]


@pytest.mark.parametrize("num_samples,batch_size,accum_steps,apply,drop", HAND_COUNTED)
def test_updates_per_epoch_matches_hand_counts(num_samples, batch_size, accum_steps, apply, drop):
    assert updates_per_epoch(num_samples, batch_size, accum_steps=accum_steps) == apply
    assert updates_per_epoch(num_samples, batch_size, accum_steps=accum_steps, remainder="apply") == apply
    assert updates_per_epoch(num_samples, batch_size, accum_steps=accum_steps, remainder="drop") == drop
    assert type(updates_per_epoch(num_samples, batch_size, accum_steps=accum_steps)) is int


@pytest.mark.parametrize("micro_batches,accum_steps,apply,drop", [(23, 6, 4, 3), (10, 5, 2, 2), (7, 7, 1, 1), (3, 4, 1, None)])
def test_updates_per_epoch_from_micro_batches(micro_batches, accum_steps, apply, drop):
    assert updates_per_epoch(steps_per_epoch=micro_batches, accum_steps=accum_steps) == apply
    if drop is None:
        with pytest.raises(ValueError, match="no update would ever happen"):
            updates_per_epoch(steps_per_epoch=micro_batches, accum_steps=accum_steps, remainder="drop")
    else:
        assert updates_per_epoch(steps_per_epoch=micro_batches, accum_steps=accum_steps, remainder="drop") == drop


@pytest.mark.parametrize(
    "num_samples,batch_size,accum_steps,remainder,per_epoch",
    [
        (27, 8, 4, "apply", 1), (27, 8, 4, "drop", 1),
        (100, 10, 3, "apply", 4), (100, 10, 3, "drop", 3),
        (101, 10, 5, "apply", 3), (101, 10, 5, "drop", 2),
        (61, 4, 4, "apply", 4), (61, 4, 4, "drop", 4),  # 16 micro-batches (the last of 1 sample)
    ],
)
def test_fit_accumulated_makes_that_many_updates(num_samples, batch_size, accum_steps, remainder, per_epoch):
    """The hand count is also what fit_accumulated really does, over 3 epochs."""
    assert updates_per_epoch(num_samples, batch_size, accum_steps=accum_steps, remainder=remainder) == per_epoch
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    x = np.ones((num_samples, 2), "float32")
    keras_trainx.fit_accumulated(model, x, x[:, :1], batch_size=batch_size, accum_steps=accum_steps,
                                 remainder=remainder, epochs=3, verbose=0)
    assert int(model.optimizer.iterations) == 3 * per_epoch


def test_epochs_to_steps():
    assert epochs_to_steps(5, 4) == 20
    assert epochs_to_steps(0, 4) == 0
    assert epochs_to_steps([36, 51], 4) == [144, 204]
    assert epochs_to_steps((36, 51), 4) == [144, 204]
    assert epochs_to_steps(2.5, 3) == 8  # 7.5 rounds half up
    assert epochs_to_steps(0.85 * 30, 3) == 77  # 76.5
    assert epochs_to_steps(0.4, 3) == 1  # 1.2
    assert epochs_to_steps(np.int64(3), np.int64(2)) == 6
    assert type(epochs_to_steps(2.0, 3)) is int


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: updates_per_epoch(0, 64), ValueError, "`num_samples` must be an int >= 1"),
        (lambda: updates_per_epoch(1437.0, 64), TypeError, "`num_samples` must be an int"),
        (lambda: updates_per_epoch(1437, 0), ValueError, "`batch_size` must be an int >= 1"),
        (lambda: updates_per_epoch(1437, -64), ValueError, "`batch_size`"),
        (lambda: updates_per_epoch(1437, 64, accum_steps=0), ValueError, "`accum_steps` must be an int >= 1"),
        (lambda: updates_per_epoch(1437, 64, accum_steps=True), TypeError, "`accum_steps`"),
        (lambda: updates_per_epoch(1437, 64, accum_steps=2.0), TypeError, "`accum_steps`"),
        (lambda: updates_per_epoch(1437, 64, remainder="keep"), ValueError, "`remainder` must be one of"),
        (lambda: updates_per_epoch(1437), ValueError, "Pass `num_samples` and `batch_size`"),
        (lambda: updates_per_epoch(batch_size=64), ValueError, "Pass `num_samples` and `batch_size`"),
        (lambda: updates_per_epoch(1437, 64, steps_per_epoch=23), ValueError, "either"),
        (lambda: updates_per_epoch(steps_per_epoch=0), ValueError, "`steps_per_epoch` must be an int >= 1"),
        (lambda: updates_per_epoch(10, 10, accum_steps=2, remainder="drop"), ValueError,
         "1 micro-batches, fewer than accum_steps=2"),
        (lambda: epochs_to_steps(-1, 4), ValueError, "`epochs` must be a number >= 0"),
        (lambda: epochs_to_steps(float("nan"), 4), ValueError, "`epochs` must be a finite number"),
        (lambda: epochs_to_steps(float("inf"), 4), ValueError, "`epochs` must be a finite number"),
        (lambda: epochs_to_steps("5", 4), TypeError, "`epochs` must be a number"),
        (lambda: epochs_to_steps(True, 4), TypeError, "`epochs`"),
        (lambda: epochs_to_steps([1, -2], 4), ValueError, r"`epochs\[1\]` must be a number >= 0"),
        (lambda: epochs_to_steps([1, "2"], 4), TypeError, r"`epochs\[1\]`"),
        (lambda: epochs_to_steps(5, 0), ValueError, "`updates_per_epoch` must be an int >= 1"),
        (lambda: epochs_to_steps(5, 2.5), TypeError, "`updates_per_epoch`"),
    ],
)
def test_rejected_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()
