"""Where the images (and masks) of an `AugmentedSequence` come from: arrays, lists of arrays, files.

A source gives one sample at a time (`source[i]`) and describes a sample for error messages
(`source.describe(i)`), so a bad file is reported with its path and index.
"""

import os
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from keras_trainx.extras import require

IMAGE_DTYPES = (np.uint8, np.float32)


class ArraySource:
    """Samples stored in one array of shape (N, H, W) or (N, H, W, C).

    Args:
        array: the array.
        name: the argument it came from, for error messages (`"x"`, `"masks"`).

    Example:

    >>> ArraySource(np.zeros((2, 4, 4, 3), np.uint8), "x")[1].shape
    (4, 4, 3)
    """

    def __init__(self, array: np.ndarray, name: str) -> None:
        if array.ndim not in (3, 4):
            raise ValueError(
                f"{name} must have shape (N, H, W) or (N, H, W, C), got shape {array.shape}."
            )
        self.array = array
        self.name = name

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[i]

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


class ListSource:
    """Samples stored as a list of arrays, possibly of different sizes.

    Args:
        arrays: list of arrays of shape (H, W) or (H, W, C).
        name: the argument they came from, for error messages.

    Example:

    >>> ListSource([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 6, 3), np.uint8)], "x")[1].shape
    (5, 6, 3)
    """

    def __init__(self, arrays: Sequence[np.ndarray], name: str) -> None:
        for i, array in enumerate(arrays):
            if array.ndim not in (2, 3):
                raise ValueError(f"{name}[{i}] must have shape (H, W) or (H, W, C), got shape {array.shape}.")
        self.arrays = list(arrays)
        self.name = name

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.arrays[i]

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


class FileSource:
    """Samples read from image files with OpenCV: RGB images, or masks as stored (one channel).

    Args:
        paths: list of file paths (str or os.PathLike). Missing files raise FileNotFoundError here.
        name: the argument they came from, for error messages.
        kind: `"image"` (read as 3-channel RGB uint8) or `"mask"` (read unchanged, e.g. a 1-channel PNG).

    Example:

    >>> import tempfile, cv2
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> cv2.imwrite(path, np.zeros((4, 5, 3), np.uint8))
    True
    >>> FileSource([path], "x")[0].shape
    (4, 5, 3)
    """

    def __init__(self, paths: Sequence[str], name: str, kind: str = "image") -> None:
        if kind not in ("image", "mask"):
            raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}.")
        self.paths = [os.fspath(path) for path in paths]
        for i, path in enumerate(self.paths):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{name}[{i}]: file {path!r} (index {i}) does not exist.")
        self.name = name
        self.kind = kind

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        cv2 = require("cv2", "AugmentedSequence's file sources")
        flags = cv2.IMREAD_COLOR if self.kind == "image" else cv2.IMREAD_UNCHANGED
        array = cv2.imread(path, flags)
        if array is None:
            raise ValueError(f"{self.name}[{i}]: OpenCV cannot read file {path!r} (index {i}); is it an image?")
        if self.kind == "image":
            array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
        return array

    def describe(self, i: int) -> str:
        return f"file {self.paths[i]!r} (index {i})"


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def as_source(value: Any, name: str, kind: str = "image") -> Any:
    """Wraps `x` or `masks` into a source.

    Args:
        value: an array (N, H, W[, C]), a list of arrays (H, W[, C]) or a list of file paths.
        name: the argument name, for error messages.
        kind: `"image"` or `"mask"`; images must be uint8 or float32 (what albumentations accepts).

    Returns:
        An `ArraySource`, `ListSource` or `FileSource`.

    Example:

    >>> len(as_source(np.zeros((3, 8, 8, 3), np.uint8), "x"))
    3
    """
    source: ArraySource | ListSource
    dtypes: Collection[np.dtype]
    if isinstance(value, np.ndarray):
        source = ArraySource(value, name)
        dtypes = [value.dtype]
    elif isinstance(value, (list, tuple)) and value and all(_is_path(v) for v in value):
        return FileSource(value, name, kind)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        source = ListSource(value, name)
        dtypes = {v.dtype for v in value}
    else:
        raise TypeError(
            f"{name} must be a NumPy array (N, H, W[, C]), a non-empty list of arrays or a non-empty list "
            f"of file paths, got {type(value).__name__}."
        )
    if kind == "image":
        for dtype in dtypes:
            if dtype not in IMAGE_DTYPES:
                raise TypeError(
                    f"{name} must hold uint8 or float32 images (what albumentations accepts), got {dtype}; "
                    f"convert with .astype('float32') (values in [0, 1]) or .astype('uint8')."
                )
    return source
