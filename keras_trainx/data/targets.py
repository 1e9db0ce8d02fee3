"""The targets of an `AugmentedSequence`: class labels, regression values, masks, boxes, keypoints.

Geometric targets (masks, boxes, keypoints) go through the albumentations pipeline with their image;
labels and sample weights are gathered by index. Boxes and keypoints are padded to a fixed count so
that every batch has the same static shape; padding is `PAD_VALUE` (-1) in every padded slot (box
coordinates and class alike, the convention of KerasCV/KerasHub dense bounding boxes). A keypoint keeps
its slot: keypoint j of an image is row j of its output, and a keypoint the augmentation moved out of
the image (albumentations drops it) becomes a row of -1.

Batch target structure: only `y` -> the label array; only `masks` -> the mask array; otherwise a dict
with the keys present among `"labels"`, `"masks"`, `"boxes"`, `"classes"`, `"keypoints"`.
"""

from typing import Any

import numpy as np

from keras_trainx.data.pipeline import BOX_LABEL_FIELD, KEYPOINT_FORMATS, KEYPOINT_ID_FIELD
from keras_trainx.data.sources import as_source
from keras_trainx.validation import check_choice, check_int

PAD_VALUE = -1


def _check_length(value: Any, name: str, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but x has {n} images; give one per image.")


def _ragged(values: Any, name: str, n: int, width: int, max_count: Any, max_name: str) -> list[np.ndarray]:
    _check_length(values, name, n)
    if max_count is None:
        raise ValueError(f"`{max_name}` is required with {name} (rows are padded to it).")
    max_count = check_int(max_name, max_count, minimum=1)
    arrays = []
    for i, value in enumerate(values):
        array = np.asarray(value, dtype=np.float32)
        if array.size == 0:
            array = array.reshape(0, width)
        if array.ndim != 2 or array.shape[1] != width:
            raise ValueError(f"{name}[{i}] must have shape (count, {width}), got {array.shape}.")
        if len(array) > max_count:
            raise ValueError(
                f"{name}[{i}] has {len(array)} rows but {max_name}={max_count}; raise {max_name}."
            )
        arrays.append(array)
    return arrays


class Targets:
    """Per-sample albumentations inputs and per-batch target arrays.

    Args:
        n: number of images.
        y: optional labels (N,) or regression targets (N, ...).
        num_classes: optional; turns integer labels into float32 one-hot vectors.
        masks: optional segmentation masks: array (N, H, W[, C]), list of arrays, or list of file paths.
        boxes: optional list of per-image arrays (count, 4) in `bbox_format`.
        box_classes: per-image integer class arrays (count,), required with `boxes`.
        max_boxes: pad count for boxes.
        keypoints: optional list of per-image arrays (count, len(keypoint_format)).
        keypoint_format: albumentations keypoint format of `keypoints`.
        max_keypoints: pad count for keypoints.
        sample_weight: optional (N,) weights, passed through.

    Example:

    >>> t = Targets(3, y=np.array([0, 2, 1]), num_classes=3)
    >>> t.labels_for(np.array([1])).tolist()
    [[0.0, 0.0, 1.0]]
    """

    def __init__(self, n: int, *, y: Any = None, num_classes: int | None = None, masks: Any = None,
                 boxes: Any = None, box_classes: Any = None, max_boxes: int | None = None, keypoints: Any = None,
                 keypoint_format: str = "xy", max_keypoints: int | None = None, sample_weight: Any = None) -> None:
        self.labels = None if y is None else np.asarray(y)
        if self.labels is not None:
            _check_length(self.labels, "y", n)
        self.num_classes = num_classes
        if num_classes is not None:
            self.num_classes = num_classes = check_int("num_classes", num_classes, minimum=1)
            if self.labels is None:
                raise ValueError("num_classes needs y (integer class labels); pass y or drop num_classes.")
            if not np.issubdtype(self.labels.dtype, np.integer) or self.labels.ndim != 1:
                raise TypeError(
                    f"num_classes needs y of integer class labels with shape (N,), got dtype "
                    f"{self.labels.dtype} and shape {self.labels.shape}; drop num_classes for regression."
                )
            if self.labels.min() < 0 or self.labels.max() >= num_classes:
                raise ValueError(
                    f"y holds labels in [{self.labels.min()}, {self.labels.max()}] but num_classes="
                    f"{num_classes}; labels must lie in [0, num_classes)."
                )
        self.masks = None if masks is None else as_source(masks, "masks", kind="mask")
        if self.masks is not None:
            _check_length(self.masks, "masks", n)
        self.boxes = None
        if boxes is not None:
            if box_classes is None:
                raise ValueError("box_classes is required with boxes: one integer class per box.")
            self.boxes = _ragged(boxes, "boxes", n, 4, max_boxes, "max_boxes")
            _check_length(box_classes, "box_classes", n)
            self.box_classes = []
            for i, (b, c) in enumerate(zip(self.boxes, box_classes)):
                c = np.asarray(c, dtype=np.int32).reshape(-1)
                if len(c) != len(b):
                    raise ValueError(f"box_classes[{i}] has {len(c)} entries for {len(b)} boxes; give one per box.")
                self.box_classes.append(c)
            self.max_boxes = check_int("max_boxes", max_boxes, minimum=1)
        elif box_classes is not None or max_boxes is not None:
            raise ValueError("box_classes and max_boxes need boxes; pass boxes or drop them.")
        self.keypoints = None
        if keypoints is not None:
            check_choice("keypoint_format", keypoint_format, KEYPOINT_FORMATS)
            self.keypoint_width = len(keypoint_format)
            self.keypoints = _ragged(keypoints, "keypoints", n, self.keypoint_width, max_keypoints, "max_keypoints")
            self.max_keypoints = check_int("max_keypoints", max_keypoints, minimum=1)
        elif max_keypoints is not None:
            raise ValueError("max_keypoints needs keypoints; pass keypoints or drop max_keypoints.")
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        if self.sample_weight is not None:
            _check_length(self.sample_weight, "sample_weight", n)
            if self.empty:
                raise ValueError("sample_weight needs a target (y, masks, boxes or keypoints).")

    @property
    def empty(self) -> bool:
        return self.labels is None and self.masks is None and self.boxes is None and self.keypoints is None

    def inputs(self, i: int, image: np.ndarray, describe: Any) -> dict[str, Any]:
        """albumentations keyword inputs for sample `i` besides the image."""
        data = {}
        if self.masks is not None:
            mask = self.masks[i]
            if mask.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"masks: {self.masks.describe(i)} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                    f"{describe(i)} is {image.shape[0]}x{image.shape[1]}; masks must match their images."
                )
            data["mask"] = mask
        if self.boxes is not None:
            data["bboxes"] = self.boxes[i]
            data[BOX_LABEL_FIELD] = self.box_classes[i]
        if self.keypoints is not None:
            data["keypoints"] = self.keypoints[i]
            data[KEYPOINT_ID_FIELD] = np.arange(len(self.keypoints[i]))
        return data

    def labels_for(self, ids: np.ndarray) -> Any:
        assert self.labels is not None, "labels_for() is called only for targets with labels"
        labels = self.labels[ids]
        if self.num_classes is not None:
            return np.eye(self.num_classes, dtype=np.float32)[labels]
        return labels


