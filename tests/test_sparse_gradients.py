"""Sparse embedding gradients: fit_accumulated follows standard Adam, as Keras' JAX backend does.

Under the TensorFlow backend an Embedding's gradient reaches the optimizer as `tf.IndexedSlices`
with one slice per token occurrence. Keras' Adam, AdamW, RMSprop and Adagrad square those slices
before the duplicates of a repeated token are summed, so their second moment holds the sum of the
squares where standard Adam (a dense gradient) holds the square of the sum. fit_accumulated adds every
gradient into a dense accumulator, so its optimizer always sees the dense gradient, also with
`accum_steps=1`.

The reference here is independent of fit_accumulated: a compiled big-batch step written with
`tf.GradientTape` that densifies the gradient (`tf.convert_to_tensor`) before
`optimizer.apply_gradients`, on an identically seeded model; without the densifying it reproduces
`Model.fit` bit for bit (tested below), so densifying is the only difference.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_trainx
from accumulation_helpers import dense_gradient_adamw, max_weight_difference
from sparse_embedding_model import (EPOCHS, OPTIMIZERS, build, optimizer, repeated_tokens,
                                    unique_tokens)

HERE = os.path.dirname(os.path.abspath(__file__))


def _big_batch_steps(name, x, y, batch, densify=True):
    """`EPOCHS` epochs of unshuffled big-batch steps, the gradient densified or not."""
    model = build(optimizer(name))

    @tf.function
    def step(x_batch, y_batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x_batch, y_batch, model(x_batch, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        if densify:
            gradients = [tf.convert_to_tensor(gradient) for gradient in gradients]
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    for _ in range(EPOCHS):
        for start in range(0, len(x), batch):
            step(tf.constant(x[start:start + batch]), tf.constant(y[start:start + batch]))
    return model


def _model_fit(name, x, y, batch):
    model = build(optimizer(name))
    model.fit(x, y, batch_size=batch, epochs=EPOCHS, shuffle=False, verbose=0)
    return model


def test_the_reference_without_densifying_is_model_fit_bit_for_bit():
    x, y = repeated_tokens()
    assert max_weight_difference(_big_batch_steps("adam", x, y, 9, densify=False),
                                 _model_fit("adam", x, y, 9)) == 0.0


def test_model_fit_with_the_densifying_adamw_of_the_keras_hub_tests_is_the_reference():
    """tests/test_keras_hub_families.py uses `dense_gradient_adamw` in a task's own `fit` as its
    densified reference; it computes what the reference here computes."""
    x, y = repeated_tokens()
    model = build(dense_gradient_adamw(**OPTIMIZERS["adamw"][1]))
    model.fit(x, y, batch_size=9, epochs=EPOCHS, shuffle=False, verbose=0)
    assert max_weight_difference(model, _big_batch_steps("adamw", x, y, 9)) == 0.0


# 27 samples. (9, 1): 3 updates of 9 per epoch. (5, 2): windows 5+5, 5+5, 5+2. (4, 3): windows
# 4+4+4, 4+4+4 and a last one of a single micro-batch of 3.
@pytest.mark.parametrize("micro, accum_steps", [(9, 1), (5, 2), (4, 3)])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fit_accumulated_equals_the_big_batch_with_the_gradient_densified(name, micro, accum_steps):
    x, y = repeated_tokens()
    reference = _big_batch_steps(name, x, y, micro * accum_steps)
    accumulated = build(optimizer(name))
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=micro, accum_steps=accum_steps,
                                 epochs=EPOCHS, shuffle=False, verbose=0)
    assert int(accumulated.optimizer.iterations) == int(reference.optimizer.iterations)
    # Measured, at (9, 1), (5, 2), (4, 3): Adam 8.2e-8, 7.0e-7, 5.2e-7; AdamW 3.0e-8, 6.7e-7,
    # 5.1e-7; RMSprop 2.1e-7, 3.6e-7, 7.2e-7; Adagrad 1.5e-8, 6.0e-8, 1.8e-7. Summing micro-batch
    # gradients rounds differently from the big batch's one sum; the normalized optimizers magnify
    # that where an entry's gradient is small: Adam's first update is
    # lr * g / (|g| + 3.2e-6), so at lr 0.05 an entry with |g| near 3e-6 moves by up to
    # lr / (4 * 3.2e-6) = 4,000 times the rounding difference.
    assert max_weight_difference(reference, accumulated) <= 2e-6


def test_keras_tensorflow_adam_takes_the_sum_of_squared_occurrences_as_second_moment():
    """One Adam step, by formula: Model.fit squares each occurrence's slice, fit_accumulated the sum."""
    x, y = repeated_tokens(samples=9)
    model = build(optimizer("adam"))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=True))
    gradient = tape.gradient(loss, model.trainable_variables[0])
    assert isinstance(gradient, tf.IndexedSlices)
    rows, slices = gradient.indices.numpy(), gradient.values.numpy()
    assert len(rows) == x.size  # one slice per token occurrence
    summed, sum_of_squares = np.zeros((2,) + tuple(gradient.dense_shape.numpy()), "float64")
    np.add.at(summed, rows, slices)
    np.add.at(sum_of_squares, rows, slices.astype("float64") ** 2)

    def adam_step(second_moment_source):  # Keras' Adam after one step, from zero moments
        learning_rate, beta_1, beta_2, epsilon = 0.05, 0.9, 0.999, 1e-7
        momentum, velocity = (1 - beta_1) * summed, (1 - beta_2) * second_moment_source
        alpha = learning_rate * np.sqrt(1 - beta_2) / (1 - beta_1)
        return model.get_weights()[0] - alpha * momentum / (np.sqrt(velocity) + epsilon)

    fit = build(optimizer("adam"))
    fit.fit(x, y, batch_size=9, epochs=1, verbose=0)
    accumulated = build(optimizer("adam"))
    keras_trainx.fit_accumulated(accumulated, x, y, batch_size=3, accum_steps=3, epochs=1, verbose=0)
    np.testing.assert_allclose(fit.get_weights()[0], adam_step(sum_of_squares), rtol=0, atol=1e-6)
    np.testing.assert_allclose(accumulated.get_weights()[0], adam_step(summed ** 2), rtol=0,
                               atol=1e-6)
    repeated = np.bincount(rows, minlength=len(summed)) > 1
    once = np.bincount(rows, minlength=len(summed)) == 1
    assert repeated.sum() == 18 and once.sum() == 15
    difference = np.abs(fit.get_weights()[0] - accumulated.get_weights()[0]).max(axis=1)
    assert difference[once].max() <= 1e-6  # measured 7.5e-9
    assert difference[repeated].min() > 1e-3  # measured 0.0157 (max 0.0366)


