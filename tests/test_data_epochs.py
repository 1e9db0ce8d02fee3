"""The images of every training epoch are the sequence's own epoch, on every path that feeds them.

Paths: `Model.fit` and `fit_accumulated`, fed the sequence itself (single process, Keras' thread and
process workers) or its `to_tf_dataset()` (single, threads, worker processes), under MirroredStrategy,
and a run interrupted and resumed by `BackupAndRestore` with new model and sequence objects (as after
a process restart). The model records every image it trains on (a `numpy_function` in its first
layer), and each epoch's record is compared with `epoch_batch(e, i)` of an untouched sequence built
with the same arguments; the resumed run must end with the uninterrupted run's weights.
"""

import copy

import albumentations as A
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from keras_trainx.data import AugmentedSequence, epoch_callbacks
from keras_trainx.data.rng import epoch_permutation, sample_random_state

N, BATCH, EPOCHS, ACCUM = 24, 4, 3, 2
PIPELINE = [A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=0.7), A.RandomBrightnessContrast(p=0.5)]


X = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
Y = np.arange(N) % 3
SEED = 11


def make(**kwargs):
    return AugmentedSequence(X, Y, batch_size=BATCH, seed=SEED, transform=PIPELINE, drop_remainder=True,
                             **kwargs)


def expected_epochs(epochs=EPOCHS, batch_size=BATCH):
    """Each epoch's batches as documented: sample order from (seed, epoch), each sample's augmentation
    from (seed, epoch, sample index)."""
    compose = A.Compose(copy.deepcopy(PIPELINE))
    result = []
    for epoch in range(epochs):
        order = epoch_permutation(SEED, epoch, N)
        batches = []
        for index in range(N // batch_size):
            ids = order[index * batch_size:(index + 1) * batch_size]
            images = []
            for i in ids:
                compose.set_random_state(*sample_random_state(SEED, epoch, int(i)))
                images.append(compose(image=X[i])["image"])
            batches.append((np.stack(images), Y[ids]))
        result.append(batches)
    return result


class Record(keras.layers.Layer):
    """Passes its input through; in training, appends every batch it sees to `seen` (a Python list)."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "seen", seen)  # untracked: Keras would copy a tracked list

    def call(self, x, training=None):
        if not training:
            return x

        def record(images):
            self.seen.append(images.copy())
            return np.int64(0)

        done = tf.numpy_function(record, [x], tf.int64, stateful=True)
        with tf.control_dependencies([done]):
            return tf.identity(x)


def recording_model(seen):
    model = keras.Sequential([
        keras.Input((8, 8, 3), dtype="uint8"), Record(seen), keras.layers.Rescaling(1 / 255),
        keras.layers.Flatten(), keras.layers.Dense(3, kernel_initializer="zeros"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def assert_epochs_seen(seen, expected, first_epoch=0):
    per_epoch = len(expected[0])
    assert len(seen) == per_epoch * len(expected)
    for epoch, batches in enumerate(expected, first_epoch):
        for index, (images, _) in enumerate(batches):
            got = seen[(epoch - first_epoch) * per_epoch + index]
            assert np.array_equal(got, images), f"training epoch {epoch}, batch {index}: {where(got)}"


def where(images):
    """Which (epoch, batch) of the sequence `images` are, for the failure message."""
    for epoch, batches in enumerate(expected_epochs(EPOCHS + 2)):
        for index, batch in enumerate(batches):
            if np.array_equal(images, batch[0]):
                return f"got the sequence's epoch {epoch}, batch {index}"
    return "got images that are no batch of the sequence's first epochs"


FEEDS = {
    "sequence": lambda: make(),
    "sequence, 2 threads": lambda: make(workers=2),
    "sequence, 2 processes": lambda: make(workers=2, use_multiprocessing=True),
    "to_tf_dataset": lambda: make().to_tf_dataset(),
    "to_tf_dataset, 2 threads": lambda: make(workers=2).to_tf_dataset(),
    "to_tf_dataset, 2 processes": lambda: make(workers=2, use_multiprocessing=True).to_tf_dataset(),
}


def fit(model, data, **kwargs):
    """`Model.fit` as the README recommends it: with the sequence's epoch callback."""
    return model.fit(data, epochs=EPOCHS, shuffle=False, verbose=0,
                     callbacks=epoch_callbacks(data) + kwargs.pop("callbacks", []), **kwargs)


def fit_accumulated(model, data, **kwargs):
    return keras_trainx.fit_accumulated(model, data, accum_steps=ACCUM, epochs=EPOCHS, shuffle=False,
                                        verbose=0, **kwargs)


TRAINERS = {"Model.fit": fit, "fit_accumulated": fit_accumulated}


@pytest.mark.parametrize("feed", list(FEEDS))
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_every_training_epoch_is_the_sequences_epoch(trainer, feed):
    seen = []
    TRAINERS[trainer](recording_model(seen), FEEDS[feed]())
    assert_epochs_seen(seen, expected_epochs())


@pytest.mark.parametrize("feed", ["sequence", "sequence, 2 threads", "to_tf_dataset"])
def test_model_fit_without_the_callback_follows_keras_hooks_or_passes(feed):
    """Without the callback, Keras' epoch hooks (a sequence) or one epoch per pass (a dataset)."""
    seen = []
    data = FEEDS[feed]()
    recording_model(seen).fit(data, epochs=EPOCHS, shuffle=False, verbose=0)
    assert_epochs_seen(seen, expected_epochs())


@pytest.mark.parametrize("workers", [1, 2])
def test_model_fit_with_the_sequences_own_callback_on_its_dataset(workers):
    """The callback and the dataset's passes agree: the told epoch is the pass's, not one more."""
    seen = []
    sequence = make(workers=workers)
    recording_model(seen).fit(sequence.to_tf_dataset(), epochs=EPOCHS, shuffle=False, verbose=0,
                              callbacks=[sequence.epoch_callback()])
    assert_epochs_seen(seen, expected_epochs())


def reference_weights(epochs, accum):
    """Weights after training on the sequence's epochs with `train_on_batch` on concatenated windows."""
    model = recording_model([])
    for batches in expected_epochs(epochs):
        for k in range(0, len(batches), accum):
            window = batches[k:k + accum]
            model.train_on_batch(np.concatenate([b[0] for b in window]), np.concatenate([b[1] for b in window]))
    return model.get_weights()


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_mirrored_strategy_trains_on_the_sequences_epochs(trainer):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = recording_model([])
    TRAINERS[trainer](model, make(workers=2).to_tf_dataset())
    expected = reference_weights(EPOCHS, ACCUM if trainer == "fit_accumulated" else 1)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted after epoch 1")


@pytest.mark.parametrize("feed", ["sequence, 2 threads", "to_tf_dataset, 2 processes"])
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_resumed_run_with_new_objects_ends_with_the_uninterrupted_weights(trainer, feed, tmp_path):
    train = TRAINERS[trainer]
    uninterrupted = recording_model([])
    train(uninterrupted, FEEDS[feed]())

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted after epoch 1"):
        train(recording_model([]), FEEDS[feed](), callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
    seen = []  # as after a restart: a new model and a new sequence, the same backup directory
    resumed = recording_model(seen)
    train(resumed, FEEDS[feed](), callbacks=[keras.callbacks.BackupAndRestore(backup)])

    assert_epochs_seen(seen, expected_epochs()[2:], first_epoch=2)
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# The two hook idioms: a manual loop that serves every batch then calls only `on_epoch_end()` (Keras 2's
# `Sequence` idiom), and Keras 3's `fit`, which opens and closes each epoch (`on_epoch_begin()`,
# `on_epoch_end()`) after a lone `on_epoch_end()` (its iterator reset) that follows a look at the first
# batches (the output signature). Both must give epochs 0, 1, 2, ... whatever the number of batches.

def expected_batch_epochs(batch_size, epochs=EPOCHS):
    """Each epoch's image batches, as `expected_epochs` gives them, for `batch_size`."""
    return [[images for images, _ in batches] for batches in expected_epochs(epochs, batch_size)]


def batch_sequence(batch_size, **kwargs):
    return AugmentedSequence(X, Y, batch_size=batch_size, seed=SEED, transform=PIPELINE, **kwargs)


def assert_images(got, expected):
    """`got` are the batches of `expected` (a flat list of image batches), in order."""
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert np.array_equal(g, e), f"served batch {index} differs from the expected one"


@pytest.mark.parametrize("batch_size", [N, N // 2, BATCH])  # 1, 2 and 6 batches an epoch
def test_keras2_idiom_every_batch_then_on_epoch_end_serves_the_next_epoch(batch_size):
    seq = batch_sequence(batch_size)
    expected = expected_batch_epochs(batch_size)
    for epoch in range(EPOCHS):
        assert seq.epoch == epoch
        assert_images([seq[i][0] for i in range(len(seq))], expected[epoch])
        seq.on_epoch_end()
    assert seq.epoch == EPOCHS


def test_keras2_idiom_iterating_the_sequence_and_fetching_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    seq = batch_sequence(BATCH, workers=2)
    expected = expected_batch_epochs(BATCH)
    assert_images([batch[0] for batch in seq], expected[0])
    seq.on_epoch_end()
    with ThreadPoolExecutor(2) as pool:
        assert_images([batch[0] for batch in pool.map(seq.__getitem__, range(len(seq)))], expected[1])
    seq.on_epoch_end()
    seq.on_epoch_end()  # a second call with no batch served since ends no epoch
    assert seq.epoch == 2
    assert_images([seq[i][0] for i in range(len(seq))], expected[2])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch_size", [N, N // 2, BATCH])
def test_model_fit_hooks_give_epochs_0_1_2_whatever_the_number_of_batches(batch_size, workers):
    """Keras reads the first two batches for its signature, then resets: neither is an epoch."""
    seen = []
    seq = batch_sequence(batch_size, workers=workers, drop_remainder=True)
    recording_model(seen).fit(seq, epochs=EPOCHS, shuffle=False, verbose=0)
    assert seq.epoch == EPOCHS
    assert_images(seen, [b for epoch in expected_batch_epochs(batch_size) for b in epoch])


@pytest.mark.parametrize("workers", [1, 2])
def test_model_fit_after_a_keras2_epoch_and_a_second_fit_continue_the_epochs(workers):
    seq = batch_sequence(N // 2, workers=workers, drop_remainder=True)
    expected = expected_batch_epochs(N // 2, epochs=5)
    assert_images([seq[i][0] for i in range(len(seq))], expected[0])
    seq.on_epoch_end()
    seen = []
    model = recording_model(seen)
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    assert seq.epoch == 5
    assert_images(seen, [b for epoch in expected[1:] for b in epoch])


def test_keras2_loop_over_only_the_first_two_batches_with_keras_workers_is_told_its_epochs():
    """Documented: after exactly Keras' signature look, a sequence with Keras workers does not advance."""
    expected = expected_batch_epochs(N // 2)
    for workers in (1, 2):
        seq = batch_sequence(N // 2, workers=workers)
        assert_images([seq[0][0], seq[1][0]], expected[0])
        seq.on_epoch_end()
        assert seq.epoch == (1 if workers == 1 else 0)
    seq.set_epoch(1)
    assert_images([seq[0][0], seq[1][0]], expected[1])
