"""Images/s through `Model.fit` for the same albumentations pipeline fed several ways, in one process.

Peers, timed in interleaved rounds (the machine is noisy: every round times every peer once, in a
rotated order; the median round counts, and the best round is printed too: other jobs on a shared
machine slow whole rounds, which the best round filters out):

- AugmentedSequence: `keras_trainx.data.AugmentedSequence` with 1 and 2 thread workers, and its
  `to_tf_dataset()` with 2 threads or 2 worker processes (at 64x64 a second thread mostly contends for
  the GIL, so 1 worker can win, and processes pay off);
- per-sample Sequence: the well-known recipe (a `keras.utils.PyDataset` whose `__getitem__` loops
  `compose(image=...)` over the batch and stacks), with 1 and 2 thread workers and 2 Keras process
  workers;
- tf.data: `Dataset.range(steps).map(numpy_function(augment one batch), AUTOTUNE).prefetch(AUTOTUNE)`.

The model is tiny (Rescaling, 2x2 average pooling, global pooling, Dense) so the input pipeline
dominates. Run: `python benchmarks/bench_augmentation.py` (about 2-3 minutes on 2 cores);
`--sizes 64 --rounds 3` for a quicker look.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import albumentations as A  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_trainx.data import AugmentedSequence  # noqa: E402

BATCH = 64


def transforms():
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5),
        A.HueSaturationValue(p=0.5),
    ]


class PerSampleSequence(keras.utils.PyDataset):
    """The classic recipe: loop the Compose over the samples of the batch, then stack."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment = A.Compose(transforms())

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        window = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return np.stack([self.augment(image=image)["image"] for image in self.x[window]]), self.y[window]


def numpy_function_dataset(x, y):
    augment = A.Compose(transforms())
    steps = len(x) // BATCH

    def batch(i):
        window = slice(int(i) * BATCH, (int(i) + 1) * BATCH)
        return np.stack([augment(image=image)["image"] for image in x[window]]), y[window]

    def load(i):
        images, labels = tf.numpy_function(batch, [i], (tf.uint8, tf.int64))
        return tf.ensure_shape(images, (BATCH,) + x.shape[1:]), tf.ensure_shape(labels, (BATCH,))

    ds = tf.data.Dataset.range(steps).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def peers(x, y):
    def augmented(**kwargs):
        return AugmentedSequence(x, y, batch_size=BATCH, transform=transforms(), seed=0, drop_remainder=True,
                                 **kwargs)

    return {
        "AugmentedSequence workers=1": lambda: augmented(),
        "AugmentedSequence workers=2 (threads)": lambda: augmented(workers=2),
        "AugmentedSequence.to_tf_dataset workers=2": lambda: augmented(workers=2).to_tf_dataset(),
        "AugmentedSequence.to_tf_dataset 2 processes": lambda: augmented(
            workers=2, use_multiprocessing=True).to_tf_dataset(),
        "per-sample Sequence workers=1": lambda: PerSampleSequence(x, y, BATCH),
        "per-sample Sequence workers=2 (threads)": lambda: PerSampleSequence(x, y, BATCH, workers=2),
        "per-sample Sequence workers=2 (processes)": lambda: PerSampleSequence(
            x, y, BATCH, workers=2, use_multiprocessing=True),
        "tf.data numpy_function AUTOTUNE": lambda: numpy_function_dataset(x, y),
    }


def tiny_model(size):
    model = keras.Sequential([
        keras.Input((size, size, 3), dtype="uint8"),
        keras.layers.Rescaling(1 / 255),
        keras.layers.AveragePooling2D(2),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def measure(size, num_images, rounds):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, num_images).astype(np.int64)
    model = tiny_model(size)
    makers = peers(x, y)
    inputs = {name: make() for name, make in makers.items()}
    for data in inputs.values():  # warm-up: traces, thread pools, first-batch probes
        model.fit(data, epochs=1, verbose=0, shuffle=False)
    rates = {name: [] for name in inputs}
    names = list(inputs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            model.fit(inputs[name], epochs=1, verbose=0, shuffle=False)
            rates[name].append(num_images / (time.perf_counter() - start))
    return ({name: statistics.median(values) for name, values in rates.items()},
            {name: max(values) for name, values in rates.items()})


def ours_best(rates):
    return max(v for k, v in rates.items() if k.startswith("AugmentedSequence"))


def peer_best(rates):
    return max(v for k, v in rates.items() if not k.startswith("AugmentedSequence"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images_per_size = {64: 4096, 224: 768}
    for size in args.sizes:
        num_images = images_per_size.get(size, max(BATCH * 4, 4096 * 64 * 64 // (size * size) // BATCH * BATCH))
        medians, bests = measure(size, num_images, args.rounds)
        print(f"\n{size}x{size}, batch {BATCH}, {num_images} images per fit, {args.rounds} rounds")
        print(f"{'pipeline':45s} {'median img/s':>12s} {'vs best peer':>13s} {'best img/s':>11s} {'vs best peer':>13s}")
        for name in sorted(medians, key=lambda k: -medians[k]):
            print(f"{name:45s} {medians[name]:12.0f} {medians[name] / peer_best(medians):12.2f}x "
                  f"{bests[name]:11.0f} {bests[name] / peer_best(bests):12.2f}x")
        print(f"AugmentedSequence (best setting) / best peer: {ours_best(medians) / peer_best(medians):.2f}x "
              f"(medians), {ours_best(bests) / peer_best(bests):.2f}x (best rounds)")


if __name__ == "__main__":
    main()
