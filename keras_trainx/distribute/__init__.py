"""`tf.distribute` for Keras users: `auto_strategy()` picks the strategy for this process (TPU,
multi-worker, several GPUs or one device), and the helpers that go with it give the global batch,
the linear learning-rate scaling rule and a `tf.data` input with static shapes, and `shard_sequence`
gives each worker of a multi-worker run only its share of an `AugmentedSequence`'s batches. Its
modules `slurm` (the cluster of an `srun` step, which `auto_strategy()` reads) and `launch` (worker
processes on one machine, behind `keras-trainx launch`) start the workers of a multi-worker run."""

from keras_trainx.distribute.inputs import global_batch_size, input_dataset, scale_learning_rate
from keras_trainx.distribute.sharding import shard_sequence
from keras_trainx.distribute.strategy import auto_strategy

__all__ = ["auto_strategy", "global_batch_size", "input_dataset", "scale_learning_rate", "shard_sequence"]
