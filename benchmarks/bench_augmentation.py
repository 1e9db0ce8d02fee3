"""Augmented images fed to `Model.fit` and `fit_accumulated`, against the machine's limit and the peers.

Every pipeline feeds the same albumentations pipeline (flip, brightness/contrast, affine, HSV; batch 64,
uint8) to the same tiny model (Rescaling, 2x2 average pooling, global pooling, Dense: the input pipeline
dominates), for one epoch per timing, through `Model.fit` and `keras_trainx.fit_accumulated(accum_steps=2)`
written as a user writes them. Peers, at their own defaults (what a user of them gets):

- the article's Sequence: a `keras.utils.PyDataset` whose `__getitem__` loops `compose(image=...)` over
  the batch and stacks, as written (1 worker) and with `workers=2` threads;
- tf.data: `Dataset.range(steps).map(numpy_function(augment one batch), AUTOTUNE).prefetch(AUTOTUNE)`.

Ours, as the README writes them: `AugmentedSequence(..., workers=2, use_multiprocessing=True)
.to_tf_dataset()` (worker processes, the recommended path) and `AugmentedSequence(..., workers=2)` given
to `fit` (Keras' thread workers).

For each pipeline the run reports images/s and CPU-seconds per image: the training process and all its
descendants (worker processes included, read from /proc while they run). Measured alone in the same
rounds: the augmentation (the per-sample `Compose` loop in the calling thread with one OpenCV thread, the
cheapest way measured to do that work) and the training (the same model fed from cached, already
augmented batches). They give the machine's limit, `cores / (augmentation + training CPU-s per image)`:
the images/s at which both would keep every core busy with nothing else, and each pipeline's fraction
of it.

Timings are interleaved: every round runs every measurement once, in a rotated order, and medians over
rounds count (a shared machine slows whole rounds; CPU-seconds are steadier than wall time there). Worker
start-up (threads, processes, tracing) happens in an untimed warm-up epoch and is printed separately.
Run: `python benchmarks/bench_augmentation.py` (about 10 minutes on 2 cores), `--quick` (about 2 minutes).
"""

import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_trainx  # noqa: E402
from keras_trainx.data import AugmentedSequence, epoch_callbacks  # noqa: E402

BATCH = 64
OURS = "AugmentedSequence"
RECOMMENDED = f"{OURS} processes .to_tf_dataset()"
AUGMENTATION_ALONE = "augmentation alone"
ALL_CORES = "augmentation alone, all cores"
TRAINING_ALONE = "training alone"
TICKS = os.sysconf("SC_CLK_TCK")
IMAGES_PER_EPOCH = {64: 4096, 224: 768}


def cores():
    return len(os.sched_getaffinity(0))


def cpu_seconds():
    """CPU seconds of this process, its reaped children, and every live descendant (from /proc)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system + descendants_cpu_seconds()


def descendants_cpu_seconds():
    """CPU seconds of the live processes below this one (worker processes), and of their reaped children."""
    total = 0.0
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), fields))
    stack = [os.getpid()]
    while stack:
        for pid, fields in children.get(stack.pop(), []):
            total += sum(int(v) for v in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
            stack.append(pid)
    return total


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
        RECOMMENDED: lambda: ours(workers=2, use_multiprocessing=True).to_tf_dataset(),
        f"{OURS} threads (workers=2)": lambda: ours(workers=2),
        "article Sequence (as written)": lambda: ArticleSequence(x, y, BATCH),
        "article Sequence (workers=2)": lambda: ArticleSequence(x, y, BATCH, workers=2),
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


def augment(x):
    """The per-sample Compose loop over `x`, batch by batch."""
    compose = A.Compose(transforms())
    for start in range(0, len(x) - BATCH + 1, BATCH):
        np.stack([compose(image=image)["image"] for image in x[start:start + BATCH]])


def augment_alone(x):
    """The augmentation's own cost: the per-sample Compose loop, one OpenCV thread, nothing else running."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        augment(x)
    finally:
        cv2.setNumThreads(threads)


_PROBE_IMAGES = None


def _start_probe(x):
    global _PROBE_IMAGES
    cv2.setNumThreads(1)
    _PROBE_IMAGES = x


