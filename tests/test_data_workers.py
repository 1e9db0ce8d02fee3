"""AugmentedSequence under Keras' thread and process workers, Model.fit and fit_accumulated."""

import albumentations as A
import keras
import numpy as np
import pytest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

import keras_trainx
from keras_trainx.data import AugmentedSequence

PIPELINE = [A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=0.7), A.RandomBrightnessContrast(p=0.5)]
N, BATCH = 24, 4


def make(**kwargs):
    x = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    y = np.arange(N) % 3
    return AugmentedSequence(x, y, batch_size=BATCH, transform=PIPELINE, seed=11, **kwargs)


def manual_epochs(epochs):
    """The batches of a single-process manual loop that opens and closes each epoch as Keras does."""
    seq = make()
    result = []
    for _ in range(epochs):
        seq.on_epoch_begin()
        result.append([seq[i] for i in range(len(seq))])
        seq.on_epoch_end()
    assert seq.epoch == epochs
    return result


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(gx), ex)
        np.testing.assert_array_equal(np.asarray(gy), ey)


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_keras_workers_reproduce_single_process_batches(use_multiprocessing):
    expected = manual_epochs(2)
    seq = make(workers=2, use_multiprocessing=use_multiprocessing)
    adapter = PyDatasetAdapter(seq, shuffle=False)
    assert adapter.enqueuer is not None
    got = []
    for _ in range(2):
        adapter.on_epoch_begin()
        got.append(list(adapter.get_numpy_iterator()))
        adapter.on_epoch_end()
    for epoch in range(2):
        assert_same_batches(got[epoch], expected[epoch])
    # epochs differ, and within an epoch every sample appears once
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(got[0], got[1]))
    assert sorted(np.concatenate([b[1] for b in got[1]]).tolist()) == sorted((np.arange(N) % 3).tolist())


class Recorder(keras.Model):
    """Records the batches `fit` trains on (eagerly), so they can be compared with a manual loop."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.seen = []

    def call(self, x):
        return self.dense(keras.ops.reshape(keras.ops.cast(x, "float32"), (keras.ops.shape(x)[0], -1)))

    def train_step(self, data):
        x, y = data
        self.seen.append((x.numpy(), y.numpy()))
        self(x)
        return {"batches": len(self.seen)}


@pytest.mark.parametrize("workers,use_multiprocessing", [(1, False), (2, False), (2, True)])
def test_fit_trains_on_the_manual_loop_batches(workers, use_multiprocessing):
    expected = manual_epochs(2)
    seq = make(workers=workers, use_multiprocessing=use_multiprocessing)
    model = Recorder()
    model.compile(optimizer="sgd", run_eagerly=True)
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    # Keras' extra on_epoch_end() before the first epoch is not counted: fit's epoch 1 is epoch 0
    assert seq.epoch == 2
    assert_same_batches(model.seen, expected[0] + expected[1])


def small_model():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_fit_with_thread_workers_equals_fit_on_the_same_batches_as_arrays():
    expected = manual_epochs(1)[0]
    model = small_model()
    model.fit(make(workers=2, shuffle=False), epochs=1, shuffle=False, verbose=0)
    reference = small_model()
    for x, y in expected:
        reference.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("workers", [1, 2])
def test_fit_accumulated_trains_like_the_big_batch(workers):
    seq = make(workers=workers)
    model = small_model()
    keras_trainx.fit_accumulated(model, seq, accum_steps=2, epochs=1, shuffle=False, verbose=0)
    assert seq.epoch == 1
    # one update per window of two micro-batches == one step on their concatenation
    batches = manual_epochs(1)[0]
    reference = small_model()
    for k in range(0, len(batches), 2):
        x = np.concatenate([batches[k][0], batches[k + 1][0]])
        y = np.concatenate([batches[k][1], batches[k + 1][1]])
        reference.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


class _EpochRecorder(keras.callbacks.Callback):
    """Records (fit's epoch, the sequence's epoch) when the epoch's first batch is trained."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence, self.seen, self.epoch = sequence, [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch < 2:  # the first window (micro-batches 0 and 1)
            self.seen.append((self.epoch, self.sequence.epoch))


@pytest.mark.parametrize("workers", [1, 2])
def test_resumed_run_with_a_new_sequence_continues_the_augmentations(workers, tmp_path):
    uninterrupted = small_model()
    keras_trainx.fit_accumulated(uninterrupted, make(workers=workers), accum_steps=2, epochs=3,
                                 shuffle=False, verbose=0)
    resumed = small_model()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = make(workers=workers)
    with pytest.raises(RuntimeError, match="interrupted"):
        keras_trainx.fit_accumulated(resumed, first, accum_steps=2, epochs=3, shuffle=False,
                                     verbose=0, callbacks=[backup, _StopAfterEpoch(1)])
    # as after a restart: a new sequence object, at epoch 0 until fit says otherwise
    second = make(workers=workers)
    recorder = _EpochRecorder(second)
    keras_trainx.fit_accumulated(resumed, second, accum_steps=2, epochs=3, shuffle=False,
                                 verbose=0, callbacks=[backup, recorder])
    assert recorder.seen == [(2, 2)]
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