class BatchTargets:
    """Collects the transformed geometric targets of one batch into preallocated arrays.

    Args:
        targets: the `Targets` of the sequence.
        size: the number of samples in the batch.

    Example:

    >>> t = Targets(1, y=np.array([4]))
    >>> BatchTargets(t, 1).result(np.array([0])).tolist()
    [4]
    """

    def __init__(self, targets: Any, size: int) -> None:
        self.targets = targets
        self.size = size
        self.masks: np.ndarray | None = None
        if targets.boxes is not None:
            self.boxes = np.full((size, targets.max_boxes, 4), PAD_VALUE, np.float32)
            self.classes = np.full((size, targets.max_boxes), PAD_VALUE, np.int32)
        if targets.keypoints is not None:
            self.keypoints = np.full((size, targets.max_keypoints, targets.keypoint_width), PAD_VALUE, np.float32)

    def add(self, j: int, output: dict[str, Any]) -> None:
        """Stores the pipeline output of the j-th sample of the batch."""
        if self.targets.masks is not None:
            mask = output["mask"]
            if self.masks is None:
                self.masks = np.empty((self.size,) + mask.shape, mask.dtype)
            self.masks[j] = mask
        if self.targets.boxes is not None:
            boxes = np.asarray(output["bboxes"], np.float32).reshape(-1, 4)
            self.boxes[j, : len(boxes)] = boxes
            self.classes[j, : len(boxes)] = np.asarray(output[BOX_LABEL_FIELD], np.int32)
        if self.targets.keypoints is not None:
            points = np.asarray(output["keypoints"], np.float32).reshape(-1, self.keypoints.shape[-1])
            ids = np.asarray(output[KEYPOINT_ID_FIELD], np.int64)
            self.keypoints[j, ids] = points

    def result(self, ids: np.ndarray) -> Any:
        """The target structure of the batch (see the module docstring), or None without targets."""
        parts = {}
        if self.targets.labels is not None:
            parts["labels"] = self.targets.labels_for(ids)
        if self.targets.masks is not None:
            parts["masks"] = self.masks
        if self.targets.boxes is not None:
            parts["boxes"] = self.boxes
            parts["classes"] = self.classes
        if self.targets.keypoints is not None:
            parts["keypoints"] = self.keypoints
        if not parts:
            return None
        if list(parts) in (["labels"], ["masks"]):
            return next(iter(parts.values()))
        return parts
