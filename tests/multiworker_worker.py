"""One worker of the two-process MultiWorkerMirroredStrategy test (test_distribute_multiworker.py).

Run as `python multiworker_worker.py OUTPUT.npz` with TF_CONFIG set: it lets `auto_strategy()` choose
the strategy, builds and compiles the model under its scope, trains it with `fit_accumulated` and
saves the final weights, the loss history and the strategy's name to OUTPUT.npz. The test imports
`build_model`, `data` and the training constants from here for its single-process reference run.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

NUM_SAMPLES = 27  # micro-batches of 8, 8, 8 | 3: the second window of each epoch is partial
BATCH_SIZE = 8  # the global micro-batch: Keras splits each batch across the workers' replicas
ACCUM_STEPS = 3
EPOCHS = 2
LEARNING_RATE = 0.05


def data():
    """Deterministic regression data, the same in every process."""
    rng = np.random.default_rng(42)
    x = rng.normal(size=(NUM_SAMPLES, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1)) + 0.1 * rng.normal(size=(NUM_SAMPLES, 1))).astype("float32")
    return x, y


def build_model():
    """A small MLP, compiled with Adam, with the same initial weights in every process."""
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)]
    )
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.weights])
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def main(output):
    import logging

    import keras_trainx

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    strategy = keras_trainx.distribute.auto_strategy()
    with strategy.scope():
        model = build_model()
    x, y = data()
    history = keras_trainx.fit_accumulated(
        model, x, y, batch_size=BATCH_SIZE, accum_steps=ACCUM_STEPS, epochs=EPOCHS,
        shuffle=False, verbose=0,
    )
    weights = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(
        output,
        strategy_class=type(strategy).__name__,
        replicas=strategy.num_replicas_in_sync,
        loss=np.array(history.history["loss"]),
        iterations=model.optimizer.iterations.numpy(),
        **weights,
    )


if __name__ == "__main__":
    main(sys.argv[1])
