"""GradientNoiseScale against the closed form of a least-squares model's per-sample gradients.

A linear model `x . w` (no bias) under the mean squared error, with `x ~ N(0, I_D)` and
`y = x . w* + e`, `e ~ N(0, s^2)`, held still (learning rate 0) at `w`: with `d = w - w*` the
per-sample gradient is `2 (x . d - e) x`, so `G = 2 d` and `tr(Sigma) = 4 ((D + 1)|d|^2 + s^2 D)`
(Gaussian fourth moments). The estimates are checked against those of the generated samples
themselves (which also hold the sampling error of the data set), within 5%: over 1,024 updates the
estimator's own spread, measured over seeds, is about 1-2%.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from keras_trainx.planning import GradientNoiseScale

D, NOISE, SAMPLES = 4, 0.5, 32768


def _least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, D)).astype("float32")
    w_star = rng.normal(size=(D, 1)).astype("float32")
    y = x @ w_star + NOISE * rng.normal(size=(SAMPLES, 1)).astype("float32")
    return x, y, w_star


def _still_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def _exact(model, x, y, w_star):
    w = model.get_weights()[0]
    d = (w - w_star)[:, 0]
    closed_form = ((D + 1) * d @ d + NOISE**2 * D) / (d @ d)
    per_sample = 2.0 * (x @ w - y) * x
    mean = per_sample.mean(axis=0)
    trace = ((per_sample - mean) ** 2).sum(axis=1).mean()
    return trace, mean @ mean, closed_form


@pytest.mark.parametrize("micro, accum_steps", [(8, 4), (16, 2)])
def test_estimates_match_the_exact_noise_scale_of_least_squares(micro, accum_steps):
    x, y, w_star = _least_squares()
    model = _still_model()
    trace, squared_gradient, closed_form = _exact(model, x, y, w_star)
    assert trace / squared_gradient == pytest.approx(closed_form, rel=0.02)  # the data set's own
    noise = GradientNoiseScale(smoothing=0.999)
    history = keras_trainx.fit_accumulated(model, x, y, batch_size=micro, accum_steps=accum_steps,
                                           callbacks=[noise], verbose=0)
    assert noise.updates == SAMPLES // (micro * accum_steps)
    assert noise.trace == pytest.approx(trace, rel=0.05)
    assert noise.squared_gradient == pytest.approx(squared_gradient, rel=0.05)
    assert noise.noise_scale == pytest.approx(trace / squared_gradient, rel=0.05)
    assert history.history["gradient_noise_scale"] == [noise.noise_scale]


def test_under_mirrored_strategy_each_replica_estimates_and_the_average_holds():
    x, y, w_star = _least_squares()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = _still_model()
    trace, squared_gradient, _ = _exact(model, x, y, w_star)
    noise = GradientNoiseScale(smoothing=0.999)
    keras_trainx.fit_accumulated(model, x, y, batch_size=16, accum_steps=4, callbacks=[noise], verbose=0)
    assert noise.trace == pytest.approx(trace, rel=0.05)
    assert noise.squared_gradient == pytest.approx(squared_gradient, rel=0.05)


def test_windows_of_one_micro_batch_give_no_estimate_and_smoothing_is_debiased():
    noise = GradientNoiseScale(smoothing=0.5)
    names = keras_trainx.accumulation.WindowStatistics(0, replicas=2)
    window = np.zeros(names.size)
    rows = window[names.noise].reshape(2, -1)  # a view: columns as WindowStatistics.NOISE
    rows[:, :4] = [[1.0, 0.5, 1.0, 2.0], [1.0, 0.5, 1.0, 2.0]]  # one micro-batch of 2 per replica
    noise.update(window, names)
    assert noise.updates == 0 and np.isnan(noise.noise_scale)
    # micro-batches of 2 and 6 (h = 1/3, B = 8): a = 2 * 5 / 2 = 5 and |G_B|^2 = 2 * 4 / 2**2 = 2 give
    # tr = (5 - 2) / (1/3 - 1/8) = 14.4 and |G|^2 = 2 - 14.4 / 8 = 0.2; the other replica's window
    # of one micro-batch counts for nothing
    rows[0] = [5.0, 0.5 + 1 / 6, 2.0, 8.0, 2.0, 4.0]
    noise.update(window, names)
    assert (noise.trace, noise.squared_gradient) == pytest.approx((14.4, 0.2), rel=1e-12)
    rows[1] = [3.0, 0.5, 2.0, 8.0, 1.0, 1.5]  # a = 3, h = 1/4, |G_B|^2 = 3: tr = 0, |G|^2 = 3
    noise.update(window, names)
    # the two replicas' estimates averaged, (7.2, 1.6), in a debiased EMA after two updates:
    # (0.5 * 0.5 * 14.4 + 0.5 * 7.2) / (1 - 0.25) and (0.5 * 0.5 * 0.2 + 0.5 * 1.6) / (1 - 0.25)
    assert noise.trace == pytest.approx(7.2 / 0.75)
    assert noise.squared_gradient == pytest.approx(0.85 / 0.75)
    noise = GradientNoiseScale(smoothing=0.0)  # the last estimate alone
    rows[0] = rows[1] = [1.0, 0.5, 2.0, 8.0, 1.0, 2.0]  # a = 1, |G_B|^2 = 4: tr = -24, |G|^2 = 7
    noise.update(window, names)
    assert (noise.trace, noise.squared_gradient) == (-24.0, 7.0)
    rows[0] = rows[1] = [13.0, 0.5, 2.0, 8.0, 1.0, 2.5]  # a = 13, |G_B|^2 = 5: tr = 64, |G|^2 = -3
    noise.update(window, names)
    assert noise.noise_scale == float("inf")


@pytest.mark.parametrize("samples, accum_steps, nan_epochs", [(8, 4, 3), (64, {0: 1, 2: 4}, 2)],
                         ids=["data-smaller-than-a-window", "schedule-at-1"])
def test_epochs_without_an_estimate_warn_once(samples, accum_steps, nan_epochs):
    """Windows of one micro-batch give no estimate: the NaN epochs come with one warning saying why."""
    x, y, _ = _least_squares()
    with pytest.warns(UserWarning) as caught:
        history = keras_trainx.fit_accumulated(_still_model(), x[:samples], y[:samples], batch_size=8,
                                               accum_steps=accum_steps, epochs=3, callbacks=[GradientNoiseScale()],
                                               verbose=0)
    values = history.history["gradient_noise_scale"]
    assert np.isnan(values[:nan_epochs]).all() and np.isfinite(values[nan_epochs:]).all()
    assert [str(w.message) for w in caught if "GradientNoiseScale" in str(w.message)] == [
        "GradientNoiseScale has no estimate after epoch 1: every window so far held a single micro-batch "
        "(accum_steps of 1 in this epoch, or less data than two micro-batches), which gives no second batch size, "
        "so gradient_noise_scale is NaN until a window holds two."]


def test_misuse_is_refused_with_the_fix():
    x, y, _ = _least_squares()
    model = _still_model()
    with pytest.raises(ValueError, match="needs accum_steps >= 2; received accum_steps=1"):
        keras_trainx.fit_accumulated(model, x[:64], y[:64], batch_size=8, accum_steps=1,
                                     callbacks=[GradientNoiseScale()], verbose=0)
    with pytest.raises(RuntimeError, match="has nothing to measure in model.fit"):
        model.fit(x[:64], y[:64], callbacks=[GradientNoiseScale()], verbose=0)
    with pytest.raises(ValueError, match=r"^`smoothing` must be a number >= 0.0 and < 1.0; received smoothing=1"):
        GradientNoiseScale(smoothing=1)


def test_every_nth_update_is_the_same_estimator_over_the_measured_windows_alone():
    x, y, _ = _least_squares()
    micro, accum_steps, every = 8, 4, 3
    window = micro * accum_steps
    x, y = x[:window * 96], y[:window * 96]
    sparse = GradientNoiseScale(smoothing=0.9, every=every)
    keras_trainx.fit_accumulated(_still_model(), x, y, batch_size=micro, accum_steps=accum_steps,
                                 shuffle=False, callbacks=[sparse], verbose=0)
    # the measured updates are 0, 3, 6, ...: the same run on their windows alone, measuring each
    measured = np.arange(len(x)).reshape(-1, window)[::every].ravel()
    dense = GradientNoiseScale(smoothing=0.9)
    keras_trainx.fit_accumulated(_still_model(), x[measured], y[measured], batch_size=micro,
                                 accum_steps=accum_steps, shuffle=False, callbacks=[dense], verbose=0)
    assert sparse.updates == dense.updates == 32
    assert (sparse.trace, sparse.squared_gradient) == (dense.trace, dense.squared_gradient)
    assert GradientNoiseScale(**sparse.get_config()).get_config() == {"smoothing": 0.9, "every": every}
    with pytest.raises(ValueError, match=r"^`every` must be an int >= 1; received every=0. Use 1 to"):
        GradientNoiseScale(every=0)


@pytest.mark.parametrize("one_micro_step", [False, True], ids=["weighted", "unweighted-first"])
@pytest.mark.parametrize("groups", [1, 2])
def test_window_norm_parts_give_the_window_gradient_norm(groups, one_micro_step):
    from keras_trainx.accumulation.accumulators import Accumulators
    from keras_trainx.accumulation.loss_normalization import DIVISOR, SAMPLES

    rng = np.random.default_rng(0)
    variables = [tf.Variable(np.zeros((3, 2), "float32")), tf.Variable(np.zeros(4, "float32"))]
    sums = Accumulators(tf.distribute.get_strategy(), variables, 1)
    first = [rng.normal(size=v.shape).astype("float32") for v in variables]
    # a window of one micro-step holds its gradient unweighted (step 0); else each sum is weighted
    step, micro_steps = (tf.constant(0), tf.constant(1)) if one_micro_step else (tf.constant(1), tf.constant(2))
    sums.add(DIVISOR, [tf.constant(g) for g in first], tf.constant(2.0), step)
    window = [2.0 * g.astype("float64") / 5.0 for g in first]
    if groups == 2:
        sums.add_group(SAMPLES)
        second = rng.normal(size=(3, 2)).astype("float32")
        sums.add(SAMPLES, [tf.constant(second), None], tf.constant(3.0), step)
        window[0] = window[0] + 3.0 * second / 8.0
    half, divisor = sums.window_norm_parts({DIVISOR: tf.constant(5.0), SAMPLES: tf.constant(8.0)}, micro_steps)
    norm = 2.0 * float(half) / float(divisor) ** 2
    assert norm == pytest.approx(sum(float((w ** 2).sum()) for w in window), rel=1e-6)
