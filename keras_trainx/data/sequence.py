"""`AugmentedSequence`: a reproducible albumentations image generator on `keras.utils.PyDataset`."""

import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.compat import signature_batches
from keras_trainx.data import loaders
from keras_trainx.data.batches import BatchBuilder
from keras_trainx.data.epochs import EpochCallback, remember_dataset
from keras_trainx.data.pipeline import build_pipeline
from keras_trainx.data.rng import check_seed
from keras_trainx.data.sources import as_source
from keras_trainx.data.targets import Targets
from keras_trainx.data.tf_dataset import batch_dataset, check_prefetch
from keras_trainx.validation import check_bool, check_int


class AugmentedSequence(keras.utils.PyDataset):
    """Batches of images augmented with albumentations, reproducible with any number of workers.

    The augmentation of a sample is a pure function of `(seed, epoch, sample index)`: one NumPy
    `Generator` and one `random.Random` are derived from them and shared by all transforms of the
    pipeline (`Compose.set_random_state`), so transform decisions are independent of each other,
    thread or process workers reproduce the single-process batches exactly, the workers of a
    multi-worker run each augment only their share of a batch (`keras_trainx.data.shard`) and get
    the single-process samples, and epochs differ.
    The sequence serves the epoch it is told: `set_epoch(e)`, or Keras' hooks, where `on_epoch_end()`
    advances the epoch (and reshuffles when `shuffle`) after an epoch that `on_epoch_begin()` opened
    or whose batches `seq[i]` served (see `on_epoch_end()`). Both loop idioms get epochs 0, 1, 2, ...:
    Keras 2's (`seq[i]` for each batch, then `seq.on_epoch_end()`) and Keras 3's (`on_epoch_begin()`,
    the batches, `on_epoch_end()`), which `Model.fit` follows around every epoch after a lone
    `on_epoch_end()` that does not count, so epoch 0 of `fit` is epoch 0 of the sequence. `fit_accumulated` adds
    `epoch_callback()`, which sets the epoch `fit` reports before its batches are read, so a run resumed
    by `BackupAndRestore` continues the augmentations of the interrupted one; add it to the
    callbacks of `Model.fit` for the same.

    The batches are built by `self.batches`, a `BatchBuilder` (images, targets, pipeline, seed; no
    Keras in it), which is what worker processes receive. Each worker thread uses its own copy of the
    pipeline; the pipeline is validated in albumentations' strict mode when the sequence is built
    (arguments albumentations would ignore raise ValueError).

    A batch is `(images, target)`, `(images, target, sample_weight)`, or `(images,)` without targets.
    `target` is `y` (one-hot float32 when `num_classes` is given), the masks when only `masks` is given,
    or a dict with the keys `"labels"`, `"masks"`, `"boxes"`, `"classes"`, `"keypoints"` present
    (boxes and keypoints padded with -1 to `max_boxes`/`max_keypoints`, see `targets.py`). Images keep
    the dtype the pipeline produces (uint8 unless it normalizes): put a `Rescaling` layer in the model.

    Args:
        x: images: an array (N, H, W[, C]) of uint8 or float32, a list of such arrays (sizes may differ),
            or a list of image file paths (read with OpenCV as RGB uint8).
        y: optional targets: class labels (N,) or regression values (N, ...).
        masks: optional segmentation masks (array, list of arrays or list of file paths) transformed
            with their images; must match the images' height and width.
        boxes: optional list (one entry per image) of box arrays (count, 4) in `bbox_format`.
        box_classes: list of integer class arrays (count,), one per image; required with `boxes`.
        bbox_format: albumentations box format: "pascal_voc", "coco", "yolo" or "albumentations".
        max_boxes: boxes per image after padding; required with `boxes`.
        keypoints: optional list of keypoint arrays (count, len(keypoint_format)), one per image.
        keypoint_format: albumentations keypoint format, "xy" by default.
        max_keypoints: keypoints per image after padding; required with `keypoints`.
        sample_weight: optional per-image weights (N,), returned as the third element of each batch.
        num_classes: optional; turns integer `y` into one-hot float32 vectors.
        class_names: optional names of the classes, used by `preview()`.
        image_size: optional `(height, width)`: every image (and mask, box, keypoint) is resized to it
            before the augmentation (needed when images differ in size and no transform crops them
            to a fixed size).
        batch_size: images per batch.
        transform: None, a list of albumentations transforms, or an `A.Compose` (copied, never
            modified). With boxes or keypoints pass a list.
        shuffle: reshuffle the sample order every epoch (a pure function of `(seed, epoch)`).
        seed: non-negative int. None draws one at construction (stored in `self.seed`), so batches are
            reproducible within the run and across workers; pass it back to reproduce a run.
        drop_remainder: drop the last, partial batch (needed for static shapes, e.g. `to_tf_dataset`).
        workers, use_multiprocessing, max_queue_size: as in `keras.utils.PyDataset`.

    Example:

    >>> import albumentations as A
    >>> x = np.zeros((10, 8, 8, 3), np.uint8)
    >>> seq = AugmentedSequence(x, np.arange(10) % 2, batch_size=4, seed=0,
    ...                         transform=[A.HorizontalFlip(p=0.5)])
    >>> len(seq), seq[0][0].shape, seq[2][0].shape
    (3, (4, 8, 8, 3), (2, 8, 8, 3))
    """

    def __init__(self, x: Any, y: Any = None, *, masks: Any = None, boxes: Any = None, box_classes: Any = None,
                 bbox_format: str | None = None, max_boxes: int | None = None, keypoints: Any = None,
                 keypoint_format: str = "xy", max_keypoints: int | None = None, sample_weight: Any = None,
                 num_classes: int | None = None, class_names: list[str] | None = None,
                 image_size: tuple[int, int] | None = None, batch_size: int = 32, transform: Any = None,
                 shuffle: bool = True, seed: int | None = None, drop_remainder: bool = False, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10) -> None:
        check_int("workers", workers, minimum=1, hint="1 reads batches in the calling thread.")
        check_bool("use_multiprocessing", use_multiprocessing)
        check_int("max_queue_size", max_queue_size, minimum=1)
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        images = as_source(x, "x")
        n = len(images)
        targets = Targets(
            n, y=y, num_classes=num_classes, masks=masks, boxes=boxes, box_classes=box_classes,
            max_boxes=max_boxes, keypoints=keypoints, keypoint_format=keypoint_format,
            max_keypoints=max_keypoints, sample_weight=sample_weight,
        )
        if (boxes is None) != (bbox_format is None):
            raise ValueError("bbox_format and boxes go together: pass both (e.g. bbox_format='pascal_voc') or neither.")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        drop_remainder = check_bool("drop_remainder", drop_remainder)
        if drop_remainder and n < batch_size:
            raise ValueError(
                f"drop_remainder=True with {n} images and batch_size={batch_size} leaves no batch; "
                f"lower batch_size."
            )
        if image_size is not None:
            if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
                raise TypeError(f"`image_size` must be (height, width); received image_size={image_size!r}.")
            image_size = (check_int("image_size[0]", image_size[0], minimum=1),
                          check_int("image_size[1]", image_size[1], minimum=1))
        check_bool("shuffle", shuffle)
        pipeline = build_pipeline(
            transform, image_size=image_size, bbox_format=bbox_format,
            keypoint_format=None if keypoints is None else keypoint_format,
        )
        self.class_names = None if class_names is None else _check_class_names(class_names, num_classes, y)
        self.batches = BatchBuilder(images, targets, pipeline, batch_size=batch_size, shuffle=shuffle,
                                    seed=check_seed(seed), drop_remainder=drop_remainder)
        self._epoch = 0
        self._epoch_open = False
        self._epoch_told = False
        self._served: list[int] = []  # the first batch indices seq[i] served of this epoch (3 at most)
        self._unopened_end: tuple[int, bool] | None = None  # what on_epoch_begin() restores
        self._passes = 0

    @classmethod
    def from_directory(cls, root: str | os.PathLike, *, extensions: tuple[str, ...] = loaders.IMAGE_EXTENSIONS,
                       **kwargs: Any) -> "AugmentedSequence":
        """A sequence over `root/<class name>/<image file>`: labels are the sorted class folders' indices.

        Args:
            root: directory with one sub-directory per class.
            extensions: list or tuple of file name endings counted as images, each starting with "."
                (case-insensitive).
            **kwargs: any other `AugmentedSequence` argument (not `x`, `y`, `class_names`).

        Returns:
            An `AugmentedSequence` whose `class_names` are the folder names.
        """
        paths, labels, class_names = loaders.directory_files(root, extensions)
        return cls(paths, labels, class_names=class_names, **kwargs)

    @classmethod
    def from_dataframe(cls, df: Any, x_col: str, y_col: str | None = None, *,
                       directory: str | os.PathLike | None = None, **kwargs: Any) -> "AugmentedSequence":
        """A sequence over the image files listed in a pandas DataFrame.

        Args:
            df: the DataFrame.
            x_col: column of file paths (relative to `directory` when given).
            y_col: None, a column of class names (strings: mapped to sorted indices, names kept in
                `class_names`) or of numbers (labels or regression targets), or a list of numeric
                columns (regression targets of shape (N, len(y_col))). Rows with a missing value
                (NaN, None) in `x_col` or `y_col` are refused, naming them.
            directory: optional directory the paths are relative to.
            **kwargs: any other `AugmentedSequence` argument.

        Returns:
            An `AugmentedSequence`.
        """
        paths, labels, class_names = loaders.dataframe_files(df, x_col, y_col, directory)
        if class_names is not None:
            kwargs["class_names"] = class_names
        return cls(paths, labels, **kwargs)

    @classmethod
    def from_tfds(cls, name_or_dataset: Any, *, split: str | None = None, data_dir: str | None = None,
                  image_key: str = "image", label_key: str | None = "label", **kwargs: Any) -> "AugmentedSequence":
        """A sequence over a tensorflow-datasets dataset, read once into memory.

        Args:
            name_or_dataset: a registered TFDS name (e.g. "cifar10", loaded with `tfds.load`) or a
                `tf.data.Dataset` of dicts or of `(image, label)` pairs.
            split: the split to load (e.g. "train"); required with a name, not allowed with a dataset.
            data_dir: optional TFDS data directory (with a name only).
            image_key, label_key: feature names in dict elements; `label_key=None` loads images only.
            **kwargs: any other `AugmentedSequence` argument (`class_names` defaults to the dataset's
                label names when it has them).

        Returns:
            An `AugmentedSequence`.
        """
        images, labels, class_names = loaders.tfds_examples(
            name_or_dataset, split=split, data_dir=data_dir, image_key=image_key, label_key=label_key
        )
        if class_names is not None:
            kwargs.setdefault("class_names", class_names)
        return cls(images, labels, **kwargs)

    @property
    def epoch(self) -> int:
        """The epoch that `seq[i]` serves: 0 until told otherwise."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that `seq[i]` serves, and the one the next pass of `to_tf_dataset()` serves.

        Args:
            epoch: non-negative int; batch `i` then equals batch `i` of that epoch in any process.
        """
        self._epoch = check_int("epoch", epoch, minimum=0)
        self._epoch_told = True
        self._served = []
        self._unopened_end = None

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A `keras.callbacks.Callback` that sets this sequence's epoch to `fit`'s at each epoch start.

        `fit_accumulated` adds it by itself (also for a dataset from `to_tf_dataset()`); with
        `Model.fit`, add it so that a resumed run (`initial_epoch`, `BackupAndRestore`) continues with
        the epoch's own augmentations.

        Example:

        >>> import numpy as np, keras
        >>> seq = AugmentedSequence(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), batch_size=2)
        >>> seq.epoch_callback().on_epoch_begin(3)
        >>> seq.epoch
        3
        """
        return EpochCallback(self)

    @property
    def images(self) -> Any:
        """The source of the images (`keras_trainx.data.sources`)."""
        return self.batches.images

    @property
    def targets(self) -> Targets:
        """The targets of the images."""
        return self.batches.targets

    @property
    def pipeline(self) -> Any:
        """The sequence's own, validated `A.Compose` (a copy of `transform`)."""
        return self.batches.pipeline

    @property
    def seed(self) -> int:
        """The seed: batches are a pure function of `(seed, epoch, index)`."""
        return self.batches.seed

    @property
    def batch_size(self) -> int:
        return self.batches.batch_size

    @property
    def shuffle(self) -> bool:
        return self.batches.shuffle

    @property
    def drop_remainder(self) -> bool:
        return self.batches.drop_remainder

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        return len(self.batches)

    def batch_indices(self, index: int, epoch: int | None = None) -> np.ndarray:
        """The sample indices (into `x`) of batch `index` of `epoch` (the current epoch by default)."""
        return self.batches.indices(check_int("index", index),
                                    self._epoch if epoch is None else check_int("epoch", epoch, minimum=0))

    def __getitem__(self, index: int) -> tuple:
        batch = self.epoch_batch(self._epoch, index)
        if len(self._served) < 3:
            self._served.append(index)
        self._unopened_end = None
        return batch

    def epoch_batch(self, epoch: int, index: int) -> tuple:
        """Batch `index` of epoch `epoch`, whatever epoch the sequence serves now.

        A pure function of `(seed, epoch, index)`: `seq[i]` is `seq.epoch_batch(seq.epoch, i)`, and
        worker threads and processes call this with the epoch their pass serves.

        Args:
            epoch: non-negative int.
            index: batch index in `[0, len(seq))`.

        Returns:
            The batch, as `seq[index]` returns it.
        """
        return self.build_batch(epoch, index, np.empty)

    def build_batch(self, epoch: int, index: int, empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """`epoch_batch(epoch, index)`, with the images written into the array `empty(shape, dtype)` returns.

        Worker processes pass an `empty` that places the images in shared memory, so that the batch
        reaches the training process without a copy.

        Args:
            epoch: non-negative int.
            index: batch index in `[0, len(seq))`.
            empty: called once per batch with the images' `(shape, dtype)`; returns an array of that
                shape and dtype (its contents are overwritten), e.g. `np.empty`.

        Returns:
            The batch, as `epoch_batch(epoch, index)` returns it, its images in the array from `empty`.

        Example:

        >>> seq = AugmentedSequence(np.ones((4, 2, 2, 3), np.uint8), batch_size=2, seed=0)
        >>> buffer = np.zeros((2, 2, 2, 3), np.uint8)
        >>> seq.build_batch(0, 1, lambda shape, dtype: buffer)[0] is buffer, int(buffer.sum())
        (True, 24)
        """
        return self.batches.build_batch(check_int("epoch", epoch, minimum=0), check_int("index", index), empty)

    def build_samples(self, epoch: int, ids: np.ndarray,
                      empty: Callable[[tuple, np.dtype], np.ndarray]) -> tuple:
        """The batch of samples `ids` of epoch `epoch`, as `build_batch` returns a batch.

        Each sample's augmentation is a pure function of `(seed, epoch, sample index)`, so any subset
        of a batch (a worker's share of it, see `keras_trainx.data.shard`) holds the samples the
        whole batch holds.

        Args:
            epoch: non-negative int.
            ids: a non-empty int array of sample indices (into `x`).
            empty: as in `build_batch`.

        Returns:
            The batch of those samples, in that order.

        Example:

        >>> import albumentations as A
        >>> seq = AugmentedSequence(np.arange(48, dtype=np.uint8).reshape(4, 2, 2, 3), batch_size=4,
        ...                         transform=[A.HorizontalFlip(p=0.5)], seed=0, shuffle=False)
        >>> part = seq.build_samples(1, np.array([2, 3]), np.empty)[0]
        >>> bool((part == seq.epoch_batch(1, 0)[0][2:]).all())
        True
        """
        return self.batches.build_samples(epoch, ids, empty)

    def for_workers(self) -> BatchBuilder:
        """What worker processes receive to build this sequence's batches: `batches` (no Keras in it).

        A subclass that builds its batches itself (overrides `epoch_batch`, `build_batch` or
        `build_samples`) is refused: the workers would build the base class's batches instead.
        """
        overridden = [name for name in ("epoch_batch", "build_batch", "build_samples")
                      if getattr(type(self), name) is not getattr(AugmentedSequence, name)]
        if overridden:
            raise TypeError(
                f"{type(self).__name__} overrides {', '.join(overridden)}, which use_multiprocessing=True "
                "worker processes do not run: they build batches with the sequence's `batches` "
                "(a BatchBuilder, without Keras). Use thread workers (use_multiprocessing=False), or "
                "change the batches through `transform` instead of overriding."
            )
        return self.batches

    def changed_by(self, epoch: int, index: int) -> str:
        """Names the transforms applied to the first image of batch `index` of `epoch` or to that of
        batch 0 of epoch 0 only (the batch a dataset takes its element spec from), for an error message."""
        return self.batches.changed_by((0, int(self.batch_indices(0, 0)[0])),
                                       (epoch, int(self.batch_indices(index, epoch)[0])))

    def on_epoch_begin(self) -> None:
        """Opens an epoch (Keras calls it at the start of every epoch of `fit` and `evaluate`).

        Takes back an `on_epoch_end()` that followed only Keras' signature look and no batch since
        (see `on_epoch_end()`).
        """
        if self._unopened_end is not None:
            self._epoch, self._epoch_told = self._unopened_end
            self._unopened_end = None
        self._epoch_open = True

    def on_epoch_end(self) -> None:
        """Advances the epoch if `on_epoch_begin()` opened it or `seq[i]` served batches of it.

        `Model.fit` calls it once before its first epoch (resetting its iterator) after a look at
        batches 0 and 1 for its output signature (batch 0 of a one-batch sequence): such a call does
        not count. After exactly that look, the call advances the epoch of a sequence without Keras
        workers (`workers=1`, no multiprocessing) and an `on_epoch_begin()` before any further batch
        takes it back; with Keras workers it ends no epoch, since those start reading before
        `on_epoch_begin()` could take it back (a Keras 2 loop that serves only the first two batches
        of such a sequence calls `set_epoch(e)` instead). A call with no batch served ends no epoch.
        """
        look = list(range(min(signature_batches(), len(self))))
        if self._epoch_open or (self._served and self._served != look):
            undo = None
        elif self._served and self.workers == 1 and not self.use_multiprocessing:
            undo = (self._epoch, self._epoch_told)
        else:
            return
        self._unopened_end = undo
        self._epoch_open = False
        self._served = []
        self._epoch += 1
        self._epoch_told = False

    def start_pass(self) -> int:
        """Starts a pass of `to_tf_dataset()` over the batches and returns the epoch it serves.

        The first pass serves `epoch`; a later one serves the epoch after the previous pass's, unless
        `set_epoch()` (or the epoch callback) told an epoch since, which it then serves.

        Returns:
            The pass's epoch, now also `self.epoch`.
        """
        if self._passes and not self._epoch_told:
            self._epoch += 1
        self._passes += 1
        self._epoch_told = False
        return self._epoch

    def to_tf_dataset(self, *, prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
        """A `tf.data.Dataset` of the batches with static shapes (for tf.distribute and TPUs).

        Each pass over the dataset is one epoch (see `start_pass()`): its batches are
        `epoch_batch(epoch, i)`, built by up to `workers` threads, or with `use_multiprocessing=True`
        by `workers` worker processes (see `keras_trainx.data.process_pool`), which end when the dataset
        is deleted. `fit_accumulated` keeps the pass's epoch equal to `fit`'s; with `Model.fit`, add
        `callbacks=[seq.epoch_callback()]` for the same (needed for resumed runs and under a
        distribution strategy, whose first look at the data is a pass of its own). Needs
        `drop_remainder=True` when the last batch would be partial. Under a multi-worker strategy,
        `fit_accumulated` gives each worker a dataset of its share of every batch instead
        (`keras_trainx.distribute.shard_sequence`; this dataset's batches are then not read).

        Args:
            prefetch: batches to prefetch (`tf.data.AUTOTUNE` by default); 0 prefetches none.

        Returns:
            A `tf.data.Dataset`.
        """
        prefetch = check_prefetch(prefetch)
        if self.num_samples % self.batch_size and not self.drop_remainder:
            raise ValueError(
                f"to_tf_dataset() needs equal batches but {self.num_samples} images in batches of "
                f"{self.batch_size} leave a last batch of {self.num_samples % self.batch_size}; build the "
                f"sequence with drop_remainder=True (or a batch_size that divides {self.num_samples})."
            )
        dataset = workers_dataset(self, prefetch=prefetch)
        remember_dataset(dataset, self)
        return dataset

    def preview(self, n: int = 8, *, cols: int = 4) -> Any:
        """A matplotlib figure of `n` augmented samples of the current epoch, with labels, masks,
        boxes and keypoints drawn (see `keras_trainx.data.preview.preview`)."""
        from keras_trainx.data.preview import preview

        return preview(self, n, cols=cols)


def workers_dataset(source: Any, *, prefetch: int, static_batch: bool = True) -> tf.data.Dataset:
    """The `batch_dataset` of `source`, its batches built by `source.workers` threads, or worker
    processes with `source.use_multiprocessing` (`keras_trainx.data.process_pool`).

    Args:
        source: a batch source (see `batch_dataset`) with `workers`, `use_multiprocessing` and
            `build_batch(epoch, index, empty)` and `for_workers()`: an `AugmentedSequence` or a shard
            of one.
        prefetch, static_batch: as in `batch_dataset`.

    Returns:
        A `tf.data.Dataset`.
    """
    if source.use_multiprocessing:
        from keras_trainx.data.process_pool import ProcessBatches

        # tf.data asks for up to two batches per worker at once; ProcessBatches itself queues the
        # batches that follow each request, so that a worker never waits for tf.data
        batches = ProcessBatches(source)  # at most one worker per usable core
        return batch_dataset(batches, parallel_calls=2 * batches.workers, prefetch=prefetch,
                             static_batch=static_batch)
    return batch_dataset(source, parallel_calls=source.workers, prefetch=prefetch, static_batch=static_batch)


def _check_class_names(class_names: Any, num_classes: int | None, y: Any) -> list[str]:
    """`class_names` as a list of strings, one per class of `num_classes` and of every label in `y`."""
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise TypeError(f"`class_names` must be a list of strings; received class_names={class_names!r}.")
    names = list(class_names)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"`class_names` must name the {num_classes} classes of num_classes={num_classes}; "
                         f"received {len(names)} names.")
    labels = None if y is None else np.asarray(y)
    if labels is not None and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and labels.size:
        if labels.min() < 0 or labels.max() >= len(names):
            raise ValueError(f"`class_names` has {len(names)} names but y holds labels from {labels.min()} to "
                             f"{labels.max()}; give one name per class, in label order.")
    return names