def test_model_fit_differs_from_the_densified_adam_only_where_a_batch_repeats_a_token():
    """Pins Keras 3.15's TensorFlow-backend behaviour: if a Keras release densifies (or deduplicates)
    sparse gradients before Adam, the first assertion fails and the README's paragraph on sparse
    gradients is out of date."""
    x, y = repeated_tokens()
    difference = max_weight_difference(_model_fit("adam", x, y, 9), _big_batch_steps("adam", x, y, 9))
    assert difference == pytest.approx(0.1705, abs=0.005)  # measured 0.17051 after 6 updates
    x, y = unique_tokens(batch=9)
    assert max_weight_difference(_model_fit("adam", x, y, 9),
                                 _big_batch_steps("adam", x, y, 9)) == 0.0


def test_keras_jax_backend_model_fit_is_the_densified_big_batch(tmp_path):
    """Keras' JAX backend differentiates to a dense gradient: its `Model.fit` computes what
    fit_accumulated computes (the densified reference), not what the TensorFlow `Model.fit` does."""
    x, y = repeated_tokens()
    initial = build(optimizer("adam")).get_weights()
    np.savez(tmp_path / "data.npz", x=x, y=y, batch=9,
             **{f"weight_{i}": w for i, w in enumerate(initial)})
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sparse_embedding_model.py"), tmp_path / "data.npz",
         tmp_path / "jax.npz"], env=env, stderr=subprocess.PIPE, text=True)
    references = {name: _big_batch_steps(name, x, y, 9).get_weights() for name in OPTIMIZERS}
    tensorflow_fit = _model_fit("adam", x, y, 9).get_weights()
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-3000:]
    jax = np.load(tmp_path / "jax.npz")
    assert str(jax["backend"]) == "jax"
    for name, reference in references.items():
        for i, weight in enumerate(reference):
            # Measured: Adam 1.0e-6, AdamW 9.7e-7, RMSprop 6.0e-7, Adagrad 3.0e-8. XLA's kernels
            # round differently from TensorFlow's: the first gradient of embedding entry (1, 2) is
            # -1.6e-5, a sum that cancels, and comes out 1.4e-9 apart. Adam's first update,
            # lr * g / (|g| + epsilon / sqrt(1 - beta_2)), changes by 420 times that where |g| is
            # within a few times epsilon / sqrt(1 - beta_2) = 3.2e-6: 5.9e-7 after one update.
            np.testing.assert_allclose(jax[f"{name}_{i}"], weight, rtol=0, atol=2e-6,
                                       err_msg=f"{name}, weight {i}")
    assert np.abs(jax["adam_0"] - tensorflow_fit[0]).max() > 0.1
