"""One worker of the sharded-input test (test_distribute_sharded_input.py) and its benchmark.

Run as `python sharded_input_worker.py OUTPUT.npz` with TF_CONFIG set (or without, for one process
alone): it lets `auto_strategy()` choose the strategy and trains two models with `fit_accumulated`,
one on an `AugmentedSequence` itself ("sequence") and one on its `to_tf_dataset()` ("dataset"), each
sequence counting its transform calls in `count_path(OUTPUT, path)` (one byte a call). It saves each
model's final weights and update count to OUTPUT.npz.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import albumentations as A  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

NUM_SAMPLES = 33
BATCH_SIZE = 8  # the global batch: 8, 8, 8, 8, 1 (sequence) or 8, 8, 8, 8 (dataset: drop_remainder)
ACCUM_STEPS = {"sequence": 2, "dataset": 3}  # windows 2, 2, 1 and 3, 1: a partial last window
EPOCHS = 2
SEED = 5
PATHS = ("sequence", "dataset")


class CountCalls(A.ImageOnlyTransform):
    """Leaves the image as it is and appends one byte to `path` per call (processes share the file)."""

    def __init__(self, path: str, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.path = path

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        with open(self.path, "ab") as file:
            file.write(b".")
        return img


def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (NUM_SAMPLES, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, NUM_SAMPLES)


def make_sequence(count_path, *, drop_remainder=False, **kwargs):
    from keras_trainx import AugmentedSequence

    x, y = images()
    transform = [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.8), CountCalls(count_path)]
    return AugmentedSequence(x, y, batch_size=BATCH_SIZE, transform=transform, seed=SEED,
                             drop_remainder=drop_remainder, **kwargs)


def build_model():
    model = keras.Sequential([
        keras.Input((8, 8, 3), dtype="uint8"), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in model.weights])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def count_path(output, path):
    """Where the run that writes `output` counts the transform calls of `path`'s sequence."""
    return f"{output}.{path}.count"


def train(path, count_path, strategy):
    """Trains a fresh model (built under `strategy`'s scope) on `path`'s input; returns it."""
    import keras_trainx

    with strategy.scope():
        model = build_model()
    if path == "sequence":
        x = make_sequence(count_path)
    else:
        x = make_sequence(count_path, drop_remainder=True).to_tf_dataset()
    keras_trainx.fit_accumulated(model, x, accum_steps=ACCUM_STEPS[path], epochs=EPOCHS, verbose=0)
    return model


def main(output):
    import keras_trainx

    strategy = keras_trainx.distribute.auto_strategy()
    results = {"replicas": strategy.num_replicas_in_sync}
    for path in PATHS:
        model = train(path, count_path(output, path), strategy)
        results[f"{path}_iterations"] = int(model.optimizer.iterations.numpy())
        for i, weight in enumerate(model.get_weights()):
            results[f"{path}_weight_{i}"] = weight
    np.savez(output, **results)


if __name__ == "__main__":
    main(sys.argv[1])
