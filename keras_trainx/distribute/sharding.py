"""Sharded input under multi-worker strategies: each worker augments only its share of every batch.

Keras hands a `PyDataset`, or a `tf.data` pipeline that augments inside it, to tf.distribute, which
shards it by DATA after the pipeline: every worker builds every global batch and keeps its slice, so
more machines add no augmentation throughput. `shard_sequence` builds the input with tf.distribute's
documented `distribute_datasets_from_function` instead: the function it passes makes, on each worker,
the dataset of that worker's `keras_trainx.data.shard.SequenceShard` (its `InputContext` names the
worker's input pipeline), so each worker loads and augments only its rows of every global batch,
in its threads or worker processes. The replicas see one process's global batches exactly: the same
samples, in the same order, with the same augmentations (each a pure function of the seed, the epoch
and the sample index). `fit_accumulated` does this by itself (`sharded_input`); arrays, other
`PyDataset`s and user `tf.data` pipelines keep Keras' sharding.
"""

import logging
from typing import Any

import tensorflow as tf

from keras_trainx.data.epochs import remembered_sequence
from keras_trainx.data.sequence import AugmentedSequence, workers_dataset
from keras_trainx.data.shard import SequenceShard
from keras_trainx.data.tf_dataset import check_prefetch

logger = logging.getLogger("keras_trainx")


def input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """The number of workers that feed `strategy`'s replicas (1 on one machine).

    Example:

    >>> import tensorflow as tf
    >>> input_pipelines(tf.distribute.get_strategy())
    1
    """
    return strategy.num_replicas_in_sync // local_replicas(strategy)


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """The number of `strategy`'s replicas on this worker.

    Example:

    >>> import tensorflow as tf
    >>> local_replicas(tf.distribute.MirroredStrategy(["/cpu:0"]))
    1
    """
    if strategy.num_replicas_in_sync == 1:  # the default strategy has no device list to ask
        return 1
    return len(strategy.extended.worker_devices)


def shard_sequence(x: Any, strategy: tf.distribute.Strategy | None = None, *,
                   prefetch: int = tf.data.AUTOTUNE) -> tf.distribute.DistributedDataset:
    """The batches of an `AugmentedSequence`, each worker building only its replica's share of each.

    Every worker process of a multi-worker run calls this with the same sequence (same data, batch
    size and seed); worker `w` of `W` then loads and augments only rows `np.array_split(batch, W)[w]`
    of every global batch (the sequence's `batch_size` is the global batch), and the replicas
    together see exactly the batches one process would. Pass the result to `Model.fit` or a custom
    loop, with `x.epoch_callback()` among `fit`'s callbacks so that each epoch's augmentations follow
    `fit`'s epoch; `fit_accumulated` calls this itself.

    Args:
        x: an `AugmentedSequence`, or a dataset its `to_tf_dataset()` returned (the worker's dataset
            is then built anew; that dataset's batches are not read).
        strategy: a `tf.distribute.Strategy` with one replica per worker (e.g.
            `MultiWorkerMirroredStrategy` with one CPU or GPU each); default: the current one.
        prefetch: batches each worker prefetches, as in `AugmentedSequence.to_tf_dataset`.

    Returns:
        A `tf.distribute.DistributedDataset` of batches whose batch dimension is unknown (a last
        batch may be smaller), one pass per epoch.

    Example:

    >>> import numpy as np, tensorflow as tf, keras_trainx
    >>> seq = keras_trainx.AugmentedSequence(np.zeros((6, 8, 8, 3), np.uint8), np.arange(6),
    ...                                      batch_size=4, shuffle=False, seed=0)
    >>> batches = keras_trainx.distribute.shard_sequence(seq, tf.distribute.get_strategy())
    >>> [batch[1].numpy().tolist() for batch in batches]
    [[0, 1, 2, 3], [4, 5]]
    """
    sequence = remembered_sequence(x)
    if not isinstance(sequence, AugmentedSequence):
        raise TypeError(
            f"`x` must be an AugmentedSequence or a dataset from its to_tf_dataset(); received "
            f"{type(x).__name__}. Other inputs are sharded by tf.distribute itself: pass them to fit as they are."
        )
    prefetch = check_prefetch(prefetch)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None (the current one); received "
                        f"strategy={strategy!r} of type {type(strategy).__name__}.")
    if local_replicas(strategy) != 1:
        raise ValueError(
            f"shard_sequence needs one replica per worker; this worker has {local_replicas(strategy)} "
            f"({', '.join(strategy.extended.worker_devices)}). Keras counts a worker's batches, not its "
            "replicas' (several per step here), so pass the sequence to fit itself: tf.distribute then "
            "shards it by data (every worker builds every batch)."
        )

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = SequenceShard(sequence, context.input_pipeline_id, context.num_input_pipelines)
        return workers_dataset(shard, prefetch=prefetch, static_batch=False)

    return strategy.distribute_datasets_from_function(worker_dataset)


def sharded_input(x: Any, strategy: tf.distribute.Strategy, class_weight: Any = None) -> Any:
    """What `fit_accumulated` hands `Model.fit`: `shard_sequence(x, strategy)` when `x` is an
    `AugmentedSequence` (or its `to_tf_dataset()`) and `strategy` spans several workers with one
    replica each, else `x` itself (one machine, other inputs; the reason is logged when a sequence
    under a multi-worker strategy stays whole).

    Args:
        x: the training data given to `fit`.
        strategy: the model's `tf.distribute.Strategy`.
        class_weight: `fit`'s `class_weight`: Keras applies it with `Dataset.map`, which a
            distributed dataset has not, so a sequence with class weights stays whole.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> x = np.zeros((4, 2))
    >>> sharded_input(x, tf.distribute.get_strategy()) is x
    True
    """
    sequence = remembered_sequence(x)
    if not isinstance(sequence, AugmentedSequence) or input_pipelines(strategy) < 2:
        return x
    why = None
    if local_replicas(strategy) > 1:
        why = f"this worker has {local_replicas(strategy)} replicas"
    elif class_weight is not None:
        why = "class_weight is given (put per-sample weights into the sequence, sample_weight=, instead)"
    if why is not None:
        logger.info("fit_accumulated: %s, so tf.distribute shards the AugmentedSequence by data: every "
                    "worker builds every global batch.", why)
        return x
    return shard_sequence(x, strategy)
