"""lr_range_test against least squares, whose Hessian is known from the data, and the model's state
restored bit for bit after a complete sweep, an early stop and an error.

Least squares with a linear model, MSE and plain SGD: the loss is (1/n) |A w - y|^2 with A = [x, 1],
its Hessian H = (2/n) A^T A, constant, with largest eigenvalue L (numpy, float64). When every window
holds the whole data set (32 x 8 = 256 samples), each update is a step of gradient descent, which
numpy reproduces in float64: an exact, independent reference for every recorded loss. Gradient
descent on this quadratic contracts every eigen-component while the rate is below 2/L and the
component along L grows by (rate * L - 1)^2 per update above it.

The band of the suggestions, derived from that:
- While every rate so far is below 2/L, each loss is below all earlier ones, hence below their
  weighted mean, the smoothed loss before it: the smoothed loss falls, cannot exceed 4 x its lowest
  value, and its minimum lies at a rate >= 2/L. So the sweep never stops before 2/L and
  "minimum/10" >= 0.2/L (proven).
- A useful suggestion is a stable rate: below 2/L, where gradient descent diverges. "minimum/10" <
  2/L holds when the smoothed minimum comes before 20/L: with the default sweep it came at
  12.9-15.9/L for condition numbers 5, 50 and 100 (measured, seeds 0-2), asserted below.
- fastai's "steepest" and "valley" rules are not offered: with the default sweep "steepest" reached
  2.47/L at condition number 100 and "valley" gave 0.009-0.04/L (set by min_learning_rate).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx

FEATURES, SAMPLES = 8, 256


def least_squares(seed):
    """Data with a condition number near 20, the design matrix A = [x, 1] and L."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(SAMPLES, FEATURES)) * np.linspace(0.5, 2.0, FEATURES)).astype("float32")
    y = (x @ rng.normal(size=(FEATURES, 1)) + 0.5 + 0.1 * rng.normal(size=(SAMPLES, 1))).astype("float32")
    design = np.c_[x.astype("float64"), np.ones(SAMPLES)]
    largest_eigenvalue = np.linalg.eigvalsh(2 / SAMPLES * design.T @ design)[-1]
    return x, y, design, largest_eigenvalue


def linear_model(seed, optimizer=None, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01), loss="mse", **compile_kwargs)
    return model


def parameters(model):
    kernel, bias = model.layers[0].kernel.numpy(), model.layers[0].bias.numpy()
    return np.r_[kernel[:, 0], bias].astype("float64")


def gradient_descent_losses(design, y, w, rates):
    """The loss before each full-batch gradient step at the given rates (float64)."""
    losses = []
    for rate in rates:
        residual = design @ w - y[:, 0]
        losses.append(np.mean(residual**2))
        w = w - rate * (2 / SAMPLES) * design.T @ residual
    return np.array(losses)


@pytest.mark.parametrize("batch_size, accum_steps, steps_per_execution", [(32, 8, 1), (64, 4, 3), (256, 1, 1)])
def test_each_loss_is_the_updates_big_batch_loss_at_the_swept_rate(batch_size, accum_steps, steps_per_execution):
    x, y, design, largest = least_squares(0)
    model = linear_model(0, steps_per_execution=steps_per_execution)
    w0 = parameters(model)
    result = keras_trainx.planning.lr_range_test(model, x, y, batch_size=batch_size, accum_steps=accum_steps,
                                                 min_learning_rate=1e-4, max_learning_rate=100.0)
    ran = len(result.losses)
    np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-4, 100.0, 100)[:ran], rtol=1e-12)
    reference = gradient_descent_losses(design, y, w0, result.learning_rates)
    # Up to the first update at a rate >= 2/L float32 follows float64; after it the diverging
    # component grows float32 rounding by (rate * L - 1)^2 per update.
    stable = int(np.argmax(result.learning_rates >= 2 / largest)) + 1
    np.testing.assert_allclose(result.losses[:stable], reference[:stable], rtol=1e-5)
    assert result.effective_batch_size == 256 and result.accum_steps == accum_steps
    assert result.stop_reason.startswith(f"stopped at update {ran}: the smoothed loss ")


def test_micro_batches_without_accumulation_measure_another_batch():
    """The same micro-batch of 32 with accum_steps=1: eight times the updates per epoch, other losses."""
    x, y, design, largest = least_squares(0)
    model = linear_model(0)
    w0 = parameters(model)
    result = keras_trainx.planning.lr_range_test(model, x, y, batch_size=32, min_learning_rate=1e-4,
                                                 max_learning_rate=100.0)
    reference = gradient_descent_losses(design, y, w0, result.learning_rates)
    stable = int(np.argmax(result.learning_rates >= 2 / largest))
    assert np.max(np.abs(result.losses[:stable] / reference[:stable] - 1)) > 0.05
    assert result.effective_batch_size == 32


