"""How a micro-batch's loss enters the big-batch loss: the compiled reduction and its divisor.

Keras reduces a batch's weighted per-element losses to `L = sum / c`, where the divisor `c` depends on
the loss' reduction: the number of samples (`"sum_over_batch_size"`, `"mean"`), the number of
unmasked elements for a masked output, the sum of the sample weights (`"mean_with_sample_weight"`),
or 1 (`"sum"`). A window of micro-batches `i` equals one big batch when its gradient is
`sum_i c_i * grad(L_i) / sum_i c_i`; this module finds the reduction and each `c_i`.
"""

import keras
import tensorflow as tf

from keras_trainx import compat

MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")
REDUCTIONS = (*MEAN_REDUCTIONS, "mean_with_sample_weight", "sum")


def loss_reduction(model: keras.Model) -> str:
    """The one reduction all of `model`'s compiled losses share, or a `ValueError` with the fix.

    Losses given as strings or functions reduce as Keras wraps them: `"sum_over_batch_size"`. A
    model with its own `compute_loss` is taken to average over its samples.

    Args:
        model: a compiled `keras.Model`.

    Returns:
        `"sum_over_batch_size"` (also for `"mean"`), `"mean_with_sample_weight"` or `"sum"`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(loss=keras.losses.MeanSquaredError(reduction="sum"))
    >>> loss_reduction(model)
    'sum'
    """
    if type(model).compute_loss is not keras.Model.compute_loss:
        return "sum_over_batch_size"
    losses = [loss for loss in keras.tree.flatten(model.loss) if loss is not None]
    reductions = {getattr(loss, "reduction", "sum_over_batch_size") for loss in losses}
    reductions = {"sum_over_batch_size" if r in MEAN_REDUCTIONS else r for r in reductions}
    if not reductions:
        return "sum_over_batch_size"
    unsupported = reductions - set(REDUCTIONS)
    if unsupported:
        raise ValueError(
            f"fit_accumulated cannot accumulate a loss with reduction={sorted(map(str, unsupported))}: "
            "the per-sample losses it returns have no update to sum into. Compile with one of "
            f"{REDUCTIONS}."
        )
    if len(reductions) > 1:
        raise ValueError(
            f"fit_accumulated needs one reduction for all compiled losses; got {sorted(reductions)}. "
            "Each reduction divides by another count, which would need one set of accumulators "
            "each. Compile every output's loss with the same reduction."
        )
    (reduction,) = reductions
    if reduction == "mean_with_sample_weight" and len(losses) > 1:
        raise ValueError(
            "fit_accumulated supports reduction='mean_with_sample_weight' only for single-output "
            "models: each output's sample weights give it its own divisor. Use "
            "reduction='sum_over_batch_size' or train this model with model.fit."
        )
    return reduction


def micro_batch_divisor(reduction: str, y_pred: object, sample_weight: object,
                        batch_size: tf.Tensor) -> tf.Tensor:
    """The count `c_i` Keras' `reduction` divides this micro-batch's weighted loss sum by.

    Args:
        reduction: as returned by `loss_reduction` (not `"sum"`, whose divisor is 1).
        y_pred: the model's predictions (a masked output carries its Keras mask).
        sample_weight: the micro-batch's sample weights, or None.
        batch_size: the micro-batch's number of samples (an int32 scalar tensor).
    """
    masks = [m for m in map(compat.keras_mask, tf.nest.flatten(y_pred)) if m is not None]
    if masks and len(tf.nest.flatten(y_pred)) != 1:
        raise ValueError(
            "fit_accumulated supports masked outputs (e.g. Embedding(mask_zero=True)) only for "
            "single-output models: each masked loss needs its own normalizer. Train this model "
            "with model.fit, or split it so that one output carries the mask."
        )
    mask = tf.cast(masks[0], tf.float32) if masks else None
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        weights = tf.cast(tf.nest.flatten(sample_weight)[0], tf.float32)
        if mask is not None:
            while len(weights.shape) < len(mask.shape):
                weights = tf.expand_dims(weights, -1)
            weights = weights * mask
        return tf.reduce_sum(weights)
    if mask is not None:
        return tf.reduce_sum(mask)
    return batch_size


def regularization(model: keras.Model) -> tf.Tensor:
    """The regularization part of `compute_loss`, as Keras adds it (scaled across replicas)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    total = tf.add_n([tf.reduce_sum(tf.cast(loss, tf.float32)) for loss in model.losses])
    return total / replicas
