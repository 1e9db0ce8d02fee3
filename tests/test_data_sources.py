"""AugmentedSequence sources: file paths, from_directory, from_dataframe, from_tfds (mock data)."""

import os

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_trainx.data import AugmentedSequence


def write_png(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def rgb_images(n, height=6, width=7):
    return np.random.default_rng(5).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_file_paths_are_read_as_rgb(tmp_path):
    x = rgb_images(3)
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, image in zip(paths, x):
        write_png(path, image)
    seq = AugmentedSequence(paths, np.array([2, 0, 1]), batch_size=3, shuffle=False, seed=0)
    images, labels = seq[0]
    np.testing.assert_array_equal(images, x)  # PNG is lossless; channel order RGB
    assert labels.tolist() == [2, 0, 1]


def test_file_paths_resized(tmp_path):
    write_png(tmp_path / "a.png", rgb_images(1, 10, 20)[0])
    write_png(tmp_path / "b.png", rgb_images(1, 12, 8)[0])
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    with pytest.raises(ValueError, match=r"file '.*b.png' \(index 1\) comes out of the pipeline.*image_size"):
        AugmentedSequence(paths, batch_size=2, shuffle=False, seed=0)[0]
    seq = AugmentedSequence(paths, batch_size=2, shuffle=False, seed=0, image_size=(5, 4))
    images = seq[0][0]
    assert images.shape == (2, 5, 4, 3)
    expected = cv2.resize(rgb_images(1, 10, 20)[0], (4, 5), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(images[0], expected)


def test_missing_and_unreadable_files_are_named(tmp_path):
    write_png(tmp_path / "ok.png", rgb_images(1)[0])
    with pytest.raises(FileNotFoundError, match=r"file '.*gone.png' \(index 1\) does not exist"):
        AugmentedSequence([tmp_path / "ok.png", tmp_path / "gone.png"])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    seq = AugmentedSequence([tmp_path / "ok.png", tmp_path / "bad.png"], batch_size=2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match=r"cannot read file '.*bad.png' \(index 1\)"):
        seq[0]


def test_from_directory(tmp_path):
    x = rgb_images(5)
    layout = [("dog", "b.png"), ("cat", "a.png"), ("dog", "a.png"), ("cat", "c.png"), ("bird", "z.png")]
    for (cls, name), image in zip(layout, x):
        write_png(tmp_path / cls / name, image)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    seq = AugmentedSequence.from_directory(tmp_path, batch_size=8, shuffle=False, seed=0, num_classes=3)
    assert seq.class_names == ["bird", "cat", "dog"]
    images, labels = seq[0]
    # sorted: bird/z, cat/a, cat/c, dog/a, dog/b
    np.testing.assert_array_equal(images, x[[4, 1, 3, 2, 0]])
    np.testing.assert_array_equal(labels, np.eye(3, dtype=np.float32)[[0, 1, 1, 2, 2]])
    with pytest.raises(ValueError, match="root: .* has no class sub-directories"):
        AugmentedSequence.from_directory(tmp_path / "cat")


def test_from_dataframe(tmp_path):
    x = rgb_images(3)
    for i, image in enumerate(x):
        write_png(tmp_path / f"{i}.png", image)
    df = pd.DataFrame({"file": ["0.png", "1.png", "2.png"], "kind": ["dog", "cat", "dog"],
                       "w": [1.0, 2.0, 3.0], "h": [0.5, 0.25, 0.125]})
    seq = AugmentedSequence.from_dataframe(df, "file", "kind", directory=tmp_path, batch_size=3,
                                           shuffle=False, seed=0)
    images, labels = seq[0]
    np.testing.assert_array_equal(images, x)
    assert labels.tolist() == [1, 0, 1] and seq.class_names == ["cat", "dog"]
    regression = AugmentedSequence.from_dataframe(df, "file", ["w", "h"], directory=tmp_path, batch_size=3,
                                                  shuffle=False, seed=0)
    np.testing.assert_array_equal(regression[0][1], [[1.0, 0.5], [2.0, 0.25], [3.0, 0.125]])
    with pytest.raises(ValueError, match=r"x_col/y_col: columns \['label'\] are not in the DataFrame"):
        AugmentedSequence.from_dataframe(df, "file", "label", directory=tmp_path)


def test_from_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        seq = AugmentedSequence.from_tfds("cifar10", split="train", batch_size=5, shuffle=False, seed=0)
        reference, info = tfds.load("cifar10", split="train", with_info=True)
        reference = list(tfds.as_numpy(reference))
    assert len(seq) == 3 and seq.num_samples == 12
    assert seq.class_names == info.features["label"].names and len(seq.class_names) == 10
    images, labels = seq[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.stack([e["image"] for e in reference[:5]]))
    np.testing.assert_array_equal(labels, [e["label"] for e in reference[:5]])


def test_from_tfds_variable_sizes_and_datasets():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match="image_size"):
            AugmentedSequence.from_tfds("tf_flowers", split="train", batch_size=4, seed=0)[0]
        seq = AugmentedSequence.from_tfds("tf_flowers", split="train", batch_size=4, seed=0, image_size=(16, 16))
    assert seq[0][0].shape == (4, 16, 16, 3)
    pairs = tf.data.Dataset.from_tensor_slices((rgb_images(4), [3, 1, 2, 0]))
    seq = AugmentedSequence.from_tfds(pairs, batch_size=4, shuffle=False, seed=0)
    np.testing.assert_array_equal(seq[0][0], rgb_images(4))
    assert seq[0][1].tolist() == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="split and data_dir apply to a dataset name"):
        AugmentedSequence.from_tfds(pairs, split="train")
    with pytest.raises(ValueError, match="split is required"):
        AugmentedSequence.from_tfds("cifar10")