def conditioned_least_squares(seed, condition):
    """Data whose Hessian H = (2/n) A^T A has the eigenvalues 2 (the bias) and 2 ... 2 * condition
    (geometric, the features: centred, orthogonal columns), so L = 2 * condition."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(SAMPLES, FEATURES))
    columns, _ = np.linalg.qr(raw - raw.mean(axis=0))
    x = (columns * np.sqrt(SAMPLES * np.geomspace(2.0, 2.0 * condition, FEATURES) / 2)).astype("float32")
    y = (x @ rng.normal(size=(FEATURES, 1)) + 0.5 + 0.1 * rng.normal(size=(SAMPLES, 1))).astype("float32")
    design = np.c_[x.astype("float64"), np.ones(SAMPLES)]
    return x, y, np.linalg.eigvalsh(2 / SAMPLES * design.T @ design)


@pytest.mark.parametrize("condition, seed", [(5, 2), (50, 0), (100, 0)])
def test_every_rule_lands_in_the_stable_band_with_the_default_sweep(condition, seed):
    """Measured over seeds 0, 1, 2 at each condition number: "minimum/10" at 1.29-1.59/L, the smoothed
    minimum at 12.9-15.9/L, the stop at 18.7-23.0/L (the cases here are each condition's extreme)."""
    x, y, eigenvalues = conditioned_least_squares(seed, condition)
    largest = eigenvalues[-1]
    assert np.isclose(largest / eigenvalues[0], condition)
    result = keras_trainx.planning.lr_range_test(linear_model(seed), x, y, batch_size=32, accum_steps=8)
    rates, smoothed = result.learning_rates, result.smoothed_losses
    assert 2 / largest <= rates[int(np.argmin(smoothed))] < 20 / largest  # the smoothed minimum
    assert list(result.suggestions) == list(keras_trainx.planning.RULES)
    for rule, rate in result.suggestions.items():
        assert 0.1 / largest <= rate < 2 / largest, rule


def test_smoothing_is_the_bias_corrected_weighted_mean_and_the_stop_the_first_divergence():
    x, y, _, _ = least_squares(0)
    result = keras_trainx.planning.lr_range_test(linear_model(0), x, y, batch_size=32, accum_steps=8,
                                                 min_learning_rate=1e-3, max_learning_rate=100.0, num_updates=50,
                                                 smoothing=0.9, divergence_factor=3.0)
    losses, beta = result.losses, 0.9
    for t in range(1, len(losses) + 1):
        weights = (1 - beta) * beta ** np.arange(t - 1, -1, -1)
        np.testing.assert_allclose(result.smoothed_losses[t - 1], weights @ losses[:t] / (1 - beta**t), rtol=1e-12)
    running_best = np.minimum.accumulate(result.smoothed_losses)
    diverged = result.smoothed_losses > 3.0 * running_best
    assert not diverged[:-1].any() and diverged[-1]


def test_the_sweep_continues_from_the_models_optimizer_state():
    """SGD with momentum 0.9, after 3 updates of its own: the sweep's updates use its momentum."""
    x, y, design, _ = least_squares(0)
    model = linear_model(0, optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    keras_trainx.fit_accumulated(model, x, y, batch_size=32, accum_steps=8, epochs=3, shuffle=False, verbose=0)
    w = parameters(model)
    kernel_momentum, bias_momentum = [v.numpy() for v in model.optimizer.variables if "momentum" in v.name]
    momentum = np.r_[kernel_momentum[:, 0], bias_momentum].astype("float64")
    result = keras_trainx.planning.lr_range_test(model, x, y, batch_size=32, accum_steps=8, min_learning_rate=1e-3,
                                                 max_learning_rate=1e-2, num_updates=3)
    expected, fresh = [], []
    w_fresh, momentum_fresh = w.copy(), np.zeros_like(w)
    for rate in result.learning_rates:
        for weights, velocity, losses in ((w, momentum, expected), (w_fresh, momentum_fresh, fresh)):
            residual = design @ weights - y[:, 0]
            losses.append(np.mean(residual**2))
            velocity *= 0.9
            velocity -= rate * (2 / SAMPLES) * design.T @ residual
            weights += velocity
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    assert abs(fresh[1] / expected[1] - 1) > 1e-2  # a fresh momentum would have given another loss


def test_a_dataset_of_micro_batches_gives_the_losses_of_the_arrays():
    x, y, _, _ = least_squares(0)
    sweep = dict(accum_steps=8, min_learning_rate=1e-4, max_learning_rate=100.0, num_updates=20)
    arrays = keras_trainx.planning.lr_range_test(linear_model(0), x, y, batch_size=32, **sweep)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    result = keras_trainx.planning.lr_range_test(linear_model(0), dataset, **sweep)
    np.testing.assert_allclose(result.losses, arrays.losses, rtol=1e-5)
    assert result.effective_batch_size is None and result.suggestions == arrays.suggestions


def test_a_sweep_that_diverges_at_once_suggests_nothing_and_says_why():
    x, y, _, largest = least_squares(0)
    with pytest.warns(UserWarning, match="too few updates before divergence to suggest a rate"):
        result = keras_trainx.planning.lr_range_test(linear_model(0), x, y, batch_size=32, accum_steps=8,
                                                     min_learning_rate=10 / largest, max_learning_rate=1e4 / largest)
    assert result.suggestions == {}
    assert result.stop_reason.endswith(
        f"; too few updates before divergence to suggest a rate: lower min_learning_rate={10 / largest:g}")


def test_plot_draws_the_losses_and_marks_each_suggestion():
    x, y, _, _ = least_squares(0)
    result = keras_trainx.planning.lr_range_test(linear_model(0), x, y, batch_size=32, accum_steps=8,
                                                 min_learning_rate=1e-4, max_learning_rate=100.0, num_updates=50)
    figure = result.plot()
    lines = figure.axes[0].get_lines()
    np.testing.assert_array_equal(lines[0].get_ydata(), result.losses)
    np.testing.assert_array_equal(lines[1].get_ydata(), result.smoothed_losses)
    assert [line.get_label() for line in lines[2:]] == [f"{rule}: {rate:.3g}" for rule, rate in
                                                         result.suggestions.items()]
    assert [line.get_xdata()[0] for line in lines[2:]] == list(result.suggestions.values())
    assert figure.axes[0].get_xscale() == "log"
    assert repr(result).startswith(f"LRRangeTestResult({len(result.losses)} updates from 0.0001 to ")


# --- the model's state, restored bit for bit ---------------------------------------------------------

def regression_model(optimizer):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    return model


def regression_data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(64, 4)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")


def failing_dataset(x, y, fail_at):
    """Micro-batches of 8; the `fail_at`-th raises (after several updates have run)."""
    def batches():
        for index in range(10**6):
            if index == fail_at:
                raise RuntimeError("injected failure")
            start = (8 * index) % len(x)
            yield x[start:start + 8], y[start:start + 8]
    signature = (tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 1), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


OPTIMIZERS = {
    "SGD with momentum, a rate variable": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "Adam with a schedule": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=3, decay_rate=0.5)),
    "AdamW with EMA and a keras_trainx schedule": lambda: keras.optimizers.AdamW(
        keras_trainx.schedules.OneCycle(1e-2, 100), weight_decay=0.01, use_ema=True),
}


