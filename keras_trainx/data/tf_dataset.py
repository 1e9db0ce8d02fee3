"""Turns any `keras.utils.PyDataset` into a `tf.data.Dataset` with static shapes.

Static shapes (the batch dimension included) are what TPUs and `tf.distribute` input pipelines need.
The element spec comes from the first and the last batch; a partial last batch is refused unless
`drop_remainder=True` drops it. Batches are built by `tf.numpy_function` calls, up to
`sequence.workers` at once in tf.data's threads (so `__getitem__` must be thread-safe whenever
`workers > 1`, as for Keras' own thread workers; `use_multiprocessing` does not apply here). Each
new pass over the dataset after the first calls `sequence.on_epoch_end()` once the previous pass has
finished, then `on_epoch_begin()`, as Keras does between epochs.
"""

import keras
import numpy as np
import tensorflow as tf


def _standardize(batch):
    if isinstance(batch, np.ndarray):
        return (batch,)
    if isinstance(batch, list):
        return tuple(batch)
    if isinstance(batch, (tuple, dict)):
        return batch
    raise TypeError(
        f"sequence: __getitem__ must return an array, a tuple or a dict of arrays, got {type(batch).__name__}."
    )


def _flat_arrays(batch, index):
    flat = [np.asarray(a) for a in tf.nest.flatten(_standardize(batch))]
    if not flat or any(a.ndim == 0 for a in flat):
        raise ValueError(f"sequence: batch {index} must hold arrays with a batch dimension.")
    sizes = {len(a) for a in flat}
    if len(sizes) != 1:
        raise ValueError(f"sequence: the arrays of batch {index} have different batch sizes {sorted(sizes)}.")
    return flat


def to_tf_dataset(sequence, *, drop_remainder=False, prefetch=tf.data.AUTOTUNE):
    """Converts a finite `keras.utils.PyDataset` into a `tf.data.Dataset` with fully static shapes.

    Args:
        sequence: a `keras.utils.PyDataset` with a finite number of batches.
        drop_remainder: drop the last batch when it is smaller than the others. Without it, a partial
            last batch raises ValueError (its shape would not be static).
        prefetch: number of batches to prefetch (`tf.data.AUTOTUNE` by default); 0 prefetches none.

    Returns:
        A `tf.data.Dataset` yielding the batches in order, with the structure `__getitem__` returns
        (a bare array becomes a 1-tuple, lists become tuples) and known cardinality.

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
        raise TypeError(f"sequence must be a keras.utils.PyDataset, got {type(sequence).__name__}.")
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < tf.data.AUTOTUNE:
        raise ValueError(f"prefetch must be a non-negative int or tf.data.AUTOTUNE, got {prefetch!r}.")
    num_batches = sequence.num_batches
    if num_batches is None:
        raise ValueError("sequence must have a finite number of batches (its num_batches is None).")
    if num_batches < 1:
        raise ValueError("sequence has no batches.")
    structure = _standardize(sequence[0])
    first = _flat_arrays(structure, 0)
    last = _flat_arrays(sequence[num_batches - 1], num_batches - 1)
    tf.nest.assert_same_structure(structure, _standardize(sequence[num_batches - 1]))
    batch_size = len(first[0])
    if len(last[0]) != batch_size:
        if not drop_remainder:
            raise ValueError(
                f"sequence: the last batch has {len(last[0])} samples, the others {batch_size}; static shapes "
                f"need equal batches: pass drop_remainder=True (or make the batch size divide the data)."
            )
        num_batches -= 1
        if num_batches < 1:
            raise ValueError("sequence: drop_remainder=True leaves no batch (the only batch is partial).")
    for a, b in zip(first, last):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise ValueError(
                f"sequence: batches differ beyond the batch size (first batch {a.shape} {a.dtype}, last batch "
                f"{b.shape} {b.dtype}); static shapes need every batch to have the same shapes."
            )
    dtypes = [tf.as_dtype(a.dtype) for a in first]
    shapes = [a.shape for a in first]
    started = False

    def start_pass():
        nonlocal started
        if started:
            sequence.on_epoch_end()
        started = True
        sequence.on_epoch_begin()
        return np.int64(num_batches)

    def load(index):
        return _flat_arrays(sequence[int(index)], int(index))

    def fetch(index):
        flat = tf.numpy_function(load, [index], dtypes, stateful=True)
        flat = [tf.ensure_shape(t, shape) for t, shape in zip(flat, shapes)]
        return tf.nest.pack_sequence_as(structure, flat)

    # One numpy_function per pass runs the epoch hooks before any batch of the pass is built.
    dataset = tf.data.Dataset.range(1).map(lambda _: tf.numpy_function(start_pass, [], tf.int64, stateful=True))
    dataset = dataset.flat_map(tf.data.Dataset.range)
    if sequence.workers > 1:
        dataset = dataset.map(fetch, num_parallel_calls=sequence.workers, deterministic=True)
    else:
        dataset = dataset.map(fetch)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    if prefetch:
        dataset = dataset.prefetch(prefetch)
    return dataset
