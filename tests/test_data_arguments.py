"""Every public entry point of keras_trainx.data refuses meaningless arguments, naming them.

TypeError for a value of the wrong type, ValueError for one of the right type out of range (the
shared `keras_trainx.validation` style), and the message names the argument.
"""

import albumentations as A
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_trainx.data import AugmentedSequence, EpochCallback, to_tf_dataset

X = np.zeros((10, 8, 8, 3), np.uint8)
Y = np.arange(10) % 2


def sequence(**kwargs):
    return AugmentedSequence(X, Y, batch_size=2, seed=0, **kwargs)


class Plain(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return np.zeros((2, 3), np.float32), np.zeros((2, 1), np.float32)


REJECTED = [
    # (call, error, words in the message)
    (lambda: sequence(workers=0), ValueError, "`workers` must be an int >= 1"),
    (lambda: sequence(workers=-1), ValueError, "`workers` must be an int >= 1"),
    (lambda: sequence(workers=2.0), TypeError, "`workers` must be an int"),
    (lambda: sequence(use_multiprocessing=1), TypeError, "`use_multiprocessing` must be True or False"),
    (lambda: sequence(max_queue_size=0), ValueError, "`max_queue_size` must be an int >= 1"),
    (lambda: AugmentedSequence(X, batch_size=0), ValueError, "`batch_size` must be an int >= 1; received batch_size=0"),
    (lambda: AugmentedSequence(X, batch_size="4"), TypeError, "`batch_size` must be an int"),
    (lambda: AugmentedSequence(X, batch_size=True), TypeError, "`batch_size` must be an int"),
    (lambda: sequence(shuffle="yes"), TypeError, "`shuffle` must be True or False"),
    (lambda: sequence(drop_remainder=1), TypeError, "`drop_remainder` must be True or False"),
    (lambda: AugmentedSequence(X, batch_size=16, drop_remainder=True), ValueError,
     "drop_remainder=True with 10 images and batch_size=16"),
    (lambda: AugmentedSequence(X, seed=1.5), TypeError, "`seed` must be an int"),
    (lambda: AugmentedSequence(X, seed=-1), ValueError, "`seed` must be an int >= 0"),
    (lambda: sequence(image_size=(8,)), TypeError, "`image_size` must be \\(height, width\\)"),
    (lambda: sequence(image_size=8), TypeError, "`image_size` must be \\(height, width\\)"),
    (lambda: sequence(image_size=(8, 0)), ValueError, "`image_size\\[1\\]` must be an int >= 1"),
    (lambda: sequence(image_size=(8.0, 8)), TypeError, "`image_size\\[0\\]` must be an int"),
    (lambda: sequence(num_classes=0), ValueError, "`num_classes` must be an int >= 1"),
    (lambda: sequence(num_classes=2.0), TypeError, "`num_classes` must be an int"),
    (lambda: AugmentedSequence(X, np.arange(9)), ValueError, "y has 9 entries but x has 10"),
    (lambda: AugmentedSequence(X, Y, sample_weight=np.ones(3)), ValueError, "sample_weight has 3 entries"),
    (lambda: AugmentedSequence(X.astype(np.float64)), TypeError, "x must hold uint8 or float32 images"),
    (lambda: AugmentedSequence("images/"), TypeError, "x must be a NumPy array"),
    (lambda: AugmentedSequence(X, bbox_format="coco"), ValueError, "bbox_format and boxes go together"),
    (lambda: AugmentedSequence(X, boxes=[np.zeros((0, 4))] * 10, box_classes=[[]] * 10, bbox_format="xyxy",
                               max_boxes=1), ValueError, "`bbox_format` must be one of"),
    (lambda: AugmentedSequence(X, boxes=[np.zeros((0, 4))] * 10, box_classes=[[]] * 10,
                               bbox_format="coco", max_boxes=0), ValueError, "`max_boxes` must be an int >= 1"),
    (lambda: AugmentedSequence(X, keypoints=[np.zeros((0, 2))] * 10, max_keypoints=1, keypoint_format="ab"),
     ValueError, "`keypoint_format` must be one of"),
    (lambda: AugmentedSequence(X, keypoints=[np.zeros((0, 2))] * 10, max_keypoints=2.5), TypeError,
     "`max_keypoints` must be an int"),
    (lambda: sequence(transform=A.HorizontalFlip()), TypeError, "transform must be None"),
    (lambda: sequence().set_epoch(-1), ValueError, "`epoch` must be an int >= 0; received epoch=-1"),
    (lambda: sequence().set_epoch(1.0), TypeError, "`epoch` must be an int"),
    (lambda: sequence().epoch_batch(-2, 0), ValueError, "`epoch` must be an int >= 0"),
    (lambda: sequence().epoch_batch(0, 5), IndexError, "batch index 5 out of range for 5 batches"),
    (lambda: sequence().epoch_batch(0, 1.0), TypeError, "`index` must be an int"),
    (lambda: sequence(drop_remainder=True).to_tf_dataset(prefetch=-5), ValueError, "`prefetch` must be an int >= -1"),
    (lambda: sequence(drop_remainder=True).to_tf_dataset(prefetch=2.0), TypeError, "`prefetch` must be an int"),
    (lambda: to_tf_dataset(Plain(), prefetch=-5), ValueError, "`prefetch` must be an int >= -1"),
    (lambda: to_tf_dataset(Plain(), drop_remainder=None), TypeError, "`drop_remainder` must be True or False"),
    (lambda: to_tf_dataset([np.zeros(3)]), TypeError, "`sequence` must be a keras.utils.PyDataset"),
    (lambda: EpochCallback(object()), TypeError, "`sequence` must have a set_epoch"),
    (lambda: sequence().preview(0), ValueError, "`n` must be an int >= 1"),
    (lambda: sequence().preview(2, cols=0), ValueError, "`cols` must be an int >= 1"),
]


@pytest.mark.parametrize("call, error, words", REJECTED)
def test_meaningless_arguments_are_refused_naming_them(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_accepted_edge_values():
    seq = AugmentedSequence(X, Y, batch_size=np.int64(5), seed=np.uint32(3), image_size=[6, 7], num_classes=2)
    assert len(seq) == 2 and seq[0][0].shape == (5, 6, 7, 3) and seq[0][1].shape == (5, 2)
    seq.set_epoch(np.int64(4))
    assert seq.epoch == 4 and type(seq.epoch) is int
    assert int(AugmentedSequence(X, batch_size=5, seed=0).to_tf_dataset(prefetch=0).cardinality()) == 2
    assert int(to_tf_dataset(Plain(), prefetch=tf.data.AUTOTUNE).cardinality()) == 2


def _pandas():
    import pandas as pd

    return pd


# Data sources given odd tables or folders (issue #22): refused with the whole message below.
SOURCES_REJECTED = [
    (lambda d: AugmentedSequence.from_dataframe({"file": ["a.png"]}, "file"), TypeError,
     "`df` must be a pandas DataFrame; received df of type dict."),
    (lambda d: AugmentedSequence.from_dataframe(
        _pandas().DataFrame({"file": ["a.png", "b.png", "c.png"], "kind": ["dog", None, float("nan")]}), "file",
        "kind"), ValueError,
     "`y_col` 'kind' has missing values (NaN or None) in the rows [1, 2]; drop or fill them first, e.g. "
     "df.dropna(subset=['kind'])."),
    (lambda d: AugmentedSequence.from_dataframe(
        _pandas().DataFrame({"file": ["a.png", "b.png"], "w": [1.0, float("nan")], "h": [1.0, 2.0]},
                            index=["x", "y"]), "file", ["w", "h"]), ValueError,
     "`y_col` ['w', 'h'] has missing values (NaN or None) in the rows ['y']; drop or fill them first, e.g. "
     "df.dropna(subset=['w', 'h'])."),
    (lambda d: AugmentedSequence.from_dataframe(
        _pandas().DataFrame({"file": ["a.png", None], "label": [0, 1]}), "file", "label"), ValueError,
     "`x_col` 'file' has missing values (NaN or None) in the rows [1]; drop or fill them first, e.g. "
     "df.dropna(subset=['file'])."),
    (lambda d: AugmentedSequence.from_directory(d, extensions="png"), TypeError,
     "`extensions` must be a list or tuple of file name endings such as ['.png', '.jpg']; received "
     "extensions='png' of type str."),
    (lambda d: AugmentedSequence.from_directory(d, extensions=[".png", "jpg"]), ValueError,
     "`extensions[1]` must be a file name ending that starts with '.', such as '.jpg'; received "
     "extensions[1]='jpg'."),
]


@pytest.mark.parametrize("call, error, message", SOURCES_REJECTED, ids=[c[2][:50] for c in SOURCES_REJECTED])
def test_odd_tables_and_folders_are_refused_with_the_whole_message(call, error, message, tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "labels.json").write_text("{}")
    (tmp_path / "cat" / "photo.jpg").write_bytes(b"")
    with pytest.raises(error) as info:
        call(tmp_path)
    assert type(info.value) is error and str(info.value) == message