@pytest.mark.parametrize("optimizer, ending", [
    ("SGD with momentum, a rate variable", "completes"), ("SGD with momentum, a rate variable", "diverges"),
    ("SGD with momentum, a rate variable", "fails"), ("Adam with a schedule", "fails"),
    ("AdamW with EMA and a keras_trainx schedule", "completes"),
])
def test_weights_optimizer_metrics_and_compiled_state_are_restored_bit_for_bit(optimizer, ending):
    model = regression_model(OPTIMIZERS[optimizer]())
    x, y = regression_data()
    keras_trainx.fit_accumulated(model, x, y, batch_size=8, accum_steps=2, epochs=1, verbose=0)
    variables = [*model.variables, *model.metrics_variables, *model.optimizer.variables]
    before = [np.array(v.numpy()) for v in variables]
    user_optimizer, config, rate = model.optimizer, model.optimizer.get_config(), float(model.optimizer.learning_rate)
    train_function, history = model.train_function, model.history
    arguments = {"completes": dict(x=x, y=y, batch_size=8, max_learning_rate=1e-3, num_updates=5),
                 "diverges": dict(x=x, y=y, batch_size=8, max_learning_rate=1e6, num_updates=40),
                 "fails": dict(x=failing_dataset(x, y, fail_at=9), max_learning_rate=1e-3, num_updates=20)}[ending]
    if ending == "fails":
        with pytest.raises(Exception, match="injected failure"):
            keras_trainx.planning.lr_range_test(model, accum_steps=2, **arguments)
    else:
        result = keras_trainx.planning.lr_range_test(model, accum_steps=2, **arguments)
        assert result.stop_reason.startswith("ran all" if ending == "completes" else "stopped at update")
    assert [*model.variables, *model.metrics_variables, *model.optimizer.variables] == variables
    for variable, value in zip(variables, before):
        assert np.array_equal(variable.numpy(), value), variable.path
    assert model.optimizer is user_optimizer and model.optimizer.get_config() == config
    assert float(model.optimizer.learning_rate) == rate
    assert model.train_function is train_function and model.history is history
    assert model.steps_per_execution == 1 and model.stop_training is False


