"""to_tf_dataset: any PyDataset -> tf.data.Dataset with static shapes; AugmentedSequence.to_tf_dataset."""

import albumentations as A
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.data import AugmentedSequence, to_tf_dataset


class Counting(keras.utils.PyDataset):
    """Batch i of pass p holds 100 * p + i (p = number of on_epoch_end calls so far)."""

    def __init__(self, sizes, **kwargs):
        super().__init__(**kwargs)
        self.sizes = sizes
        self.ends = 0
        self.begins = 0

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        value = np.full((self.sizes[i], 2), 100 * self.ends + i, np.float32)
        return {"a": value, "b": value[:, 0].astype(np.int32)}, value[:, :1]

    def on_epoch_begin(self):
        self.begins += 1

    def on_epoch_end(self):
        self.ends += 1


def test_static_shapes_structure_and_epochs():
    seq = Counting([3, 3, 3])
    ds = to_tf_dataset(seq)
    assert ds.element_spec[0]["a"] == tf.TensorSpec((3, 2), tf.float32)
    assert ds.element_spec[0]["b"] == tf.TensorSpec((3,), tf.int32)
    assert ds.element_spec[1] == tf.TensorSpec((3, 1), tf.float32)
    assert int(ds.cardinality()) == 3
    first = [float(y[0, 0]) for _, y in ds]
    second = [float(x["b"][0]) for x, _ in ds]
    assert first == [0, 1, 2] and second == [100, 101, 102]
    assert (seq.begins, seq.ends) == (2, 1)  # on_epoch_end between passes, as Keras does between epochs
    # tf.data's autotuning is off: with it, a tf.function taking the batches (as fit does) ran whole
    # epochs at 100 batches a second (benchmarks/bench_augmentation.py)
    assert ds.options().autotune.enabled is False


def test_partial_last_batch_is_refused_unless_dropped():
    with pytest.raises(ValueError, match="last batch has 1 samples, the others 3.*drop_remainder=True"):
        to_tf_dataset(Counting([3, 3, 1]))
    ds = to_tf_dataset(Counting([3, 3, 1]), drop_remainder=True)
    assert int(ds.cardinality()) == 2 and [float(y[0, 0]) for _, y in ds] == [0, 1]


def images(n=16):
    return np.random.default_rng(4).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def make(**kwargs):
    return AugmentedSequence(images(), np.arange(16) % 2, batch_size=4, seed=5,
                             transform=[A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=0.5)], **kwargs)


def test_augmented_sequence_dataset_replays_the_manual_epochs():
    reference = make()
    expected = []
    for epoch in range(2):
        reference.set_epoch(epoch)
        expected.append([reference[i] for i in range(len(reference))])
    seq = make(workers=2)
    ds = seq.to_tf_dataset()
    assert ds.element_spec[0].shape == (4, 8, 8, 3)
    for epoch in range(2):
        got = [(x.numpy(), y.numpy()) for x, y in ds]
        for (gx, gy), (ex, ey) in zip(got, expected[epoch]):
            np.testing.assert_array_equal(gx, ex)
            np.testing.assert_array_equal(gy, ey)
    assert seq.epoch == 1
    partial = AugmentedSequence(images(10), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="build the sequence with drop_remainder=True"):
        partial.to_tf_dataset()
    assert int(AugmentedSequence(images(10), batch_size=4, seed=0, drop_remainder=True)
               .to_tf_dataset().cardinality()) == 2


def small_model():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_mirrored_strategy_trains_like_one_device():
    single = small_model()
    single.fit(make(shuffle=False), epochs=2, shuffle=False, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = small_model()
    mirrored.fit(make(shuffle=False).to_tf_dataset(), epochs=2, shuffle=False, verbose=0)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_process_workers_build_the_single_process_batches_epoch_after_epoch():
    x = images(24)
    y = np.arange(24)
    kwargs = dict(batch_size=8, seed=5, drop_remainder=True,
                  transform=[A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])
    reference = AugmentedSequence(x, y, **kwargs)
    dataset = AugmentedSequence(x, y, workers=2, use_multiprocessing=True, **kwargs).to_tf_dataset()
    passes = []
    for epoch in range(2):
        got = [tuple(t.numpy() for t in batch) for batch in dataset]
        reference.set_epoch(epoch)
        expected = [reference[i] for i in range(len(reference))]
        assert len(got) == len(expected) == 3
        for (got_x, got_y), (want_x, want_y) in zip(got, expected):
            np.testing.assert_array_equal(got_x, want_x)
            np.testing.assert_array_equal(got_y, want_y)
        passes.append(np.concatenate([b[0] for b in got]))
    assert not np.array_equal(passes[0], passes[1])


def test_process_workers_refuse_an_unpicklable_pipeline():
    seq = AugmentedSequence(images(), np.arange(16), batch_size=8, workers=2,
                            use_multiprocessing=True,
                            transform=[A.Lambda(image=lambda image, **_: image)])
    with pytest.raises(ValueError, match="cannot be pickled.*use_multiprocessing=False"):
        seq.to_tf_dataset()
