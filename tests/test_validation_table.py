"""Every rejected value of the public entry points of schedules, hard_mish, fit_accumulated, distribute,
saving and the demo.

(Data arguments: tests/test_data_arguments.py; the command line: tests/test_cli_errors.py.)

One row per case: the call, the error type (`TypeError` for a wrong type, `ValueError` for a value out
of range) and the whole message, which names the argument, the accepted range and what was received
(keras_trainx.validation's one style). Each of these calls was accepted silently, or failed somewhere
deep without naming the argument, before the reliability sweep (issue #12).
"""

import contextlib
import math
import os
import re
import signal
import warnings
import zipfile

import h5py
import numpy as np
import pytest
import tensorflow as tf

import keras

import keras_trainx
from keras_trainx import demo, distribute, saving, schedules
from keras_trainx.data import AugmentedSequence
from keras_trainx.experiments import warmup_schedule
from keras_trainx.schedules import CosineAnnealingWarmupRestarts as Restarts
from keras_trainx.schedules import OneCycle

NAN, INF = math.nan, math.inf


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _with_tf_config(config):
    """`auto_strategy()` with TF_CONFIG set to `config` (JSON) for the call."""
    import json

    previous = os.environ.get("TF_CONFIG")
    os.environ["TF_CONFIG"] = json.dumps(config)
    try:
        return distribute.auto_strategy()
    finally:
        if previous is None:
            del os.environ["TF_CONFIG"]
        else:
            os.environ["TF_CONFIG"] = previous


ANNEALS = "Each cycle anneals from its peak max_learning_rate down to min_learning_rate."
MISSING = "/nonexistent/model.keras"
INT64_STEPS = "The optimizer counts steps in int64: no step lies beyond 2**63 - 1."

