"""How a micro-batch's loss enters the big-batch loss: its parts, and the count each is divided by.

Keras reduces a batch's weighted per-element losses to `L = sum / c`, where the divisor `c` depends on
the loss' reduction: the number of samples (`"sum_over_batch_size"`, `"mean"`), the number of
unmasked elements for a masked output, the sum of the sample weights (`"mean_with_sample_weight"`),
1 (`"sum"`), or what a custom `compute_loss` reports with `keras_trainx.set_loss_divisor`. A window of
micro-batches `i` equals one big batch when its gradient is `sum_i c_i * grad(L_i) / sum_i c_i`.

`compute_loss` adds to `L` the losses layers add (`model.losses`), and each kind grows with the batch
in its own way, so each enters the window with its own count:

| part | the big batch's value | accumulated | divided by |
|---|---|---|---|
| compiled loss, weight penalties | `sum / C` of the window | `c_i * L_i` | `C = sum_i c_i` |
| `activity_regularizer` (Keras divides it by its batch size) | a mean over samples | `n_i * a_i` | `N`, the window's samples |
| `add_loss` in `call` of a term of the inputs (a sum over its batch, as Keras' `add_loss(ops.sum(x))`) | the window's sum | `s_i` | 1 |
| `add_loss` in `call` of a term with no input in it (`add_loss(ops.sum(self.kernel ** 2))`) | the term, once | as weight penalties | as weight penalties |

Weight penalties do not depend on the batch: weighted by `c_i / C` they count once per update (with
`"sum"`, where `C = 1`, only the first micro-step keeps them). An `add_loss` term whose traced graph
has no path from the model's inputs (`keras_trainx.accumulation.input_dependence`) is one of them.
Parts whose divisors coincide for the compiled reduction share one accumulator.
"""

import dataclasses

import keras
import tensorflow as tf

from keras_trainx import compat
from keras_trainx.accumulation.loss_divisor import LossDivisor

DIVISOR, SAMPLES, ONE = "divisor", "samples", "one"

# Kinds of the losses layers add in their call: an activity_regularizer's (a mean over the batch),
# an add_loss term of the inputs (a sum over the batch), an add_loss term without them (a constant).
ACTIVITY, BATCH_SUM, INPUT_FREE = "activity", "batch_sum", "input_free"

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


@dataclasses.dataclass
class LossParts:
    """A micro-batch's loss split by divisor: for each accumulator group, `(objective, weight)`.

    The group's gradient sum gains `weight * grad(objective)`; at the update it is divided by the
    window's total of the group's counts (`DIVISOR`: `C`, `SAMPLES`: `N`, `ONE`: 1); `divisor` is
    this micro-batch's `c_i`. `weight * objective` is the micro-batch's contribution to the
    numerator of the big batch's loss, per group. The `DIVISOR` group's weight is `c_i`, except
    where `set_loss_divisor(count, divided_by)` says the loss was divided by another number.
    """

    groups: dict[str, tuple[tf.Tensor, tf.Tensor]]
    divisor: tf.Tensor


