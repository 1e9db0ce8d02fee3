"""Turns a `keras.utils.PyDataset` into a `tf.data.Dataset` with static shapes.

Static shapes (the batch dimension included) are what TPUs and `tf.distribute` input pipelines need.
The element spec comes from the first and the last batch; a partial last batch is refused unless
`drop_remainder=True` drops it. Batches are built by `tf.numpy_function` calls, up to `workers` at once
in tf.data's threads (so `__getitem__` must be thread-safe whenever `workers > 1`, as for Keras' own
thread workers).

Each iteration over the dataset is a pass, and a pass is an epoch. A source that says which epoch a
pass serves (`start_pass()`, then `epoch_batch(epoch, index)` for its batches, as `AugmentedSequence`
does) has that epoch carried with every batch request of the pass, so no batch depends on when it is
built. Any other `PyDataset` gets Keras' hooks instead: each pass after the first calls
`on_epoch_end()`, and every pass `on_epoch_begin()`, before its first batch is built.

The dataset's functions hold their source weakly: the returned dataset (and so any dataset or iterator
made from it) keeps the source alive, and the source, with any worker processes it owns, goes when
the last of them is deleted. TensorFlow keeps traced `numpy_function` callables longer than the dataset.
"""

import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.validation import check_bool, check_int

_SOURCES: "weakref.WeakKeyDictionary[tf.data.Dataset, object]" = weakref.WeakKeyDictionary()


def check_prefetch(prefetch: int) -> int:
    """Validates a `prefetch` argument: a non-negative int or `tf.data.AUTOTUNE`.

    Example:

    >>> check_prefetch(tf.data.AUTOTUNE) == tf.data.AUTOTUNE
    True
    """
    return check_int("prefetch", prefetch, minimum=tf.data.AUTOTUNE,
                     hint="Use a non-negative number of batches or tf.data.AUTOTUNE.")


def _standardize(batch: Any) -> Any:
    if isinstance(batch, np.ndarray):
        return (batch,)
    if isinstance(batch, list):
        return tuple(batch)
    if isinstance(batch, (tuple, dict)):
        return batch
    raise TypeError(
        f"sequence: __getitem__ must return an array, a tuple or a dict of arrays, got {type(batch).__name__}."
    )


def _flat_arrays(batch: Any, index: int) -> list[np.ndarray]:
    flat = [np.asarray(a) for a in tf.nest.flatten(_standardize(batch))]
    if not flat or any(a.ndim == 0 for a in flat):
        raise ValueError(f"sequence: batch {index} must hold arrays with a batch dimension.")
    sizes = {len(a) for a in flat}
    if len(sizes) != 1:
        raise ValueError(f"sequence: the arrays of batch {index} have different batch sizes {sorted(sizes)}.")
    return flat


def _check_like_first(source: Any, first: list[tuple[np.dtype, tuple]], flat: list[np.ndarray], epoch: int,
                      index: int, *, batch_axis: bool) -> None:
    """Raises ValueError if batch `index` of `epoch` differs from the first batch (of epoch 0) in a dtype
    or a shape (beyond the batch size unless `batch_axis`): the dataset's element spec is the first's.

    Args:
        first: the `(dtype, shape)` of each array of the first batch (not the arrays: they may be views
            of a worker pool's shared memory, which TensorFlow's traced functions would keep).

    A source with `changed_by(epoch, index)` (an `AugmentedSequence`) names the transforms behind it.
    """
    for k, ((dtype, shape), b) in enumerate(zip(first, flat)):
        if dtype == b.dtype and (shape == b.shape if batch_axis else shape[1:] == b.shape[1:]):
            continue
        why = source.changed_by(epoch, index) if hasattr(source, "changed_by") else (
            "static shapes need every batch to have the first batch's shapes and dtypes.")
        raise ValueError(
            f"sequence: batch {index} of epoch {epoch} differs from the first batch in array {k} of its "
            f"structure ({b.dtype} {b.shape}, the first batch {dtype} {shape}): {why}"
        )


class _HookedBatches:
    """A plain `PyDataset` as a source: Keras' epoch hooks at each pass start; `epoch` is ignored."""

    def __init__(self, sequence: keras.utils.PyDataset) -> None:
        self.sequence = sequence
        self._started = False

    def __len__(self) -> int:
        return self.sequence.num_batches

    def start_pass(self) -> int:
        if self._started:
            self.sequence.on_epoch_end()
        self._started = True
        self.sequence.on_epoch_begin()
        return 0

    def epoch_batch(self, epoch: int, index: int) -> Any:
        return self.sequence[index]


