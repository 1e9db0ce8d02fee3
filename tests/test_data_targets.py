"""AugmentedSequence targets: labels, regression, masks, boxes, keypoints, sample weights; preview()."""

import albumentations as A
import cv2
import matplotlib
import numpy as np
import pytest

from keras_trainx.data import AugmentedSequence

W, H = 10, 8


def images(n=4):
    return np.random.default_rng(9).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def test_one_hot_regression_and_sample_weight():
    seq = AugmentedSequence(images(), np.array([2, 0, 1, 2]), num_classes=3, sample_weight=[1, 2, 3, 4],
                            batch_size=4, shuffle=False, seed=0)
    _, labels, weights = seq[0]
    np.testing.assert_array_equal(labels, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert labels.dtype == np.float32 and weights.tolist() == [1, 2, 3, 4]
    regression = AugmentedSequence(images(), np.arange(8, dtype=np.float32).reshape(4, 2), batch_size=2,
                                   shuffle=False, seed=0)
    np.testing.assert_array_equal(regression[1][1], [[4, 5], [6, 7]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        AugmentedSequence(images(), np.array([0, 1, 2, 3]), num_classes=3)
    with pytest.raises(TypeError, match="drop num_classes for regression"):
        AugmentedSequence(images(), np.ones(4, np.float32), num_classes=3)
    with pytest.raises(ValueError, match="sample_weight needs a target"):
        AugmentedSequence(images(), sample_weight=np.ones(4))


def test_masks_follow_their_images():
    x = images()
    masks = np.random.default_rng(1).integers(0, 3, (4, H, W), dtype=np.uint8)
    seq = AugmentedSequence(x, masks=masks, batch_size=4, shuffle=False, seed=0,
                            transform=[A.HorizontalFlip(p=1.0)])
    batch_images, batch_masks = seq[0]
    np.testing.assert_array_equal(batch_images, x[:, :, ::-1])
    np.testing.assert_array_equal(batch_masks, masks[:, :, ::-1])
    both = AugmentedSequence(x, np.arange(4), masks=masks, batch_size=4, shuffle=False, seed=0)
    target = both[0][1]
    assert sorted(target) == ["labels", "masks"] and target["labels"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"masks: masks\[1\] is 8x9 \(HxW\) but its image x\[1\] is 8x10"):
        AugmentedSequence([x[0], x[1]], masks=[masks[0], masks[1][:, :9]], batch_size=2, shuffle=False, seed=0)[0]


def test_mask_files(tmp_path):
    x = images(2)
    masks = np.random.default_rng(2).integers(0, 4, (2, H, W), dtype=np.uint8)
    paths = [tmp_path / f"m{i}.png" for i in range(2)]
    for path, mask in zip(paths, masks):
        cv2.imwrite(str(path), mask)
    seq = AugmentedSequence(x, masks=paths, batch_size=2, shuffle=False, seed=0, transform=[A.VerticalFlip(p=1.0)])
    np.testing.assert_array_equal(seq[0][1], masks[:, ::-1])


def test_boxes_are_transformed_and_padded():
    boxes = [np.array([[1, 2, 4, 6]]), np.array([[0, 0, 5, 4], [6, 1, 10, 3]]), np.zeros((0, 4))]
    classes = [[3], [1, 2], []]
    seq = AugmentedSequence(images(3), boxes=boxes, box_classes=classes, bbox_format="pascal_voc", max_boxes=3,
                            batch_size=3, shuffle=False, seed=0, transform=[A.HorizontalFlip(p=1.0)])
    target = seq[0][1]
    assert sorted(target) == ["boxes", "classes"]
    # a horizontal flip maps x to W - x: [x0, y0, x1, y1] -> [W - x1, y0, W - x0, y1]
    expected = np.full((3, 3, 4), -1, np.float32)
    expected[0, 0] = [W - 4, 2, W - 1, 6]
    expected[1, 0] = [W - 5, 0, W - 0, 4]
    expected[1, 1] = [W - 10, 1, W - 6, 3]
    np.testing.assert_allclose(target["boxes"], expected, atol=1e-5)
    np.testing.assert_array_equal(target["classes"], [[3, -1, -1], [1, 2, -1], [-1, -1, -1]])
    # a crop that removes the second box of image 1 leaves a padded slot
    cropped = AugmentedSequence(images(3), boxes=boxes, box_classes=classes, bbox_format="pascal_voc",
                                max_boxes=3, batch_size=3, shuffle=False, seed=0,
                                transform=[A.Crop(x_min=0, y_min=0, x_max=5, y_max=8)])
    np.testing.assert_array_equal(cropped[0][1]["classes"][1], [1, -1, -1])
    np.testing.assert_allclose(cropped[0][1]["boxes"][1, 0], [0, 0, 5, 4])
    with pytest.raises(ValueError, match=r"boxes\[1\] has 2 rows but max_boxes=1"):
        AugmentedSequence(images(3), boxes=boxes, box_classes=classes, bbox_format="coco", max_boxes=1)
    with pytest.raises(ValueError, match="transform must be a list of transforms when boxes"):
        AugmentedSequence(images(3), boxes=boxes, box_classes=classes, bbox_format="coco", max_boxes=3,
                          transform=A.Compose([A.HorizontalFlip()]))
    with pytest.raises(ValueError, match="`bbox_format` must be one of"):
        AugmentedSequence(images(3), boxes=boxes, box_classes=classes, bbox_format="xyxy", max_boxes=3)


def test_keypoints_keep_their_slots():
    keypoints = [np.array([[1.0, 2.0], [8.0, 5.0]]), np.array([[7.0, 1.0]])]
    seq = AugmentedSequence(images(2), keypoints=keypoints, max_keypoints=2, batch_size=2, shuffle=False,
                            seed=0, transform=[A.Crop(x_min=4, y_min=0, x_max=10, y_max=8)])
    points = seq[0][1]["keypoints"]
    assert points.shape == (2, 2, 2)
    # the crop shifts x by -4 and drops keypoint 0 of image 0 (x=1 < 4): its slot becomes -1
    np.testing.assert_allclose(points, [[[-1, -1], [4, 5]], [[3, 1], [-1, -1]]])


def test_preview_draws_every_target(tmp_path):
    matplotlib.use("Agg")
    seq = AugmentedSequence(images(3), np.array([0, 1, 0]), masks=np.zeros((3, H, W), np.uint8),
                            boxes=[[[1, 1, 5, 5]], [], [[0, 0, 2, 2]]], box_classes=[[0], [], [1]],
                            bbox_format="pascal_voc", max_boxes=2, keypoints=[[[1, 1]], [], []], max_keypoints=1,
                            class_names=["cat", "dog"], batch_size=2, seed=0, shuffle=False)
    figure = seq.preview(3, cols=2)
    assert len(figure.axes) == 3
    assert [axis.get_title() for axis in figure.axes] == ["cat", "dog", "cat"]
    assert len(figure.axes[0].patches) == 1 and len(figure.axes[1].patches) == 0
    figure.savefig(tmp_path / "preview.png")
    with pytest.raises(ValueError, match=r"`n` must be an int >= 1 and <= 3; received n=4"):
        seq.preview(4)
