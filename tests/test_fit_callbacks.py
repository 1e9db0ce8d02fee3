"""fit_accumulated's training loop behaves as Model.fit's: metrics, validation, callbacks, resume."""

import csv
import os

import keras
import numpy as np
import pytest

import keras_trainx
from accumulation_helpers import max_weight_difference, regression_data, regression_model


class _SetWeightsEachEpoch(keras.callbacks.Callback):
    """Loads a different weight set at each epoch start and records what `evaluate` says of it."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.expected = []

    def on_epoch_begin(self, epoch, logs=None):
        rng = np.random.default_rng(100 + epoch)
        self.model.set_weights([rng.normal(size=w.shape).astype("float32")
                                for w in self.model.get_weights()])
        self.expected.append(self.model.evaluate(self.x, self.y, verbose=0, return_dict=True))


def test_metrics_reset_at_each_epoch_and_match_evaluate():
    # With lr=0 the weights stay at what the callback loaded, so each epoch's training metrics must
    # equal evaluate() on those weights; a metric not reset would mix in the previous epoch.
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.0))
    recorder = _SetWeightsEachEpoch(x, y)
    history = keras_trainx.fit_accumulated(
        model, x, y, batch_size=5, accum_steps=2, epochs=3, callbacks=[recorder], verbose=0
    )
    for name in ("loss", "mae"):
        np.testing.assert_allclose(
            history.history[name], [e[name] for e in recorder.expected], rtol=1e-5
        )
    assert history.history["loss"][0] != pytest.approx(history.history["loss"][1], rel=1e-3)


def test_validation_logs_and_frequency_match_fit():
    x, y, _ = regression_data(n=40)
    xv, yv, _ = regression_data(n=12, seed=4)
    reference = regression_model(keras.optimizers.SGD(0.05))
    accumulated = regression_model(keras.optimizers.SGD(0.05))
    expected = reference.fit(x, y, batch_size=12, epochs=4, shuffle=False,
                             validation_data=(xv, yv), validation_freq=2, verbose=0)
    history = keras_trainx.fit_accumulated(
        accumulated, x, y, batch_size=4, accum_steps=3, epochs=4, shuffle=False,
        validation_data=(xv, yv), validation_freq=2, verbose=0,
    )
    assert set(history.history) == set(expected.history)
    for name in ("loss", "mae", "val_loss", "val_mae"):
        np.testing.assert_allclose(history.history[name], expected.history[name], rtol=1e-5)
    assert len(history.history["val_loss"]) == 2


def test_validation_split_holds_out_the_last_samples_as_fit_does():
    x, y, _ = regression_data(n=40)
    reference = regression_model(keras.optimizers.SGD(0.05))
    accumulated = regression_model(keras.optimizers.SGD(0.05))
    expected = reference.fit(x, y, batch_size=10, validation_split=0.25, shuffle=False, verbose=0)
    history = keras_trainx.fit_accumulated(
        accumulated, x, y, batch_size=5, accum_steps=2, validation_split=0.25, shuffle=False,
        verbose=0,
    )
    np.testing.assert_allclose(history.history["val_loss"], expected.history["val_loss"], rtol=1e-5)
    assert max_weight_difference(reference, accumulated) < 1e-6


class _BatchRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []
        self.begins = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((batch, sorted(logs)))


def test_callbacks_see_micro_batch_indices_and_steps(capsys):
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.05))
    recorder = _BatchRecorder()
    keras_trainx.fit_accumulated(model, x, y, batch_size=4, accum_steps=3, callbacks=[recorder],
                                 verbose=1)
    # 7 micro-batches: windows [0..2], [3..5], [6]. The last end index is 8, as Model.fit reports
    # it with compile(steps_per_execution=3) for its last, shorter execution.
    assert recorder.params["steps"] == 7
    assert recorder.begins == [0, 3, 6]
    assert [end for end, _ in recorder.ends] == [2, 5, 8]
    assert recorder.ends[0][1] == ["loss", "mae"]
    assert "7/7" in capsys.readouterr().out


def test_early_stopping_and_reduce_lr_on_plateau():
    x, y, _ = regression_data()
    model = regression_model(keras.optimizers.SGD(0.01))
    # min_delta no epoch can reach: no improvement after the first epoch.
    history = keras_trainx.fit_accumulated(
        model, x, y, batch_size=8, accum_steps=2, epochs=10, verbose=0,
        callbacks=[
            keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e3),
            keras.callbacks.EarlyStopping(monitor="loss", patience=2, min_delta=1e3),
        ],
    )
    # As in fit: the logged rate is the one each epoch trained with; the plateau after epochs 1 and 2
    # halves it twice; patience 2 stops after epoch 2.
    assert len(history.history["loss"]) == 3
    np.testing.assert_allclose(history.history["learning_rate"], [0.01, 0.01, 0.005])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0025)


def test_model_checkpoint_csv_logger_and_tensorboard(tmp_path):
    x, y, _ = regression_data()
    xv, yv, _ = regression_data(n=10, seed=9)
    model = regression_model(keras.optimizers.SGD(0.05))
    checkpoint = str(tmp_path / "best.keras")
    log = str(tmp_path / "log.csv")
    history = keras_trainx.fit_accumulated(
        model, x, y, batch_size=8, accum_steps=2, epochs=3, verbose=0, validation_data=(xv, yv),
        callbacks=[
            keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True),
            keras.callbacks.CSVLogger(log),
            keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        ],
    )
    best = keras.models.load_model(checkpoint)
    assert best.evaluate(xv, yv, verbose=0)[0] == pytest.approx(min(history.history["val_loss"]),
                                                                rel=1e-5)
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], history.history["loss"], rtol=1e-6)
    assert os.listdir(tmp_path / "tb" / "train")


def test_terminate_on_nan_stops_after_the_first_update():
    x, y, _ = regression_data()
    x[0, 0] = np.nan
    model = regression_model(keras.optimizers.SGD(0.05))
    history = keras_trainx.fit_accumulated(
        model, x, y, batch_size=4, accum_steps=2, epochs=3, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    assert int(model.optimizer.iterations) == 1
    assert len(history.history["loss"]) == 1


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def test_backup_and_restore_resume_equals_uninterrupted_run(tmp_path):
    x, y, weights = regression_data()
    arguments = dict(sample_weight=weights, batch_size=4, accum_steps=3, epochs=4, shuffle=False,
                     verbose=0)
    uninterrupted = regression_model(keras.optimizers.Adam(0.01))
    keras_trainx.fit_accumulated(uninterrupted, x, y, **arguments)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = regression_model(keras.optimizers.Adam(0.01))
    with pytest.raises(RuntimeError, match="simulated preemption"):
        keras_trainx.fit_accumulated(interrupted, x, y, callbacks=[backup, _InterruptAt(2)],
                                     **arguments)
    resumed = regression_model(keras.optimizers.Adam(0.01))
    history = keras_trainx.fit_accumulated(
        resumed, x, y, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))],
        **arguments,
    )
    assert len(history.history["loss"]) == 2  # epochs 2 and 3 only
    assert int(resumed.optimizer.iterations) == int(uninterrupted.optimizer.iterations) == 12
    assert max_weight_difference(uninterrupted, resumed) < 1e-6