def to_tf_dataset(sequence: keras.utils.PyDataset, *, drop_remainder: bool = False,
                  prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Converts a finite `keras.utils.PyDataset` into a `tf.data.Dataset` with fully static shapes.

    Args:
        sequence: a `keras.utils.PyDataset` with a finite number of batches. One with `start_pass()`
            and `epoch_batch(epoch, index)` (an `AugmentedSequence`) chooses each pass's epoch itself;
            any other has its `on_epoch_end()`/`on_epoch_begin()` hooks called between passes.
        drop_remainder: drop the last batch when it is smaller than the others. Without it, a partial
            last batch raises ValueError (its shape would not be static).
        prefetch: number of batches to prefetch (`tf.data.AUTOTUNE` by default); 0 prefetches none.

    Returns:
        A `tf.data.Dataset` yielding the batches in order, with the structure `__getitem__` returns
        (a bare array becomes a 1-tuple, lists become tuples) and known cardinality. tf.data's
        autotuning is off in its options (the batches are built outside tf.data).

    Example:

    >>> class Squares(keras.utils.PyDataset):
    ...     def __len__(self):
    ...         return 3
    ...     def __getitem__(self, i):
    ...         x = np.arange(4, dtype="float32") + 4 * i
    ...         return x, x ** 2
    >>> ds = to_tf_dataset(Squares())
    >>> ds.element_spec[0]
    TensorSpec(shape=(4,), dtype=tf.float32, name=None)
    >>> [float(y[1]) for _, y in ds]
    [1.0, 25.0, 81.0]
    """
    if not isinstance(sequence, keras.utils.PyDataset):
        raise TypeError(f"`sequence` must be a keras.utils.PyDataset; received {type(sequence).__name__}.")
    check_bool("drop_remainder", drop_remainder)
    prefetch = check_prefetch(prefetch)
    if sequence.num_batches is None:
        raise ValueError("sequence must have a finite number of batches (its num_batches is None).")
    told = hasattr(sequence, "start_pass") and hasattr(sequence, "epoch_batch")
    dataset = batch_dataset(sequence if told else _HookedBatches(sequence), parallel_calls=sequence.workers,
                            drop_remainder=drop_remainder, prefetch=prefetch)
    if hasattr(sequence, "epoch_callback"):
        from keras_trainx.data.epochs import remember_dataset

        remember_dataset(dataset, sequence)
    return dataset


def batch_dataset(source: Any, *, parallel_calls: int = 1, drop_remainder: bool = False,
                  prefetch: int = tf.data.AUTOTUNE, static_batch: bool = True) -> tf.data.Dataset:
    """The `tf.data.Dataset` of a batch source: one pass per iteration, batches built on request.

    Args:
        source: an object with `len(source)` batches, `start_pass() -> int` (called before the first
            batch of each pass; returns the pass's epoch) and `epoch_batch(epoch, index)`
            (thread-safe when `parallel_calls > 1`).
        parallel_calls: batch requests in flight at once.
        drop_remainder, prefetch: as in `to_tf_dataset`.
        static_batch: False leaves the batch dimension unknown (`None`), so that batches may differ
            in size (a worker's share of each batch, `keras_trainx.data.shard`); `drop_remainder`
            must then be False.

    Returns:
        The dataset; it keeps `source` alive (see the module docstring).
    """
    if not static_batch and drop_remainder:
        raise ValueError("batch_dataset: drop_remainder=True needs static_batch=True (a batch of another "
                         "size is only dropped when the batch dimension is static).")
    num_batches = len(source)
    if num_batches < 1:
        raise ValueError("sequence has no batches.")
    structure = _standardize(source.epoch_batch(0, 0))
    first = _flat_arrays(structure, 0)
    last_batch = _standardize(source.epoch_batch(0, num_batches - 1))
    last = _flat_arrays(last_batch, num_batches - 1)
    tf.nest.assert_same_structure(structure, last_batch)
    batch_size = len(first[0])
    if len(last[0]) != batch_size and static_batch:
        if not drop_remainder:
            raise ValueError(
                f"sequence: the last batch has {len(last[0])} samples, the others {batch_size}; static shapes "
                f"need equal batches: pass drop_remainder=True (or make the batch size divide the data)."
            )
        num_batches -= 1
        if num_batches < 1:
            raise ValueError("sequence: drop_remainder=True leaves no batch (the only batch is partial).")
    spec = [(a.dtype, a.shape) for a in first]
    _check_like_first(source, spec, last, 0, len(source) - 1, batch_axis=False)
    dtypes = [tf.as_dtype(a.dtype) for a in first]
    shapes = [a.shape if static_batch else (None,) + a.shape[1:] for a in first]
    source_ref = weakref.ref(source)

    def live_source() -> Any:
        live = source_ref()
        if live is None:
            raise RuntimeError("the dataset's batch source was deleted with its dataset.")
        return live

    def start_pass() -> np.int64:
        return np.int64(live_source().start_pass())

    def load(epoch: Any, index: Any) -> list[np.ndarray]:
        live, epoch, index = live_source(), int(epoch), int(index)
        flat = _flat_arrays(live.epoch_batch(epoch, index), index)
        _check_like_first(live, spec, flat, epoch, index, batch_axis=static_batch)
        return flat

    def pass_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.range(num_batches).map(lambda index: (epoch, index))

    def fetch(epoch: tf.Tensor, index: tf.Tensor) -> Any:
        flat = tf.numpy_function(load, [epoch, index], dtypes, stateful=True)
        flat = [tf.ensure_shape(t, shape) for t, shape in zip(flat, shapes)]
        return tf.nest.pack_sequence_as(structure, flat)

    # One numpy_function per pass chooses the pass's epoch before any of its batches is requested.
    dataset = tf.data.Dataset.range(1).map(lambda _: tf.numpy_function(start_pass, [], tf.int64, stateful=True))
    dataset = dataset.flat_map(pass_batches)
    if parallel_calls > 1:
        dataset = dataset.map(fetch, num_parallel_calls=parallel_calls, deterministic=True)
    else:
        dataset = dataset.map(fetch)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    if prefetch:
        dataset = dataset.prefetch(prefetch)
    # The batches are built outside tf.data (worker processes, or the numpy_function calls), which its
    # autotuning cannot see; with it on, consumed by a tf.function as `fit` does, whole epochs ran at
    # exactly 100 batches a second with the cores 40% idle (Keras turns it off for its own workers too).
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    _SOURCES[dataset] = source
    return dataset
