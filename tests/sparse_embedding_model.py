"""A model whose Embedding gradient is sparse, built alike under any Keras backend.

Imported by tests/test_sparse_gradients.py (TensorFlow backend) and run by it as
`python sparse_embedding_model.py DATA OUT` with `KERAS_BACKEND=jax`: DATA is an .npz with the token
ids `x`, the labels `y`, the initial weights `weight_0`, `weight_1`, ... and the big batch `batch`;
for every optimizer in `OPTIMIZERS` the script trains the model from those weights with the JAX
backend's `Model.fit` (2 epochs, unshuffled) and writes its weights to OUT as `{name}_{i}`.
"""

import os
import sys

import numpy as np

VOCABULARY, DIM, LENGTH, CLASSES = 64, 4, 6, 3
EPOCHS = 2
# Optimizer name -> (class name in keras.optimizers, arguments). Learning rates are large so that a
# few updates move the weights far from where a different second moment would take them.
OPTIMIZERS = {
    "adam": ("Adam", {"learning_rate": 0.05}),
    "adamw": ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.1}),
    "rmsprop": ("RMSprop", {"learning_rate": 0.05}),
    "adagrad": ("Adagrad", {"learning_rate": 0.5}),
}


def optimizer(name):
    import keras

    class_name, arguments = OPTIMIZERS[name]
    return getattr(keras.optimizers, class_name)(**arguments)


def build(optimizer, weights=None):
    """Embedding(64, 4) -> mean over the 6 tokens -> Dense(3) logits, compiled; seeded or `weights`."""
    import keras

    if weights is None:  # (seeding imports TensorFlow, which the JAX run does not otherwise need)
        keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(VOCABULARY, DIM),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES),
    ])
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def repeated_tokens(samples=27, seed=0):
    """Token ids drawn with replacement: in a batch of 9 (54 tokens of 64) most ids repeat."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCABULARY, size=(samples, LENGTH)).astype("int32")
    return x, rng.integers(0, CLASSES, size=samples)


def unique_tokens(samples=27, batch=9, seed=0):
    """Token ids that appear at most once in each consecutive batch of `batch` samples."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(VOCABULARY)[: min(batch, samples - start) * LENGTH].reshape(-1, LENGTH)
            for start in range(0, samples, batch)]
    return np.concatenate(rows).astype("int32"), rng.integers(0, CLASSES, size=samples)


def main(data_path, out_path):
    import keras

    data = np.load(data_path)
    weights = [data[f"weight_{i}"] for i in range(len(data.files) - 3)]
    result = {"backend": np.array(keras.backend.backend())}
    for name in OPTIMIZERS:
        model = build(optimizer(name), weights)
        model.fit(data["x"], data["y"], batch_size=int(data["batch"]), epochs=EPOCHS, shuffle=False,
                  verbose=0)
        result.update({f"{name}_{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(out_path, **result)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main(*sys.argv[1:])
