"""The helpers a script needs after choosing a strategy: the global batch, the linear learning-rate
scaling rule, and a `tf.data` input with static shapes (TPUs compile for fixed shapes)."""

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_trainx.data import to_tf_dataset
from keras_trainx.validation import check_bool, check_float, check_int


def global_batch_size(per_replica_batch_size: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Returns the global batch size: `per_replica_batch_size` times the strategy's replicas.

    Under a strategy, `Model.fit(batch_size=...)`, `fit_accumulated(batch_size=...)` and a
    `tf.data.Dataset`'s batch are the GLOBAL batch, split across all replicas of all workers.

    Args:
        per_replica_batch_size: positive int, samples each replica processes per step.
        strategy: a `tf.distribute.Strategy`; default: the current one (`tf.distribute.get_strategy()`).

    Returns:
        An int.

    Example:

    >>> import tensorflow as tf, keras_trainx
    >>> strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    >>> keras_trainx.distribute.global_batch_size(32, strategy)
    32
    """
    per_replica_batch_size = check_int("per_replica_batch_size", per_replica_batch_size, minimum=1)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"`strategy` must be a tf.distribute.Strategy or None (the current one); received "
            f"strategy={strategy!r} of type {type(strategy).__name__}."
        )
    return per_replica_batch_size * strategy.num_replicas_in_sync


def scale_learning_rate(base_learning_rate: float, global_batch_size: int, base_batch_size: int) -> float:
    """The linear scaling rule: `base_learning_rate * global_batch_size / base_batch_size`.

    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (2017): when the
    minibatch grows k times, multiply the learning rate by k (with a warm-up for large k, e.g.
    a keras_trainx warm-up schedule). Their ResNet-50 setting is 0.1 per 256 images, so 3.2 at 8192.

    Args:
        base_learning_rate: positive float, the learning rate tuned at `base_batch_size`.
        global_batch_size: positive int, the batch size of one update now (with gradient
            accumulation: micro-batch * accum_steps, summed over replicas).
        base_batch_size: positive int, the batch size `base_learning_rate` was tuned for.

    Returns:
        A float.

    Example:

    >>> import keras_trainx
    >>> keras_trainx.distribute.scale_learning_rate(0.1, 8192, 256)
    3.2
    """
    base_learning_rate = check_float("base_learning_rate", base_learning_rate, minimum=0.0, exclusive_minimum=True,
                                     hint="It is the rate tuned at base_batch_size.")
    global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    base_batch_size = check_int("base_batch_size", base_batch_size, minimum=1)
    return base_learning_rate * global_batch_size / base_batch_size


def input_dataset(
    x: Any,
    y: Any = None,
    *,
    batch_size: int | None = None,
    sample_weight: Any = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Turns arrays or a `keras.utils.PyDataset` into a `tf.data.Dataset` with static shapes.

    TPUs compile for fixed shapes: with `drop_remainder=True` (default) every batch has exactly
    `batch_size` samples and the dataset's `element_spec` says so. Floating-point arrays are cast to
    `keras.config.floatx()`, as `Model.fit` does. Pass the result to `Model.fit` or
    `fit_accumulated` (it distributes the batches over the strategy's replicas) or to
    `strategy.experimental_distribute_dataset`.

    Args:
        x: a numpy array (or a dict/list/tuple of them, for several inputs), or a
            `keras.utils.PyDataset`, which is converted by `keras_trainx.data.to_tf_dataset`.
        y: targets, arrays like `x` (None for unsupervised data or a PyDataset).
        batch_size: for arrays, the GLOBAL batch size (see `global_batch_size`); a PyDataset
            batches itself, so leave it None.
        sample_weight: array of per-sample weights, or None. Arrays only, and only with `y`.
        shuffle: for arrays, whether to shuffle the samples anew each epoch; None (default) means
            True. A PyDataset keeps its own order (`AugmentedSequence(shuffle=...)` shuffles
            itself), so leave it None.
        seed: int seed of the array shuffle, for a reproducible order; None for a random one.
        drop_remainder: whether to drop the last, smaller batch. Keep True for TPUs. With False,
            arrays keep every sample but the batch dimension becomes unknown (`None`), and a
            PyDataset whose last batch is smaller is refused (ValueError).

    Returns:
        A `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, sample_weight)` batches.

    Example:

    >>> import numpy as np, keras_trainx
    >>> x, y = np.zeros((10, 3), "float32"), np.arange(10)
    >>> ds = keras_trainx.distribute.input_dataset(x, y, batch_size=4, shuffle=False)
    >>> [int(b[1][0]) for b in ds], ds.element_spec[0].shape.as_list()
    ([0, 4], [4, 3])
    """
    check_bool("drop_remainder", drop_remainder)
    if isinstance(x, keras.utils.PyDataset):
        return _pydataset_input(x, y, batch_size, sample_weight, shuffle, seed, drop_remainder)
    if batch_size is None:
        raise ValueError(
            "batch_size is required for array inputs: pass the global batch size, e.g. "
            "batch_size=keras_trainx.distribute.global_batch_size(32, strategy)."
        )
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if sample_weight is not None and y is None:
        raise ValueError("`sample_weight` needs `y`: pass the targets as y, or drop sample_weight.")
    shuffle = True if shuffle is None else check_bool("shuffle", shuffle, hint="None means True.")
    if seed is not None:
        seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1, hint="None draws a random order.")

    arrays = {
        name: _as_arrays(name, value)
        for name, value in (("x", x), ("y", y), ("sample_weight", sample_weight))
        if value is not None
    }
    num_samples = _num_samples(arrays)
    if drop_remainder and num_samples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_samples} samples, so with "
            "drop_remainder=True there would be no batch at all. Use a smaller batch_size."
        )
    data = tuple(arrays.values())
    dataset = tf.data.Dataset.from_tensor_slices(data[0] if len(data) == 1 else data)
    if shuffle:
        dataset = dataset.shuffle(num_samples, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _pydataset_input(sequence: keras.utils.PyDataset, y: Any, batch_size: int | None, sample_weight: Any,
                     shuffle: bool | None, seed: int | None, drop_remainder: bool) -> tf.data.Dataset:
    """`to_tf_dataset(sequence)`, after refusing the arguments that only apply to arrays."""
    for name, value in (("y", y), ("batch_size", batch_size), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"{name} must be None when x is a PyDataset: its batches already hold the inputs, "
                "targets and weights at its own batch size."
            )
    for name, value in (("shuffle", shuffle), ("seed", seed)):
        if value is not None:
            raise ValueError(
                f"{name} must be None when x is a PyDataset: it orders its batches itself "
                "(e.g. AugmentedSequence(shuffle=..., seed=...))."
            )
    return to_tf_dataset(sequence, drop_remainder=drop_remainder)


def _as_arrays(name: str, value: Any) -> Any:
    """`value` (an array or a nest of arrays) as numpy arrays, floats cast to floatx."""

    def convert(array: Any) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(
                f"{name} must hold arrays with a sample axis first; got a scalar. Pass one value "
                "per sample."
            )
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(keras.config.floatx(), copy=False)
        return array

    return tf.nest.map_structure(convert, value)


def _num_samples(arrays: dict[str, Any]) -> int:
    """The common length of all arrays; ValueError naming the arguments that differ."""
    lengths = {
        (name, len(array)) for name, value in arrays.items() for array in tf.nest.flatten(value)
    }
    if len({length for _, length in lengths}) > 1:
        described = ", ".join(f"{name}: {length}" for name, length in sorted(lengths))
        raise ValueError(
            f"x, y and sample_weight must have the same number of samples; got {described}. "
            "Pass arrays with one row per sample."
        )
    return next(iter(lengths))[1]
