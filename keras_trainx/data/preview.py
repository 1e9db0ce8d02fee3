"""A matplotlib grid of augmented samples with their labels, masks, boxes and keypoints drawn."""

import math
from typing import Any

import numpy as np

from keras_trainx.data.targets import PAD_VALUE
from keras_trainx.extras import require
from keras_trainx.validation import check_int


def _as_displayable(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def preview(sequence: Any, n: int = 8, *, cols: int = 4) -> Any:
    """Draws the first `n` samples of the current epoch of an `AugmentedSequence`.

    Args:
        sequence: an `AugmentedSequence`.
        n: number of samples to draw (at most the number of images).
        cols: grid columns.

    Returns:
        A `matplotlib.figure.Figure` (not shown; call `fig.savefig(...)` or display it in a notebook).

    Example:

    >>> from keras_trainx.data import AugmentedSequence
    >>> seq = AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), batch_size=2, seed=0)
    >>> len(preview(seq, 4, cols=2).axes)
    4
    """
    plt = require("matplotlib.pyplot", "preview()")
    n = check_int("n", n, minimum=1, maximum=sequence.num_samples)
    cols = check_int("cols", cols, minimum=1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    drawn = 0
    for index in range(len(sequence)):
        batch = sequence[index]
        images = batch[0]
        target = batch[1] if len(batch) > 1 else None
        for j in range(len(images)):
            if drawn == n:
                break
            _draw(axes.flat[drawn], sequence, images[j], target, j)
            drawn += 1
        if drawn == n:
            break
    for axis in axes.flat[n:]:
        figure.delaxes(axis)
    figure.tight_layout()
    return figure


def _label_text(sequence: Any, label: Any) -> str:
    label = np.asarray(label)
    if label.ndim == 1 and sequence.targets.num_classes is not None:
        label = label.argmax()
    if label.ndim == 0 and np.issubdtype(label.dtype, np.integer) and sequence.class_names is not None:
        return sequence.class_names[int(label)]
    return np.array2string(label, precision=3)


def _draw(axis: Any, sequence: Any, image: np.ndarray, target: Any, j: int) -> None:
    axis.imshow(_as_displayable(image), cmap="gray" if image.ndim == 2 else None)
    axis.set_axis_off()
    parts = target if isinstance(target, dict) else {}
    if target is not None and not isinstance(target, dict):
        key = "labels" if sequence.targets.labels is not None else "masks"
        parts = {key: target}
    if "labels" in parts:
        axis.set_title(_label_text(sequence, parts["labels"][j]), fontsize=9)
    if "masks" in parts:
        axis.imshow(np.squeeze(parts["masks"][j]), alpha=0.4, cmap="jet")
    height, width = image.shape[:2]
    if "boxes" in parts:
        keep = parts["classes"][j] != PAD_VALUE
        boxes = parts["boxes"][j][keep]
        fmt = sequence.pipeline.processors["bboxes"].params.format
        if len(boxes):
            shape = {"height": height, "width": width}
            bbox_utils = require("albumentations.core.bbox_utils", "preview")
            normalized = (boxes if fmt == "albumentations"
                          else bbox_utils.convert_bboxes_to_albumentations(boxes, fmt, shape))
            for (x0, y0, x1, y1), cls in zip(normalized, parts["classes"][j][keep]):
                axis.add_patch(_rectangle(x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height))
                name = sequence.class_names[cls] if sequence.class_names is not None else str(cls)
                axis.text(x0 * width, y0 * height, name, color="yellow", fontsize=7, va="bottom")
    if "keypoints" in parts:
        points = parts["keypoints"][j]
        visible = (points != PAD_VALUE).any(axis=1)
        fmt = sequence.pipeline.processors["keypoints"].params.format
        xs, ys = (points[visible, 0], points[visible, 1]) if fmt[0] == "x" else (points[visible, 1], points[visible, 0])
        axis.scatter(xs, ys, s=10, c="red")


def _rectangle(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="yellow", linewidth=1.2)
