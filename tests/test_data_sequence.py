"""AugmentedSequence: batching, the (seed, epoch, sample) randomness contract, epochs, validation."""

import albumentations as A
import numpy as np
import pytest

from keras_trainx.data import AugmentedSequence
from keras_trainx.data.rng import epoch_permutation, sample_random_state

PIPELINE = [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5), A.Affine(rotate=(-20, 20), p=0.5)]


def images(n=20, size=12):
    return np.random.default_rng(123).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_batches_partial_and_dropped():
    x, y = images(10), np.arange(10)
    seq = AugmentedSequence(x, y, batch_size=4, shuffle=False, seed=0)
    assert len(seq) == 3
    assert [len(seq[i][0]) for i in range(3)] == [4, 4, 2]
    assert seq[2][1].tolist() == [8, 9]
    np.testing.assert_array_equal(seq[1][0], x[4:8])  # no transform: the images themselves
    dropped = AugmentedSequence(x, y, batch_size=4, shuffle=False, seed=0, drop_remainder=True)
    assert len(dropped) == 2
    with pytest.raises(IndexError):
        dropped[2]


def test_batch_is_the_documented_function_of_seed_epoch_sample():
    x, y = images(), np.arange(20)
    seq = AugmentedSequence(x, y, batch_size=8, transform=PIPELINE, seed=42)
    seq.set_epoch(2)
    assert seq.epoch == 2
    order = epoch_permutation(42, 2, 20)
    reference = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5),
                           A.Affine(rotate=(-20, 20), p=0.5)])
    ids = order[8:16]
    expected = []
    for i in ids:
        reference.set_random_state(*sample_random_state(42, 2, int(i)))
        expected.append(reference(image=x[i])["image"])
    expected = np.stack(expected)
    images_1, labels_1 = seq[1]
    np.testing.assert_array_equal(images_1, expected)
    np.testing.assert_array_equal(labels_1, ids)
    np.testing.assert_array_equal(seq[1][0], images_1)  # calling twice gives the same batch


def test_a_samples_augmentation_does_not_depend_on_its_batch():
    x = images()
    by_four = AugmentedSequence(x, np.arange(20), batch_size=4, transform=PIPELINE, seed=9, shuffle=False)
    by_three = AugmentedSequence(x, np.arange(20), batch_size=3, transform=PIPELINE, seed=9, shuffle=False)
    for epoch in (0, 1):
        four = np.concatenate([by_four.epoch_batch(epoch, i)[0] for i in range(len(by_four))])
        three = np.concatenate([by_three.epoch_batch(epoch, i)[0] for i in range(len(by_three))])
        np.testing.assert_array_equal(four, three)
    assert not np.array_equal(by_four.epoch_batch(0, 0)[0], by_four.epoch_batch(1, 0)[0])


def test_epochs_differ_and_replay_with_the_same_seed():
    x = images()
    a = AugmentedSequence(x, np.arange(20), batch_size=5, transform=PIPELINE, seed=7, shuffle=False)
    b = AugmentedSequence(x, np.arange(20), batch_size=5, transform=PIPELINE, seed=7, shuffle=False)
    epoch0 = [a[i][0] for i in range(len(a))]
    a.set_epoch(1)
    epoch1 = [a[i][0] for i in range(len(a))]
    assert any(not np.array_equal(p, q) for p, q in zip(epoch0, epoch1))
    for i in range(len(b)):
        np.testing.assert_array_equal(b[i][0], epoch0[i])
    b.set_epoch(1)
    for i in range(len(b)):
        np.testing.assert_array_equal(b[i][0], epoch1[i])
    # batches of one epoch use different streams: no batch repeats another's augmentation
    c = AugmentedSequence(np.repeat(x[:1], 20, axis=0), batch_size=5, transform=PIPELINE, seed=7)
    batches = [c[i][0] for i in range(4)]
    assert all(not np.array_equal(batches[i], batches[j]) for i in range(4) for j in range(i))


def test_shuffle_is_a_permutation_per_epoch():
    seq = AugmentedSequence(images(), np.arange(20), batch_size=6, seed=3)
    first = np.concatenate([seq[i][1] for i in range(len(seq))])
    seq.set_epoch(1)
    second = np.concatenate([seq[i][1] for i in range(len(seq))])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(20))
    np.testing.assert_array_equal(first, epoch_permutation(3, 0, 20))
    np.testing.assert_array_equal(second, epoch_permutation(3, 1, 20))
    assert not np.array_equal(first, second)


