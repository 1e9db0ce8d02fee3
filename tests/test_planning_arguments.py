"""Every rejected argument of keras_trainx.planning: the call, the error type and the whole message."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.experiments import digits_lr_range_test
from keras_trainx.planning import find_micro_batch_size, lr_range_test

X, Y = np.ones((16, 2), "float32"), np.ones((16, 1), "float32")


def model(compiled=True):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    if compiled:
        model.compile(optimizer="sgd", loss="mse")
    return model


def dataset():
    return tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)


class Sequence(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return X[:8], Y[:8]


def lr_test(**overrides):
    arguments = dict(x=X, y=Y, batch_size=4)
    arguments.update(overrides)
    return lambda: lr_range_test(arguments.pop("model", None) or model(), **arguments)


def finder(**overrides):
    arguments = dict(x=X, y=Y, effective_batch_size=8)
    arguments.update(overrides)
    return lambda: find_micro_batch_size(arguments.pop("model", None) or model(), **arguments)


CASES = [
    # lr_range_test
    (lambda: lr_range_test("model", X, Y, batch_size=4), TypeError,
     "`model` must be a keras.Model; received model of type str."),
    (lr_test(model=model(compiled=False)), ValueError,
     "`model` must be compiled with an optimizer and a loss before lr_range_test: call "
     "model.compile(optimizer=..., loss=...) first."),
    (lr_test(x=None), TypeError,
     "`x` must be numpy arrays or tensors (or a nested structure of them) or a tf.data.Dataset of micro-batches; "
     "received x of type NoneType. Convert a PyDataset or generator to a tf.data.Dataset "
     "(tf.data.Dataset.from_generator)."),
    (lr_test(x=Sequence(), y=None), TypeError,
     "`x` must be numpy arrays or tensors (or a nested structure of them) or a tf.data.Dataset of micro-batches; "
     "received x of type Sequence. Convert a PyDataset or generator to a tf.data.Dataset "
     "(tf.data.Dataset.from_generator)."),
    (lr_test(x=[[1.0, 2.0]]), TypeError,
     "`x` must be numpy arrays or tensors (or a nested structure of them) or a tf.data.Dataset of micro-batches; "
     "received x of type list. Convert a PyDataset or generator to a tf.data.Dataset "
     "(tf.data.Dataset.from_generator)."),
    (lr_test(y=Y[:10]), ValueError,
     "`x` and `y` must hold the same number of samples, at least 1; received arrays of 10 and 16 samples."),
    (lr_test(batch_size=None), TypeError,
     "`batch_size` must be an int for array data (the micro-batch size); received batch_size=None."),
    (lr_test(batch_size=0), ValueError,
     "`batch_size` must be an int >= 1; received batch_size=0. It is the micro-batch size."),
    (lr_test(x=dataset(), y=Y, batch_size=None), ValueError,
     "`y` must be None when `x` is a tf.data.Dataset (the dataset yields the targets); received y of type ndarray."),
    (lr_test(x=dataset(), y=None), ValueError,
     "`batch_size` must be None when `x` is a tf.data.Dataset (the dataset yields micro-batches); received "
     "batch_size=4."),
    (lr_test(accum_steps=0), ValueError,
     "`accum_steps` must be an int >= 1; received accum_steps=0. It counts micro-batches per update; 1 means no "
     "accumulation."),
    (lr_test(min_learning_rate=0.0), ValueError,
     "`min_learning_rate` must be a number > 0.0; received min_learning_rate=0.0."),
    (lr_test(min_learning_rate="1e-5"), TypeError,
     "`min_learning_rate` must be a number; received min_learning_rate='1e-5' of type str."),
    (lr_test(min_learning_rate=0.1, max_learning_rate=0.1), ValueError,
     "`max_learning_rate` must be a number > 0.1; received max_learning_rate=0.1. The sweep grows the rate from "
     "min_learning_rate to max_learning_rate."),
    (lr_test(max_learning_rate=float("inf")), ValueError,
     "`max_learning_rate` must be a finite number; received max_learning_rate=inf. The sweep grows the rate from "
     "min_learning_rate to max_learning_rate."),
    (lr_test(num_updates=2), ValueError,
     "`num_updates` must be an int >= 3; received num_updates=2. The suggestion rules need at least 3 updates."),
    (lr_test(num_updates=50.0), TypeError,
     "`num_updates` must be an int; received num_updates=50.0 of type float. The suggestion rules need at least 3 "
     "updates."),
    (lr_test(smoothing=1.0), ValueError,
     "`smoothing` must be a number >= 0.0 and < 1.0; received smoothing=1.0. It is the weight of the past in the "
     "moving average; 0 disables smoothing."),
    (lr_test(smoothing=-0.5), ValueError,
     "`smoothing` must be a number >= 0.0 and < 1.0; received smoothing=-0.5. It is the weight of the past in the "
     "moving average; 0 disables smoothing."),
    (lr_test(divergence_factor=1.0), ValueError,
     "`divergence_factor` must be a number > 1.0; received divergence_factor=1.0. The sweep stops once the "
     "smoothed loss exceeds this multiple of its lowest value."),
    # digits_lr_range_test (checked before loading the data)
    (lambda: digits_lr_range_test(100), ValueError,
     "`effective_batch_size` must be a multiple of micro_batch=64 (the effective batch is micro_batch x "
     "accum_steps); received effective_batch_size=100."),
    (lambda: digits_lr_range_test(32), ValueError,
     "`effective_batch_size` must be an int >= 64; received effective_batch_size=32."),
    (lambda: digits_lr_range_test(64, momentum=1.0), ValueError,
     "`momentum` must be a number >= 0.0 and < 1.0; received momentum=1.0."),
    # find_micro_batch_size
    (lambda: find_micro_batch_size(None, X, Y, effective_batch_size=8), TypeError,
     "`model` must be a keras.Model; received model of type NoneType."),
    (finder(model=model(compiled=False)), ValueError,
     "`model` must be compiled with an optimizer and a loss before find_micro_batch_size: call "
     "model.compile(optimizer=..., loss=...) first."),
    (finder(effective_batch_size=0), ValueError,
     "`effective_batch_size` must be an int >= 1; received effective_batch_size=0. It is the number of samples "
     "per optimizer update to plan for."),
    (finder(effective_batch_size=64.0), TypeError,
     "`effective_batch_size` must be an int; received effective_batch_size=64.0 of type float. It is the number "
     "of samples per optimizer update to plan for."),
    (finder(memory_budget=0), ValueError,
     "`memory_budget` must be an int >= 1; received memory_budget=0. It is a number of bytes, or None for no "
     "budget."),
    (finder(memory_budget="8GB"), TypeError,
     "`memory_budget` must be an int; received memory_budget='8GB' of type str. It is a number of bytes, or None "
     "for no budget."),
    (finder(x=dataset(), y=None), TypeError,
     "`x` must be numpy arrays or tensors (or a nested structure of them); received x of type _BatchDataset."),
    (finder(y=[1.0] * 16), TypeError,
     "`y` must be numpy arrays or tensors (or a nested structure of them); received y of type list."),
    (finder(x=X[:0], y=Y[:0]), ValueError,
     "`x` and `y` must hold the same number of samples, at least 1; received arrays of 0 samples."),
]


@pytest.mark.parametrize("call, error, message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_rejected_argument(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message
