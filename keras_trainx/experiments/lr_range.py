"""The LR range test on the digits CNN of the warm-up sweep, at any effective batch.

The same task as `keras_trainx.experiments.warmup_sweep` (a fresh `build_cnn()`, SGD with momentum
0.9 and weight decay 5e-4, micro-batches of 64 accumulated into the effective batch B), so the rates
the test finds at each B can be set beside the rate the linear scaling rule gives that sweep,
`0.1 * B / 8`. The default sweep is short enough for CI (about 4 CPU-seconds at B=64 and 6 at B=384):
8 updates per decade from 0.01 to 10, smoothed over about 10 updates, stopped once the smoothed loss
doubles (a diverged CNN sits at the chance loss, ln 10 = 2.3, rather than growing without bound, so
4x its lowest value may never come).
"""

from typing import Any

import keras

from keras_trainx.experiments.digits import build_cnn, load_digits_standardized
from keras_trainx.planning.lr_range_test import LRRangeTestResult, lr_range_test
from keras_trainx.validation import check_float, check_int

#: The sweep `digits_lr_range_test` runs unless told otherwise (arguments of `lr_range_test`).
DIGITS_SWEEP: dict[str, Any] = {"min_learning_rate": 0.01, "max_learning_rate": 10.0, "num_updates": 24,
                                "smoothing": 0.9, "divergence_factor": 2.0}


def digits_lr_range_test(effective_batch_size: int, *, micro_batch: int = 64, seed: int = 0, momentum: float = 0.9,
                         weight_decay: float = 5e-4, **sweep: Any) -> LRRangeTestResult:
    """Runs `keras_trainx.planning.lr_range_test` on a fresh digits CNN at one effective batch size.

    Args:
        effective_batch_size: samples per update, a multiple of `micro_batch`.
        micro_batch: the micro-batch size, what BatchNorm sees (default 64, as in the warm-up sweep).
        seed: seeds the initialization and the shuffling (`keras.utils.set_random_seed`).
        momentum, weight_decay: of the SGD optimizer (defaults 0.9 and 5e-4, as in the warm-up sweep).
        **sweep: arguments of `lr_range_test` that replace those of `DIGITS_SWEEP`.

    Returns:
        The `LRRangeTestResult`.

    Example (a short sweep):

    >>> from keras_trainx.experiments import digits_lr_range_test
    >>> result = digits_lr_range_test(64, num_updates=3, max_learning_rate=0.1)
    >>> result.effective_batch_size, result.accum_steps, result.learning_rates.round(4).tolist()
    (64, 1, [0.01, 0.0316, 0.1])
    """
    micro_batch = check_int("micro_batch", micro_batch, minimum=1)
    effective_batch_size = check_int("effective_batch_size", effective_batch_size, minimum=micro_batch)
    if effective_batch_size % micro_batch:
        raise ValueError(
            f"`effective_batch_size` must be a multiple of micro_batch={micro_batch} (the effective batch is "
            f"micro_batch x accum_steps); received effective_batch_size={effective_batch_size}.")
    seed = check_int("seed", seed, minimum=0)
    momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0, exclusive_maximum=True)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    x_train, y_train, _, _ = load_digits_standardized()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_cnn()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum, weight_decay=weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lr_range_test(model, x_train, y_train, batch_size=micro_batch,
                         accum_steps=effective_batch_size // micro_batch, **{**DIGITS_SWEEP, **sweep})