def test_under_mirrored_strategy_the_sweep_equals_the_single_device_one():
    x, y, _, largest = least_squares(0)
    sweep = dict(batch_size=32, accum_steps=8, min_learning_rate=1e-3, max_learning_rate=10.0, num_updates=20)
    single = keras_trainx.planning.lr_range_test(linear_model(0), x, y, **sweep)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = linear_model(0)
    variables = [*model.variables, *model.optimizer.variables]
    before = [np.array(v.numpy()) for v in variables]
    mirrored = keras_trainx.planning.lr_range_test(model, x, y, **sweep)
    stable = int(np.argmax(single.learning_rates >= 2 / largest)) + 1
    np.testing.assert_allclose(mirrored.losses[:stable], single.losses[:stable], rtol=1e-5)
    for variable, value in zip(variables, before):
        assert np.array_equal(variable.numpy(), value), variable.path


# --- a user's own schedule, and curves or data that support no suggestion ------------------------------

class UnregisteredSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A user's schedule with get_config, not registered with Keras."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, step):
        return self.rate * 0.5 ** (keras.ops.cast(step, "float32") / 10)

    def get_config(self):
        return {"rate": self.rate}


class ScheduleWithoutConfig(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return 0.1


@pytest.mark.parametrize("make_optimizer", [
    lambda: keras.optimizers.SGD(UnregisteredSchedule(0.1), momentum=0.9),
    lambda: keras.optimizers.SGD(ScheduleWithoutConfig(), momentum=0.9),
    lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)),
], ids=["unregistered-schedule", "schedule-without-get-config", "loss-scale-optimizer"])
def test_the_sweep_does_not_depend_on_the_users_rate(make_optimizer):
    """The sweep sets the copy's rate, so the sweep with a user's own schedule (or a LossScaleOptimizer,
    whose power-of-two scaling is exact) equals the one with a float rate, and the user's optimizer
    keeps its rate."""
    x, y, _, _ = least_squares(0)
    sweep = dict(batch_size=32, accum_steps=8, min_learning_rate=1e-3, max_learning_rate=100.0, num_updates=20)
    reference = keras_trainx.planning.lr_range_test(
        linear_model(0, optimizer=keras.optimizers.SGD(0.01, momentum=0.9)), x, y, **sweep)
    model = linear_model(0, optimizer=make_optimizer())
    result = keras_trainx.planning.lr_range_test(model, x, y, **sweep)
    np.testing.assert_array_equal(result.losses, reference.losses)
    assert result.suggestions == reference.suggestions != {}
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)  # its rate at step 0
    assert int(model.optimizer.iterations) == 0


def sweep_warning(model, x, y=None, **arguments):
    """The sweep's stop reason, after checking it suggests nothing and warns with that reason (and its result)."""
    with pytest.warns(UserWarning) as caught:
        result = keras_trainx.planning.lr_range_test(model, x, y, **arguments)
    assert result.suggestions == {}
    (message,) = [str(w.message) for w in caught if str(w.message).startswith("lr_range_test")]
    assert message == f"lr_range_test {result.stop_reason}."
    return result.stop_reason, result


NEVER_FELL = ("the smoothed loss did not fall ({}), so no rate is suggested: either this loss does not fall at "
              "any rate (targets the inputs do not predict, a loss that is 0 already) or every rate of the sweep "
              "is too high (lower min_learning_rate=1e-07)")


