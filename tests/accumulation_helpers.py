"""Shared builders for the fit_accumulated tests: small seeded models and a weight comparison."""

import keras
import numpy as np


def regression_data(n=27, features=5, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.normal(size=(n, outputs)).astype("float32")
    weights = rng.uniform(0.1, 2.0, size=n).astype("float32")
    return x, y, weights


def regression_model(optimizer, features=5, outputs=2, seed=1, **compile_kwargs):
    """A two-layer MLP with an L2 kernel regularizer, identical for equal seeds."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(6, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Dense(outputs),
        ]
    )
    compile_kwargs.setdefault("loss", "mse")
    compile_kwargs.setdefault("metrics", ["mae"])
    model.compile(optimizer=optimizer, **compile_kwargs)
    return model


def assert_equals_big_batch(build, x, y, sample_weight, micro, accum_steps, epochs=2):
    """Trains `build()` with fit_accumulated and a second `build()` with `Model.fit` at the big batch
    (`micro * accum_steps`), unshuffled; asserts equal weights (1e-6) and loss histories (1e-5)."""
    import keras_trainx

    reference = build()
    expected = reference.fit(x, y, sample_weight=sample_weight, batch_size=micro * accum_steps,
                             epochs=epochs, shuffle=False, verbose=0)
    accumulated = build()
    history = keras_trainx.fit_accumulated(accumulated, x, y, sample_weight=sample_weight,
                                           batch_size=micro, accum_steps=accum_steps,
                                           epochs=epochs, shuffle=False, verbose=0)
    assert max_weight_difference(reference, accumulated) < 1e-6
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


def max_weight_difference(model_a, model_b):
    return max(
        float(np.max(np.abs(a - b))) for a, b in zip(model_a.get_weights(), model_b.get_weights())
    )


def dense_gradient_adamw(**kwargs):
    """`keras.optimizers.AdamW(**kwargs)` that densifies every gradient before its update.

    Under the TensorFlow backend an Embedding's gradient is a `tf.IndexedSlices` with one slice per
    token occurrence, and Keras' AdamW squares the slices before duplicates are summed; densified,
    the update is standard AdamW (what Keras' JAX backend and fit_accumulated compute). A big-batch
    `Model.fit` with this optimizer is the reference for models whose sparse gradients repeat rows.
    """
    import tensorflow as tf

    class DenseGradientAdamW(keras.optimizers.AdamW):
        def apply(self, grads, trainable_variables=None):
            grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
            return super().apply(grads, trainable_variables)

    return DenseGradientAdamW(**kwargs)