CASES = [
    # CosineAnnealingWarmupRestarts
    (lambda: Restarts(0), ValueError, "`first_cycle_steps` must be an int >= 1; received first_cycle_steps=0."),
    (lambda: Restarts(10.0), TypeError,
     "`first_cycle_steps` must be an int; received first_cycle_steps=10.0 of type float."),
    (lambda: Restarts(10, cycle_mult=0.5), ValueError, "`cycle_mult` must be a number >= 1.0; received cycle_mult=0.5."),
    (lambda: Restarts(10, cycle_mult=NAN), ValueError, "`cycle_mult` must be a finite number; received cycle_mult=nan."),
    (lambda: Restarts(10, max_learning_rate=-0.1), ValueError,
     "`max_learning_rate` must be a number >= 0.0; received max_learning_rate=-0.1."),
    (lambda: Restarts(10, max_learning_rate=INF), ValueError,
     "`max_learning_rate` must be a finite number; received max_learning_rate=inf."),
    (lambda: Restarts(10, max_learning_rate="0.1"), TypeError,
     "`max_learning_rate` must be a number; received max_learning_rate='0.1' of type str."),
    (lambda: Restarts(10, min_learning_rate=-1e-3), ValueError,
     "`min_learning_rate` must be a number >= 0.0 and <= 0.1; received min_learning_rate=-0.001. " + ANNEALS),
    (lambda: Restarts(10, max_learning_rate=0.01, min_learning_rate=0.1), ValueError,
     "`min_learning_rate` must be a number >= 0.0 and <= 0.01; received min_learning_rate=0.1. " + ANNEALS),
    (lambda: Restarts(10, max_lr=0.01, min_lr=0.1), ValueError,
     "`min_learning_rate` must be a number >= 0.0 and <= 0.01; received min_learning_rate=0.1. " + ANNEALS),
    (lambda: Restarts(10, warmup_steps=-1), ValueError, "`warmup_steps` must be an int >= 0; received warmup_steps=-1."),
    (lambda: Restarts(10, warmup_steps=10), ValueError,
     "`warmup_steps` must be < `first_cycle_steps` (each cycle needs a cosine part); received warmup_steps=10, "
     "first_cycle_steps=10."),
    (lambda: Restarts(10, gamma=0.0), ValueError, "`gamma` must be a number > 0.0; received gamma=0.0."),
    (lambda: Restarts(10, max_learning_rate=0.2, max_lr=0.3), TypeError,
     "CosineAnnealingWarmupRestarts: pass `max_learning_rate` only; `max_lr` is its deprecated name. Received "
     "max_learning_rate=0.2 and max_lr=0.3."),
    # OneCycle
    (lambda: OneCycle(0.0, 100), ValueError, "`max_learning_rate` must be a number > 0.0; received max_learning_rate=0.0."),
    (lambda: OneCycle(NAN, 100), ValueError, "`max_learning_rate` must be a finite number; received max_learning_rate=nan."),
    (lambda: OneCycle(0.1, 1), ValueError, "`total_steps` must be an int >= 2; received total_steps=1."),
    (lambda: OneCycle(0.1, 100, pct_start=1.0), ValueError,
     "`pct_start * total_steps - 1` (the step of the peak) must lie in (0, total_steps - 1); received "
     "pct_start=1.0, total_steps=100 (peak 99.0). Raise total_steps or move pct_start towards 0.5."),
    (lambda: OneCycle(0.1, 100, div_factor=0), ValueError, "`div_factor` must be a number > 0.0; received div_factor=0.0."),
    (lambda: OneCycle(0.1, 100, final_div_factor=-1), ValueError,
     "`final_div_factor` must be a number > 0.0; received final_div_factor=-1.0."),
    (lambda: OneCycle(0.1, 100, anneal="cosine"), ValueError,
     "`anneal` must be one of ('cos', 'linear'); received anneal='cosine'."),
    # a saved WarmUp config without its `after` (the schedule the warm-up hands over to)
    (lambda: schedules.WarmUp.from_config({"warmup_steps": 10}), TypeError,
     "A WarmUp config must hold `after` (the schedule or constant learning rate after the warm-up); received a "
     "config with the keys ['warmup_steps']."),
    # values() and plot()
    (lambda: schedules.values(OneCycle(0.1, 10), 0), ValueError,
     "`steps` must be >= 1 when given as an int; received steps=0."),
    (lambda: schedules.values(OneCycle(0.1, 10), True), TypeError,
     "`steps` must be an int or a 1-D sequence of ints; received steps=True of type bool."),
    (lambda: schedules.values(OneCycle(0.1, 10), [3, -1]), ValueError,
     "`steps` must be an int or a non-empty 1-D sequence of non-negative ints; received [3, -1]."),
    (lambda: schedules.plot(OneCycle(0.1, 10), 5, ax="axes"), TypeError,
     "`ax` must be a matplotlib Axes or None; received ax='axes' of type str."),
    # steps beyond the optimizer's int64 counter (issue #26: TensorFlow failed without naming the argument,
    # or the step wrapped round to a negative one and the schedule gave its first rate)
    (lambda: schedules.WarmUp(0.1, warmup_steps=2**63), ValueError,
     "`warmup_steps` must be <= 2**63 - 1 (9223372036854775807); received warmup_steps=9223372036854775808. "
     + INT64_STEPS),
    (lambda: schedules.MultiStepDecay(0.1, [10, 2**63]), ValueError,
     "`milestones[1]` must be <= 2**63 - 1 (9223372036854775807); received "
     "milestones[1]=9223372036854775808. " + INT64_STEPS),
    (lambda: OneCycle(0.1, 2**63), ValueError,
     "`total_steps` must be <= 2**63 - 1 (9223372036854775807); received total_steps=9223372036854775808. "
     + INT64_STEPS),
    (lambda: Restarts(2**63), ValueError,
     "`first_cycle_steps` must be <= 2**63 - 1 (9223372036854775807); received "
     "first_cycle_steps=9223372036854775808. " + INT64_STEPS),
    (lambda: OneCycle(0.1, 100)(2**63), ValueError,
     "`step` must be <= 2**63 - 1 (9223372036854775807); received step=9223372036854775808. " + INT64_STEPS),
    (lambda: schedules.values(OneCycle(0.1, 100), np.array([5, 2**63], np.uint64)), ValueError,
     "`steps` must hold steps <= 2**63 - 1; received steps[1]=9223372036854775808. " + INT64_STEPS),
    (lambda: schedules.values(OneCycle(0.1, 100), 2**63 + 1), ValueError,
     "`steps` must be <= 2**63 - 1 when given as an int (steps 0 .. n-1); received steps=9223372036854775809. "
     + INT64_STEPS),
    # distribute
    (lambda: distribute.auto_strategy(probe_timeout=0), ValueError,
     "`probe_timeout` must be a number > 0.0; received probe_timeout=0.0."),
    (lambda: distribute.auto_strategy(probe_timeout="5"), TypeError,
     "`probe_timeout` must be a number; received probe_timeout='5' of type str."),
    (lambda: distribute.auto_strategy(connect_timeout=NAN), ValueError,
     "`connect_timeout` must be a finite number; received connect_timeout=nan."),
    (lambda: distribute.auto_strategy(tpu=" "), ValueError,
     "`tpu` must not be empty: pass a TPU name, 'grpc://host:port' or 'local', or tpu=None to detect a TPU from "
     "the environment."),
    # a malformed TF_CONFIG (auto_strategy reads it from the environment)
    (lambda: _with_tf_config({"cluster": 3}), ValueError,
     'TF_CONFIG\'s "cluster" must be a JSON object of task type -> list of "host:port" addresses, e.g. '
     '{"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}; received 3. Fix or unset TF_CONFIG.'),
    (lambda: _with_tf_config({"cluster": {"worker": 3}}), ValueError,
     'TF_CONFIG\'s cluster["worker"] must be a list of "host:port" addresses; received 3. Fix or unset '
     "TF_CONFIG."),
    (lambda: _with_tf_config({"cluster": {"worker": "10.0.0.1:2222,10.0.0.2:2222"}}), ValueError,
     'TF_CONFIG\'s cluster["worker"] must be a list of "host:port" addresses; received '
     "'10.0.0.1:2222,10.0.0.2:2222'. Fix or unset TF_CONFIG."),
    (lambda: _with_tf_config({"cluster": {"worker": ["a:1", 2]}}), ValueError,
     'TF_CONFIG\'s cluster["worker"] must be a list of "host:port" addresses; received [\'a:1\', 2]. Fix or '
     "unset TF_CONFIG."),
    (lambda: _with_tf_config({"cluster": {"worker": ["a:1", "b:2"]}, "task": "worker"}), ValueError,
     'TF_CONFIG\'s "task" must be a JSON object like {"type": "worker", "index": 0} naming this process\'s '
     "task in the cluster; received 'worker'. Fix or unset TF_CONFIG."),
    (lambda: _with_tf_config({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}),
     ValueError, 'TF_CONFIG\'s task {"type": "worker", "index": 2} is not in the cluster, which has 2 '
                 '"worker" task(s). Fix or unset TF_CONFIG.'),
    (lambda: _with_tf_config({"cluster": {"worker": ["a:1", "b:2"]}}), ValueError,
     'TF_CONFIG names 2 tasks but no "task" (this process\'s {"type": ..., "index": ...}). Fix or unset '
     "TF_CONFIG."),
    (lambda: distribute.global_batch_size(0), ValueError,
     "`per_replica_batch_size` must be an int >= 1; received per_replica_batch_size=0."),
    (lambda: distribute.scale_learning_rate(INF, 64, 32), ValueError,
     "`base_learning_rate` must be a finite number; received base_learning_rate=inf. It is the rate tuned at "
     "base_batch_size."),
    (lambda: distribute.scale_learning_rate(NAN, 64, 32), ValueError,
     "`base_learning_rate` must be a finite number; received base_learning_rate=nan. It is the rate tuned at "
     "base_batch_size."),
    (lambda: distribute.scale_learning_rate(0.1, -1, 32), ValueError,
     "`global_batch_size` must be an int >= 1; received global_batch_size=-1."),
    (lambda: distribute.input_dataset(np.zeros(4), batch_size=2, seed=-1), ValueError,
     "`seed` must be an int >= 0 and <= 9223372036854775807; received seed=-1. None draws a random order."),
    # saving
    (lambda: saving.load_model(MISSING), FileNotFoundError, f"No such file or directory: {MISSING!r}."),
    (lambda: saving.read_config(MISSING), FileNotFoundError, f"No such file or directory: {MISSING!r}."),
    (lambda: saving.referenced_objects(__file__, custom_objects="x"), TypeError,
     "`custom_objects` must be a dict of name -> object; received 'x'."),
    (lambda: schedules.MultiStepDecay(0.1, [4, -1]), ValueError,
     "`milestones[1]` must be an int >= 1; received milestones[1]=-1."),
    (lambda: saving.load_model(123), TypeError,
     "`filepath` must be a path (str or os.PathLike); received filepath=123 of type int."),
    # hard_mish on what is not a tensor of floats (issue #26: TensorFlow failed without naming hard_mish)
    (lambda: keras_trainx.activations.hard_mish(np.array([1, -1, 3])), TypeError,
     "hard_mish: `x` must be a tensor of floats; received a tensor of dtype int64. Cast it first, e.g. "
     '`keras.ops.cast(x, "float32")`.'),
    (lambda: keras_trainx.activations.hard_mish([True]), TypeError,
     "hard_mish: `x` must be a tensor of floats; received a tensor of dtype bool. Cast it first, e.g. "
     '`keras.ops.cast(x, "float32")`.'),
    (lambda: keras_trainx.activations.hard_mish(None), TypeError,
     "hard_mish: `x` must be a tensor of floats; received x=None of type NoneType."),
    (lambda: keras_trainx.activations.hard_mish("1.5"), TypeError,
     "hard_mish: `x` must be a tensor of floats; received x='1.5' of type str."),
    # fit_accumulated's counts (Keras' fit would take batch_size=0 for its default and epochs=-1 for none)
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2, batch_size=0),
     ValueError, "`batch_size` must be an int >= 1; received batch_size=0."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2, epochs=-1),
     ValueError, "`epochs` must be an int >= 0; received epochs=-1."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          steps_per_epoch=2.5),
     TypeError, "`steps_per_epoch` must be an int; received steps_per_epoch=2.5 of type float."),
    (lambda: keras_trainx.fit_accumulated(_model(), None, accum_steps=2), ValueError,
     "x is None: fit_accumulated needs training data, as model.fit does. Pass arrays (x, y), a "
     "tf.data.Dataset, a keras.utils.PyDataset or a generator."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2, callbacks="str"),
     TypeError, "`callbacks` must be a list of keras.callbacks.Callback objects; received callbacks='str' of "
     "type str."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2, callbacks=[len]),
     TypeError, "`callbacks[0]` must be a keras.callbacks.Callback; received <built-in function len> of type "
     "builtin_function_or_method. Subclass keras.callbacks.Callback, or use keras.callbacks.LambdaCallback for "
     "plain functions."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps={0: 2, 3: 0}),
     ValueError, "`scheduling[3]` must be an int >= 1; received scheduling[3]=0. Values are micro-batches per "
     "update."),
    # what Model.fit accepts silently with a wrong result (issue #26): no samples (an empty History, no
    # training), a validation_split outside [0, 1) (1.5 holds out the last half), class_weight keys no label
    # can match (ignored)
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((0, 2)), np.zeros((0, 1)), accum_steps=2),
     ValueError, "x holds 0 samples (an array of shape (0, 2)): there is nothing to train on (model.fit would "
                 "return an empty History without training). Pass at least one sample."),
    (lambda: keras_trainx.fit_accumulated(_model(), {"x": np.zeros((4, 2))}, [np.zeros((0,))], accum_steps=2),
     ValueError, "y holds 0 samples (an array of shape (0,)): there is nothing to train on (model.fit would "
                 "return an empty History without training). Pass at least one sample."),
    (lambda: keras_trainx.fit_accumulated(
        _model(), tf.data.Dataset.from_tensor_slices((np.zeros((0, 2)), np.zeros(0))).batch(2), accum_steps=2),
     ValueError, "x is a tf.data.Dataset without a single batch: there is nothing to train on (model.fit would "
                 "return an empty History without training). Pass a dataset that yields batches."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          validation_split=1.5),
     ValueError, "`validation_split` must be a number >= 0.0 and < 1.0; received validation_split=1.5. It is the "
                 "fraction of the samples (the last ones) held out for validation, e.g. 0.2; model.fit would "
                 "split elsewhere without a word (1.5 holds out the last half, a negative value nothing)."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          class_weight={"1": 2.0}),
     ValueError, "`class_weight` keys must be class indices (ints); received the key '1' of type str, which no "
                 "label matches: model.fit would ignore it. Key the weights by the labels' integer values (for "
                 "one-hot labels, the column)."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          class_weight={0.5: 2.0}),
     ValueError, "`class_weight` keys must be class indices (ints); received the key 0.5 of type float, which no "
                 "label matches: model.fit would ignore it. Key the weights by the labels' integer values (for "
                 "one-hot labels, the column)."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          class_weight={0: 1.0, 1: NAN}),
     ValueError, "`class_weight[1]` must be a finite number; received class_weight[1]=nan."),
    (lambda: keras_trainx.fit_accumulated(_model(), np.zeros((4, 2)), np.zeros(4), accum_steps=2,
                                          class_weight=[1.0, 2.0]),
     TypeError, "`class_weight` must be a dict of class index -> weight; received class_weight=[1.0, 2.0] of "
                "type list."),
    # AugmentedSequence's class names
    (lambda: AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 3, num_classes=3,
                               class_names=["a", "b"]), ValueError,
     "`class_names` must name the 3 classes of num_classes=3; received 2 names."),
    (lambda: AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), class_names=["a", "b"]), ValueError,
     "`class_names` has 2 names but y holds labels from 0 to 3; give one name per class, in label order."),
    (lambda: AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), class_names="ab"), TypeError,
     "`class_names` must be a list of strings; received class_names='ab'."),
    # the warm-up experiment's schedule
    (lambda: warmup_schedule(64, 4, epochs=0, warmup=True), ValueError, "`epochs` must be an int >= 1; received epochs=0."),
    (lambda: warmup_schedule(64, 4, epochs=10, warmup="yes"), TypeError,
     "`warmup` must be True or False; received warmup='yes' of type str."),
    # the demo (all checked before any work)
    (lambda: demo.run(epochs=0), ValueError, "`epochs` must be an int >= 1; received epochs=0."),
    (lambda: demo.run(accum_steps=0), ValueError, "`accum_steps` must be an int >= 1; received accum_steps=0."),
    (lambda: demo.run(batch_size=5000), ValueError,
     "`batch_size` must be an int >= 1 and <= 1437; received batch_size=5000. It is the micro-batch; the demo "
     "trains on 1437 digits."),
    (lambda: demo.run(output_dir=__file__), ValueError,
     f"`output_dir` must be a folder; received output_dir={__file__!r}, an existing file."),
    (lambda: demo.run(output_dir=3), TypeError, "`output_dir` must be a path; received output_dir=3 of type int."),
    (lambda: demo.run(output_dir=os.path.join(__file__, "models")), ValueError,
     f"`output_dir` cannot be created: {__file__!r} is a file, not a folder; received "
     f"output_dir={os.path.join(__file__, 'models')!r}."),
    (lambda: demo.run(seed=-1), ValueError, "`seed` must be an int >= 0 and <= 4294967295; received seed=-1."),
    (lambda: demo.run(verbose=3), ValueError, "`verbose` must be an int >= 0 and <= 2; received verbose=3."),
]