def test_a_loss_of_exactly_zero_never_falls():
    x, _, _, _ = least_squares(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    reason, _ = sweep_warning(model, x, np.zeros((SAMPLES, 1), "float32"), batch_size=32, accum_steps=8,
                           num_updates=30)
    assert reason == "ran all 30 updates; " + NEVER_FELL.format(
        f"its lowest value is at update 4 (rate {np.geomspace(1e-7, 10.0, 30)[3]:.3g}), among the first 3 the "
        "rule reads")


def test_pure_noise_targets_fall_by_less_than_their_noise():
    """Targets independent of x, windows of 16 of 256 samples: the loss varies from window to window by
    more than it ever falls (before, its minimum, placed by noise at update 26, gave minimum/10=1e-6)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 4)).astype("float32"), rng.normal(size=(256, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    reason, result = sweep_warning(model, x, y, batch_size=16)
    smoothed, lowest = result.smoothed_losses[10:], int(np.argmin(result.smoothed_losses[10:]))
    second_differences = np.abs(np.diff(result.losses[10:11 + lowest], n=2))
    noise = np.median(second_differences) / (0.6745 * np.sqrt(6))  # one loss' standard deviation
    fall = smoothed[0] - smoothed[lowest]
    assert fall < noise and reason.endswith("; " + NEVER_FELL.format(
        f"it fell by {fall:.3g} to its lowest value, no more than the loss varies from one update to the next "
        f"({noise:.3g})"))


def test_a_sweep_that_ends_too_low_never_turns_up():
    x, y, _, largest = least_squares(0)
    reason, _ = sweep_warning(linear_model(0), x, y, batch_size=32, accum_steps=8, max_learning_rate=0.01 / largest,
                           num_updates=30)
    assert reason == (f"ran all 30 updates; the smoothed loss still fell at the last update (rate "
                      f"{0.01 / largest:g}): the sweep never reached the rates where training diverges, so no "
                      f"rate is suggested; raise max_learning_rate={0.01 / largest:g}")


def test_a_non_finite_first_loss_blames_the_data_not_the_rate():
    x, y, _, _ = least_squares(0)
    x = x.copy()
    x[3, 2] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    reason, _ = sweep_warning(linear_model(0), dataset, accum_steps=8, num_updates=10)
    assert reason == ("stopped at update 1: the loss is nan; the loss of update 1, computed before any update, is "
                      "nan: the data or the model's initial weights give a non-finite loss, which no learning rate "
                      "changes; check them for NaN and inf")


@pytest.mark.parametrize("make_data, message", [
    (lambda x, y: dict(x=np.where(np.arange(SAMPLES)[:, None] == 5, np.nan, x), y=y, batch_size=32),
     "`x` holds values that are not finite (NaN or inf) in 1 sample, the first at index 5: their loss is not finite "
     "at any learning rate. Remove or repair those samples."),
    (lambda x, y: dict(x=x, y=np.where(np.arange(SAMPLES)[:, None] % 100 == 7, np.inf, y), batch_size=32),
     "`y` holds values that are not finite (NaN or inf) in 3 samples, the first at index 7: their loss is not "
     "finite at any learning rate. Remove or repair those samples."),
    (lambda x, y: dict(x=x, y=y, batch_size=32, accum_steps=10**9),
     "`batch_size` x `accum_steps` (the effective batch, 32 x 1000000000 = 32000000000) must be at most the 256 "
     "samples of `x`: an update holds one effective batch, which would repeat samples. Pass more data, or a "
     "smaller batch_size or accum_steps."),
    (lambda x, y: dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(32), accum_steps=10**9),
     "`accum_steps` must be at most the 8 micro-batches of the dataset `x` (an update holds accum_steps of them; "
     "more would repeat micro-batches within one update); received accum_steps=1000000000."),
    (lambda x, y: dict(x=tf.data.Dataset.from_tensor_slices((x, y)), accum_steps=8),
     "`x` must be a tf.data.Dataset of micro-batches; its elements are single samples (shapes (8,), (1,) share no "
     "leading batch dimension). Batch it: x.batch(micro_batch_size)."),
    (lambda x, y: dict(x=tf.data.Dataset.from_tensor_slices((x, y[:, 0])), accum_steps=8),
     "`x` must be a tf.data.Dataset of micro-batches; its elements are single samples (shapes (8,), () share no "
     "leading batch dimension). Batch it: x.batch(micro_batch_size)."),
], ids=["nan-in-x", "inf-in-y", "window-beyond-the-data", "window-beyond-the-dataset", "unbatched",
        "unbatched-scalar-labels"])
def test_data_that_no_rate_can_fix_is_refused_before_training(make_data, message):
    x, y, _, _ = least_squares(0)
    model = linear_model(0)
    with pytest.raises(ValueError) as error:
        keras_trainx.planning.lr_range_test(model, **make_data(x, y))
    assert str(error.value) == message
    assert int(model.optimizer.iterations) == 0