def split_loss(model: keras.Model, reduction: str, loss: tf.Tensor, y_pred: object,
               sample_weight: object, batch_size: tf.Tensor, first: tf.Tensor,
               recorded_divisors: list[LossDivisor], added: list[tuple[tf.Tensor, str]]) -> LossParts:
    """Splits a micro-step's `compute_loss` value into the parts the big batch divides differently.

    Args:
        model: the compiled model, just called on the micro-batch (its layers hold their losses).
        reduction: as returned by `loss_reduction`.
        loss: what `model.compute_loss` returned, unscaled for distribution (except with `"sum"`,
            which Keras does not scale).
        y_pred: the model's predictions (a masked output carries its Keras mask).
        sample_weight: the micro-batch's sample weights, or None.
        batch_size: the micro-batch's (this replica's) number of samples, an int32 scalar.
        first: a boolean scalar: whether this is the window's first micro-step.
        recorded_divisors: what a custom `compute_loss` gave `set_loss_divisor`.
        added: the losses the model's layers added in this call, each with its kind (`ACTIVITY`,
            `BATCH_SUM` or `INPUT_FREE`); ignored with an overridden `compute_loss`.
    """
    samples = tf.cast(batch_size, tf.float32)
    loss = tf.cast(loss, tf.float32)
    if recorded_divisors:
        if len(recorded_divisors) > 1:
            raise ValueError(
                f"compute_loss called keras_trainx.set_loss_divisor {len(recorded_divisors)} times for "
                "one micro-batch; call it once, with the count the returned loss was divided by."
            )
        return _reported_parts(loss, recorded_divisors[0])
    if reduction == "sum":
        divisor = tf.constant(1.0)
    else:
        divisor = tf.cast(micro_batch_divisor(reduction, y_pred, sample_weight, batch_size), tf.float32)
    if type(model).compute_loss is not keras.Model.compute_loss:
        return LossParts({DIVISOR: (loss, divisor)}, divisor)  # its added losses: unknown to us

    by_kind: dict[str, list[tf.Tensor]] = {ACTIVITY: [], BATCH_SUM: [], INPUT_FREE: []}
    for term, kind in added:
        by_kind[kind].append(tf.reduce_sum(tf.cast(term, tf.float32)))
    activity, summed = by_kind[ACTIVITY], by_kind[BATCH_SUM]
    # `loss` holds the added losses as Keras adds them: unscaled here, except with "sum", whose
    # compiled loss Keras does not divide across replicas while it still divides the added ones.
    # Input-free terms stay in it, with the weight penalties.
    scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync if reduction == "sum" else 1.0
    main = loss - scale * tf.add_n([*activity, *summed]) if activity or summed else loss
    if reduction == "sum" and model.losses:
        once = tf.add_n([_weight_penalties(model), *by_kind[INPUT_FREE]])
        main -= scale * once * (1.0 - tf.cast(first, tf.float32))
    groups = {DIVISOR: [main, divisor]}
    divides_by_samples = (reduction != "sum" and not _masked(y_pred)
                          and (reduction in MEAN_REDUCTIONS or sample_weight is None))
    for parts, group, weight, joins in ((activity, SAMPLES, samples, divides_by_samples),
                                        (summed, ONE, tf.constant(1.0), reduction == "sum")):
        if not parts:
            continue
        if joins:  # this group's count equals the compiled reduction's: one accumulator serves
            groups[DIVISOR][0] = groups[DIVISOR][0] + tf.add_n(parts)
        else:
            groups[group] = [tf.add_n(parts), weight]
    return LossParts({name: (objective, weight) for name, (objective, weight) in groups.items()}, divisor)


def _reported_parts(loss: tf.Tensor, reported: LossDivisor) -> LossParts:
    """The parts of a loss whose `compute_loss` called `set_loss_divisor`, its values checked."""
    count, divided_by = reported.count, reported.divided_by
    checks = [
        tf.debugging.Assert(tf.logical_and(tf.math.is_finite(count), count >= 0.0), [
            "keras_trainx.set_loss_divisor: `count` must be finite and >= 0; received", count]),
        tf.debugging.Assert(tf.logical_and(tf.math.is_finite(divided_by), divided_by >= 0.0), [
            "keras_trainx.set_loss_divisor: `divided_by` must be finite and >= 0; received", divided_by]),
        tf.debugging.Assert(tf.logical_or(divided_by > 0.0, tf.equal(loss, 0.0)), [
            "keras_trainx.set_loss_divisor: compute_loss returned a non-zero loss for a micro-batch "
            "whose count is 0, which would train nothing. Divide the summed loss by "
            "maximum(count, 1) and pass divided_by=maximum(count, 1); loss:", loss]),
    ]
    with tf.control_dependencies(checks):
        divided_by = tf.identity(divided_by)
    return LossParts({DIVISOR: (loss, divided_by)}, count)


def _masked(y_pred: object) -> bool:
    return any(compat.keras_mask(t) is not None for t in tf.nest.flatten(y_pred))


def _weight_penalties(model: keras.Model) -> tf.Tensor:
    """The weight-regularization part of `compute_loss`: penalties on the trainable variables."""
    penalties = [tf.reduce_sum(tf.cast(v.regularizer(v), tf.float32))
                 for v in model.trainable_weights if getattr(v, "regularizer", None) is not None]
    return tf.add_n(penalties) if penalties else tf.constant(0.0)