@pytest.mark.parametrize("call,error,message", CASES, ids=[c[2][:60] for c in CASES])
def test_rejected_with_a_message_naming_the_argument(call, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(error) as info:
            call()
    assert type(info.value) is error
    assert str(info.value) == message


# Saved-model files that are not readable models (issue #22): `read_config`, `referenced_objects` and
# `load_model` raise the same ValueError naming the file and what is wrong, before any other work;
# `keras-trainx inspect` prints it as one line and exits with status 2. A named pipe or a directory is
# refused before anything is read from it (a pipe would block the reader until a writer comes).

NOT_A_MODEL = "pass a .keras file, an unzipped .keras directory or an .h5 file"


def _zip(path, files, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _with_config(directory, name, config):
    return _zip(directory / name, {"metadata.json": b"{}", "config.json": config, "model.weights.h5": b""})


def _damaged(directory, name, method):
    """A .keras zip whose config.json bytes are overwritten after writing (bad CRC or bad deflate data)."""
    path = _zip(directory / name, {"config.json": b'{"class_name": "Sequential", "config": {}}' * 20}, method)
    info = zipfile.ZipFile(path).getinfo("config.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return path


def _fifo(directory):
    os.mkfifo(directory / "pipe.keras")
    return directory / "pipe.keras"


def _h5_weights_only(directory):
    with h5py.File(directory / "weights.h5", "w") as f:
        f.create_dataset("w", data=np.zeros(2))
    return directory / "weights.h5"


def _named(directory, name, data):
    (directory / name).write_bytes(data)
    return directory / name


FILE_CASES = [
    ("no-config", lambda d: _zip(d / "noconfig.keras", {"metadata.json": b"{}"}),
     "{p} is not a readable saved model: the zip archive holds no config.json."),
    ("bad-crc", lambda d: _damaged(d, "crc.keras", zipfile.ZIP_STORED),
     "{p} is not a readable saved model: the zip archive is damaged (Bad CRC-32 for file 'config.json')."),
    ("bad-deflate", lambda d: _damaged(d, "deflate.keras", zipfile.ZIP_DEFLATED),
     "{p} is not a readable saved model: the zip archive is damaged (Error -3 while decompressing data: "
     "invalid block type)."),
    ("not-json", lambda d: _with_config(d, "notjson.keras", b"{not json"),
     "{p} is not a readable saved model: config.json is not JSON (Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1))."),
    ("not-utf8", lambda d: _with_config(d, "latin1.keras", '{"name": "caf\xe9"}'.encode("latin-1")),
     "{p} is not a readable saved model: config.json is not UTF-8 text ('utf-8' codec can't decode byte 0xe9 "
     "in position 13: invalid continuation byte)."),
    ("deeply-nested", lambda d: _with_config(d, "nested.keras", b"[" * 100_000 + b"]" * 100_000),
     "{p} is not a readable saved model: config.json is nested too deeply to be a model config."),
    ("a-number", lambda d: _with_config(d, "number.keras", b"3"),
     "{p} is not a readable saved model: config.json holds a JSON number, not a model config (a JSON object)."),
    ("a-list", lambda d: _with_config(d, "list.keras", b"[]"),
     "{p} is not a readable saved model: config.json holds a JSON array, not a model config (a JSON object)."),
    ("text-file", lambda d: _named(d, "notes.keras", b"not a model"),
     "{p} is not a readable saved model: it is neither a .keras zip archive nor an HDF5 (.h5) file; "
     + NOT_A_MODEL + "."),
    ("h5-weights-only", _h5_weights_only,
     "{p} is not a readable saved model: the HDF5 file holds no model config (a weights-only file?)."),
    ("directory", lambda d: (d / "folder").mkdir() or d / "folder",
     "{p} is not a readable saved model: it is a directory without config.json; " + NOT_A_MODEL + "."),
    ("named-pipe", _fifo, "{p} is not a readable saved model: it is a named pipe; " + NOT_A_MODEL + "."),
]


@contextlib.contextmanager
def _deadline(seconds):
    """Fails the test instead of hanging when the block takes longer than `seconds` (a blocked read)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("make,message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_unreadable_saved_models_are_refused_naming_the_file(make, message, tmp_path, capsys):
    from keras_trainx import cli

    path = make(tmp_path)
    expected = message.format(p=repr(str(path)))
    for call in (saving.read_config, saving.referenced_objects, keras_trainx.load_model):
        with _deadline(20), pytest.raises(ValueError) as info:
            call(path)
        assert type(info.value) is ValueError and str(info.value) == expected, call.__name__
    with _deadline(20):
        assert cli.main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == f"keras-trainx inspect: error: MODEL: {expected}\n"


def test_an_unreadable_file_is_an_os_error_naming_it(tmp_path, capsys):
    from keras_trainx import cli

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = _with_config(tmp_path, "locked.keras", b"{}")
    path.chmod(0)
    with pytest.raises(PermissionError, match=re.escape(repr(str(path)))):
        saving.read_config(path)
    assert cli.main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_damaged_weights_in_a_keras_archive_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    info = zipfile.ZipFile(path).getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data = bytearray(path.read_bytes())
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    assert saving.read_config(path)["class_name"] == "Sequential"
    with pytest.raises(ValueError) as info:
        keras_trainx.load_model(path)
    assert str(info.value) == (f"{str(path)!r} is not a readable saved model: the zip archive is damaged "
                               "(Bad CRC-32 for file 'model.weights.h5').")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_h5_model_is_refused_naming_the_file(keep, tmp_path, capsys):
    """h5py's own error (an OSError) did not name the file (issue #26)."""
    from keras_trainx import cli

    whole = tmp_path / "whole.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(whole)
    data = whole.read_bytes()
    path = _named(tmp_path, "cut.h5", data[:int(len(data) * keep)])
    expected = (f"{str(path)!r} is not a readable saved model: the HDF5 file is truncated or damaged (Unable to "
                f"synchronously open file (truncated file: eof = {int(len(data) * keep)}, sblock->base_addr = 0, "
                f"stored_eof = {len(data)})).")
    for call in (saving.read_config, saving.referenced_objects, keras_trainx.load_model):
        with pytest.raises(ValueError) as info:
            call(path)
        assert type(info.value) is ValueError and str(info.value) == expected, call.__name__
    assert cli.main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == f"keras-trainx inspect: error: MODEL: {expected}\n"