def test_seed_none_draws_one_seed_at_construction():
    x = images()
    seq = AugmentedSequence(x, batch_size=5, transform=PIPELINE)
    assert isinstance(seq.seed, int) and seq.seed >= 0
    np.testing.assert_array_equal(seq[2][0], seq[2][0])
    replay = AugmentedSequence(x, batch_size=5, transform=PIPELINE, seed=seq.seed)
    np.testing.assert_array_equal(replay[2][0], seq[2][0])
    other = AugmentedSequence(x, batch_size=5, transform=PIPELINE)
    assert other.seed != seq.seed


def flip_counts(transform_output_images):
    """Which flips fired, read from the position of the single bright pixel (placed at the top left)."""
    corner = {(0, 0): "none", (0, 7): "h", (7, 0): "v", (7, 7): "hv"}
    counts = {"none": 0, "h": 0, "v": 0, "hv": 0}
    for image in transform_output_images:
        row, col = np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])
        counts[corner[(int(row), int(col))]] += 1
    return counts


def test_flip_decisions_are_independent():
    n = 400
    x = np.zeros((n, 8, 8, 3), np.uint8)
    x[:, 0, 0] = 255
    pipeline = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    seq = AugmentedSequence(x, batch_size=50, transform=pipeline, seed=0)
    counts = flip_counts(np.concatenate([seq[i][0] for i in range(len(seq))]))
    # Independent flips: each of the four outcomes is Binomial(400, 1/4): mean 100, sd 8.7.
    assert all(70 <= c <= 130 for c in counts.values()), counts
    # albumentations' own seed= gives both flips the same stream: they fire together or not at all.
    seeded = A.Compose(pipeline, seed=0)
    correlated = flip_counts([seeded(image=image)["image"] for image in x])
    assert correlated["h"] == correlated["v"] == 0, correlated


def test_transform_compose_is_copied_and_accepted():
    compose = A.Compose([A.HorizontalFlip(p=1.0)])
    seq = AugmentedSequence(images(4), batch_size=4, transform=compose, shuffle=False, seed=0)
    np.testing.assert_array_equal(seq[0][0], images(4)[:, :, ::-1])
    assert seq.pipeline is not compose


def test_strict_mode_rejects_arguments_albumentations_would_ignore():
    with pytest.raises(ValueError, match="transform: .*var_limit.*GaussNoise"):
        AugmentedSequence(images(), transform=[A.GaussNoise(var_limit=(10, 50))])
    with pytest.raises(ValueError, match="transform: .*var_limit"):
        AugmentedSequence(images(), transform=A.Compose([A.GaussNoise(var_limit=(10, 50))]))
    with pytest.raises(TypeError, match=r"transform\[1\] must be an albumentations transform"):
        AugmentedSequence(images(), transform=[A.HorizontalFlip(), "flip"])
    with pytest.raises(TypeError, match="transform must be None"):
        AugmentedSequence(images(), transform=A.HorizontalFlip())


def test_images_of_different_sizes_need_a_fixed_output_size():
    small, large = np.zeros((8, 8, 3), np.uint8), np.zeros((10, 12, 3), np.uint8)
    seq = AugmentedSequence([small, large], batch_size=2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match=r"x\[1\] comes out of the pipeline as uint8 \(10, 12, 3\).*image_size"):
        seq[0]
    resized = AugmentedSequence([small, large], batch_size=2, shuffle=False, seed=0, image_size=(6, 5))
    assert resized[0][0].shape == (2, 6, 5, 3)


def test_epochs_are_told_not_guessed():
    seq = AugmentedSequence(images(), np.arange(20), batch_size=5, seed=3)
    seq.on_epoch_end()  # Keras' reset before the first epoch: it ends no epoch
    assert seq.epoch == 0
    for expected in (0, 1):
        seq.on_epoch_begin()
        assert seq.epoch == expected
        seq.on_epoch_end()
    assert seq.epoch == 2
    seq.epoch_callback().on_epoch_begin(7)  # fit reports epoch 7 (e.g. resumed by BackupAndRestore)
    assert seq.epoch == 7
    order = epoch_permutation(3, 7, 20)
    np.testing.assert_array_equal(seq[0][1], order[:5])
