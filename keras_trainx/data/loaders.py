"""Lists the images and labels of a class-per-folder directory, a DataFrame or a TFDS dataset."""

import os
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def directory_files(root: str | os.PathLike,
                    extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[list[str], np.ndarray, list[str]]:
    """Image files of `root/<class>/<file>`, sorted, with the index of their class folder.

    Args:
        root: directory with one sub-directory per class.
        extensions: list or tuple of file name endings counted as images, each starting with "."
            (case-insensitive).

    Returns:
        `(paths, labels, class_names)`: lists of paths, an int64 array, the sorted folder names.

    Example:

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "cat"))
    >>> open(os.path.join(root, "cat", "a.png"), "w").close()
    >>> directory_files(root)[2]
    ['cat']
    """
    extensions = _check_extensions(extensions)
    if not os.path.isdir(root):
        raise ValueError(f"root: {root!r} is not a directory.")
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not class_names:
        raise ValueError(f"root: {root!r} has no class sub-directories; put each class's images in root/<class>/.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(extensions):
                paths.append(os.path.join(folder, file))
                labels.append(label)
    if not paths:
        raise ValueError(f"root: no files ending in {extensions} under the class folders of {root!r}.")
    return paths, np.asarray(labels, np.int64), class_names


def _check_extensions(extensions: Any) -> tuple[str, ...]:
    """`extensions` as lower-case endings; a bare string (whose letters would each match) is refused."""
    if not isinstance(extensions, (list, tuple)):
        raise TypeError("`extensions` must be a list or tuple of file name endings such as ['.png', '.jpg']; "
                        f"received extensions={extensions!r} of type {type(extensions).__name__}.")
    for i, ending in enumerate(extensions):
        if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
            example = "." + ending.lstrip(".") if isinstance(ending, str) and ending.strip(".") else ".png"
            raise ValueError(f"`extensions[{i}]` must be a file name ending that starts with '.', such as "
                             f"{example!r}; received extensions[{i}]={ending!r}.")
    return tuple(e.lower() for e in extensions)


def _check_no_missing(df: Any, name: str, columns: Any) -> None:
    """Refuses NaN/None in `columns` of `df` (a missing label would become a class named "nan")."""
    subset = [columns] if isinstance(columns, str) else list(columns)
    missing = df[subset].isna().any(axis=1)
    if missing.any():
        rows = list(df.index[missing.to_numpy()])
        shown = repr(rows[:5])[:-1] + (", ...]" if len(rows) > 5 else "]")
        raise ValueError(f"`{name}` {columns!r} has missing values (NaN or None) in the rows {shown}; drop or "
                         f"fill them first, e.g. df.dropna(subset={subset!r}).")


def dataframe_files(df: Any, x_col: str, y_col: str | None = None,
                    directory: str | os.PathLike | None = None,
                    ) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """File paths and targets from DataFrame columns.

    Args:
        df: a pandas DataFrame.
        x_col: column of file paths (relative to `directory` when given).
        y_col: None, one column (strings: class names mapped to sorted indices; numbers: used as
            they are) or a list of numeric columns (regression targets (N, k)). Missing values
            (NaN, None) in `x_col` or `y_col` are refused, naming their rows.
        directory: optional directory the paths are relative to.

    Returns:
        `(paths, targets, class_names)`; `targets` and `class_names` may be None.

    Example:

    >>> import pandas as pd
    >>> df = pd.DataFrame({"file": ["a.png", "b.png"], "kind": ["dog", "cat"]})
    >>> paths, y, names = dataframe_files(df, "file", "kind", directory="/data")
    >>> paths, y.tolist(), names
    (['/data/a.png', '/data/b.png'], [1, 0], ['cat', 'dog'])
    """
    if not (callable(getattr(df, "isna", None)) and hasattr(df, "columns") and hasattr(df, "index")):
        raise TypeError(f"`df` must be a pandas DataFrame; received df of type {type(df).__name__}.")
    columns = [x_col] + ([] if y_col is None else [y_col] if isinstance(y_col, str) else list(y_col))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"x_col/y_col: columns {missing} are not in the DataFrame (it has {list(df.columns)}).")
    _check_no_missing(df, "x_col", x_col)
    if y_col is not None:
        _check_no_missing(df, "y_col", y_col)
    paths = [os.fspath(p) for p in df[x_col]]
    if directory is not None:
        paths = [os.path.join(directory, p) for p in paths]
    if y_col is None:
        return paths, None, None
    if not isinstance(y_col, str):
        return paths, df[list(y_col)].to_numpy(np.float32), None
    column = df[y_col]
    if column.dtype.kind in "biuf":
        return paths, column.to_numpy(), None
    class_names = sorted(str(v) for v in column.unique())
    index = {name: i for i, name in enumerate(class_names)}
    return paths, np.asarray([index[str(v)] for v in column], np.int64), class_names


def tfds_examples(name_or_dataset: Any, *, split: str | None = None, data_dir: str | None = None,
                  image_key: str = "image",
                  label_key: str | None = "label") -> tuple[Any, np.ndarray | None, list[str] | None]:
    """Reads a TFDS dataset into memory: images (stacked when they share a size) and labels.

    Args:
        name_or_dataset: a TFDS name (loaded with `tfds.load(name, split=split, data_dir=data_dir)`)
            or a `tf.data.Dataset` of dicts or `(image, label)` pairs.
        split: the split, required with a name, not allowed with a dataset.
        data_dir: optional TFDS data directory (with a name only).
        image_key, label_key: feature names in dict elements; `label_key=None` reads no labels.

    Returns:
        `(images, labels, class_names)`: an array (N, H, W, C), or a list of arrays when sizes differ;
        labels (or None); the label feature's names (or None).

    Example:

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 0]))
    >>> images, labels, names = tfds_examples(ds)
    >>> images.shape, labels.tolist(), names
    ((3, 4, 4, 3), [0, 1, 0], None)
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    class_names = None
    if isinstance(name_or_dataset, str):
        if split is None:
            raise ValueError("split is required with a dataset name, e.g. split='train'.")
        dataset, info = tfds.load(name_or_dataset, split=split, data_dir=data_dir, with_info=True)
        feature = info.features[label_key] if label_key in info.features else None
        if feature is not None and hasattr(feature, "names"):
            class_names = list(feature.names)
    elif isinstance(name_or_dataset, tf.data.Dataset):
        if split is not None or data_dir is not None:
            raise ValueError("split and data_dir apply to a dataset name; drop them when passing a tf.data.Dataset.")
        dataset = name_or_dataset
    else:
        raise TypeError(
            f"name_or_dataset must be a TFDS name or a tf.data.Dataset, got {type(name_or_dataset).__name__}."
        )
    images, labels = [], []
    for element in tfds.as_numpy(dataset):
        if isinstance(element, dict):
            if image_key not in element:
                raise ValueError(f"image_key: {image_key!r} is not a feature of the dataset ({sorted(element)}).")
            images.append(element[image_key])
            if label_key is not None:
                if label_key not in element:
                    raise ValueError(
                        f"label_key: {label_key!r} is not a feature of the dataset ({sorted(element)}); "
                        f"pass label_key=None for images only."
                    )
                labels.append(element[label_key])
        else:
            image, label = element
            images.append(image)
            labels.append(label)
    if not images:
        raise ValueError("name_or_dataset: the dataset has no examples.")
    if len({image.shape for image in images}) == 1:
        return np.stack(images), (np.asarray(labels) if labels else None), class_names
    return images, (np.asarray(labels) if labels else None), class_names