def _augment_share(share):
    part, parts = share
    augment(_PROBE_IMAGES[part * len(_PROBE_IMAGES) // parts:(part + 1) * len(_PROBE_IMAGES) // parts])


class AllCoresProbe:
    """The same augmentation in one process per core at once: do the cores add up (shared caches,
    memory bandwidth, a host's hyperthreads)? Its CPU-s per image against `augmentation alone`'s says."""

    def __init__(self, x):
        context = multiprocessing.get_context("forkserver")
        self.pool = concurrent.futures.ProcessPoolExecutor(cores(), mp_context=context, initializer=_start_probe,
                                                           initargs=(x,))
        self.run()  # start the processes

    def run(self):
        list(self.pool.map(_augment_share, [(part, cores()) for part in range(cores())]))


def measure(size, num_images, rounds):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, num_images).astype(np.int64)
    augmented = np.stack([A.Compose(transforms())(image=image)["image"] for image in x])
    cached = tf.data.Dataset.from_tensor_slices((augmented, y)).batch(BATCH).cache()
    inputs, models, startup = {TRAINING_ALONE: cached}, {}, {}
    for name, make in pipelines(x, y).items():
        start = time.perf_counter()
        inputs[name] = make()
        for trainer, train in TRAINERS.items():  # warm-up: workers, traces, first-batch probes
            models[trainer, name] = tiny_model(size)
            train(models[trainer, name], inputs[name], 0)
        startup[name] = time.perf_counter() - start
    for trainer, train in TRAINERS.items():
        models[trainer, TRAINING_ALONE] = tiny_model(size)
        train(models[trainer, TRAINING_ALONE], cached, 0)
    probe = AllCoresProbe(x)
    alone = {AUGMENTATION_ALONE: lambda: augment_alone(x), ALL_CORES: probe.run}
    runs = [(None, name) for name in alone] + [(trainer, name) for trainer in TRAINERS for name in inputs]
    results = {run: [] for run in runs}
    for r in range(rounds):
        for trainer, name in runs[r % len(runs):] + runs[: r % len(runs)]:
            gc.collect()
            wall, cpu, children = time.perf_counter(), cpu_seconds(), descendants_cpu_seconds()
            if trainer is None:
                alone[name]()
            else:
                TRAINERS[trainer](models[trainer, name], inputs[name], r + 1)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            children = descendants_cpu_seconds() - children
            results[trainer, name].append((num_images / wall, cpu / num_images, children / num_images))
    probe.pool.shutdown()
    del inputs, models
    gc.collect()
    return results, startup


def report(size, num_images, rounds, results, startup):
    n_cores = cores()
    rate = {run: statistics.median(r[0] for r in v) for run, v in results.items()}
    best = {run: max(r[0] for r in v) for run, v in results.items()}
    cost = {run: statistics.median(r[1] for r in v) for run, v in results.items()}
    workers = {run: statistics.median(r[2] for r in v) for run, v in results.items()}
    augment = cost[None, AUGMENTATION_ALONE]
    print(f"\n{size}x{size}, batch {BATCH}, {num_images} images per epoch, {rounds} rounds, {n_cores} cores; "
          f"medians over rounds; CPU-us: microseconds of CPU per image, training process and its workers")
    print(f"  alone: augmentation {augment * 1e6:.0f} CPU-us ({rate[None, AUGMENTATION_ALONE]:.0f} img/s; "
          f"per-sample Compose, calling thread, 1 OpenCV thread; on all {n_cores} cores at once "
          f"{cost[None, ALL_CORES] * 1e6:.0f} CPU-us, {rate[None, ALL_CORES]:.0f} img/s)")
    print("  alone: training from cached batches: "
          + ", ".join(f"{t} {cost[t, TRAINING_ALONE] * 1e6:.0f} CPU-us ({rate[t, TRAINING_ALONE]:.0f} img/s)"
                      for t in TRAINERS))
    for trainer in TRAINERS:
        limit = n_cores / (augment + cost[trainer, TRAINING_ALONE])
        names = [name for (t, name) in results if t == trainer and name != TRAINING_ALONE]
        peer = max(rate[trainer, name] for name in names if not name.startswith(OURS))
        peer_best = max(best[trainer, name] for name in names if not name.startswith(OURS))
        print(f"  {trainer}: limit {limit:.0f} img/s = {n_cores} cores / ({augment * 1e6:.0f} + "
              f"{cost[trainer, TRAINING_ALONE] * 1e6:.0f}) CPU-us")
        print(f"    {'pipeline':42s} {'img/s':>6s} {'of limit':>8s} {'vs best peer':>12s} {'CPU-us':>6s} "
              f"{'in workers':>10s} {'best round':>10s} {'vs best':>7s}")
        for name in sorted(names, key=lambda k: -rate[trainer, k]):
            run = trainer, name
            print(f"    {name:42s} {rate[run]:6.0f} {rate[run] / limit:8.0%} {rate[run] / peer:11.2f}x "
                  f"{cost[run] * 1e6:6.0f} {workers[run] * 1e6:10.0f} {best[run]:10.0f} {best[run] / peer_best:6.2f}x")
    print("  first epoch incl. start-up (workers, tracing), both trainers: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds of half-size epochs (about 2 minutes)")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    for size in args.sizes:
        num_images = IMAGES_PER_EPOCH.get(size, max(4 * BATCH, 4096 * 64 * 64 // (size * size) // BATCH * BATCH))
        if args.quick:
            num_images = max(4 * BATCH, num_images // 2 // BATCH * BATCH)
        start = time.perf_counter()
        results, startup = measure(size, num_images, rounds)
        report(size, num_images, rounds, results, startup)
        print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
