"""Images/s as a user feeds them: `Model.fit` and `fit_accumulated`, the same albumentations pipeline.

Every pipeline trains the same tiny model (Rescaling, 2x2 average pooling, global pooling, Dense: the
input pipeline dominates) for one epoch per timing, with `Model.fit` and with
`keras_trainx.fit_accumulated(accum_steps=2)`. Peers, as users write them:

- the article's Sequence: a `keras.utils.PyDataset` whose `__getitem__` loops `compose(image=...)` over
  the batch and stacks (the well-known recipe), as written (1 worker) and with `workers=2` threads;
- tf.data: `Dataset.range(steps).map(numpy_function(augment one batch), AUTOTUNE).prefetch(AUTOTUNE)`.

Ours, the calls the README recommends: `AugmentedSequence(..., workers=2)` passed to `fit` (threads),
and its `to_tf_dataset()` built with `workers=2, use_multiprocessing=True` (worker processes), both
with the epoch callback (`fit_accumulated` adds it itself).

Timings are interleaved: every round times every pipeline once per trainer, in a rotated order; the
median round counts, the best round is printed too (a shared machine slows whole rounds). Worker
start-up (threads, processes, tracing) happens in an untimed warm-up epoch, and is printed separately
for the process path. Run: `python benchmarks/bench_augmentation.py` (about 4 minutes on 2 cores);
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

import keras_trainx  # noqa: E402
from keras_trainx.data import AugmentedSequence, epoch_callbacks  # noqa: E402

BATCH = 64
OURS = "AugmentedSequence"


def transforms():
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5),
        A.HueSaturationValue(p=0.5),
    ]


class ArticleSequence(keras.utils.PyDataset):
    """The article's recipe: loop the Compose over the samples of the batch, then stack."""

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


def pipelines(x, y):
    def ours(**kwargs):
        return AugmentedSequence(x, y, batch_size=BATCH, transform=transforms(), seed=0, drop_remainder=True,
                                 **kwargs)

    return {
        f"{OURS}(workers=2) threads": lambda: ours(workers=2),
        f"{OURS}(workers=2, processes).to_tf_dataset()": lambda: ours(
            workers=2, use_multiprocessing=True).to_tf_dataset(),
        "article Sequence (1 worker)": lambda: ArticleSequence(x, y, BATCH),
        "article Sequence (workers=2 threads)": lambda: ArticleSequence(x, y, BATCH, workers=2),
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


def fit(model, data, epoch):
    model.fit(data, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
              callbacks=epoch_callbacks(data))


def fit_accumulated(model, data, epoch):
    keras_trainx.fit_accumulated(model, data, accum_steps=2, epochs=epoch + 1, initial_epoch=epoch,
                                 verbose=0, shuffle=False)


TRAINERS = {"Model.fit": fit, "fit_accumulated": fit_accumulated}


def measure(size, num_images, rounds):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, num_images).astype(np.int64)
    inputs, models, startup = {}, {}, {}
    for name, make in pipelines(x, y).items():
        start = time.perf_counter()
        inputs[name] = make()
        for trainer, train in TRAINERS.items():  # warm-up: workers, traces, first-batch probes
            models[trainer, name] = tiny_model(size)
            train(models[trainer, name], inputs[name], 0)
        startup[name] = time.perf_counter() - start
    runs = [(trainer, name) for trainer in TRAINERS for name in inputs]
    rates = {run: [] for run in runs}
    for r in range(rounds):
        for trainer, name in runs[r % len(runs):] + runs[: r % len(runs)]:
            start = time.perf_counter()
            TRAINERS[trainer](models[trainer, name], inputs[name], r + 1)
            rates[trainer, name].append(num_images / (time.perf_counter() - start))
    return rates, startup


def report(size, num_images, rounds, rates, startup):
    print(f"\n{size}x{size}, batch {BATCH}, {num_images} images per epoch, {rounds} rounds")
    for trainer in TRAINERS:
        medians = {name: statistics.median(v) for (t, name), v in rates.items() if t == trainer}
        bests = {name: max(v) for (t, name), v in rates.items() if t == trainer}
        peer_median = max(v for k, v in medians.items() if not k.startswith(OURS))
        peer_best = max(v for k, v in bests.items() if not k.startswith(OURS))
        print(f"  {trainer}")
        print(f"  {'pipeline':50s} {'median img/s':>12s} {'vs best peer':>12s} {'best img/s':>11s} "
              f"{'vs best peer':>12s}")
        for name in sorted(medians, key=lambda k: -medians[k]):
            print(f"  {name:50s} {medians[name]:12.0f} {medians[name] / peer_median:11.2f}x "
                  f"{bests[name]:11.0f} {bests[name] / peer_best:11.2f}x")
    print("  first epoch incl. start-up (workers, tracing), both trainers: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images_per_size = {64: 4096, 224: 768}
    for size in args.sizes:
        num_images = images_per_size.get(size, max(BATCH * 4, 4096 * 64 * 64 // (size * size) // BATCH * BATCH))
        rates, startup = measure(size, num_images, args.rounds)
        report(size, num_images, args.rounds, rates, startup)


if __name__ == "__main__":
    main()
