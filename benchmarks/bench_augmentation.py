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
rounds: the augmentation (the per-sample `Compose` loop in one process with one OpenCV thread, the
cheapest way measured to do that work; and the same split over one process per core, which says whether
the cores add up) and the training (the same model fed from cached, already augmented batches). They
give the machine's limit, `cores / (augmentation + training CPU-s per image)`: the images/s at which
both would keep every core busy with nothing else, and each pipeline's fraction of it.
Also measured: both at once with nothing handed over (the augmentation split over one process per core
while the training process trains from cached batches): what sharing the cores alone costs them,
before any batch moves between processes.

Each pipeline (and each measurement alone) lives in a process of its own, as it would for its user: a
pipeline run in the same process as another inherits its state (measured here: after a `PyDataset` had
gone through `Model.fit`, the per-sample loop at 224x224 in that process sometimes took ~190 page
faults and twice the CPU per image). This script drives those processes in interleaved rounds: every
round runs every measurement once, in a rotated order, while the other processes wait, and medians
over rounds count (a shared machine slows whole rounds; CPU-seconds are steadier than wall time there).
Start-up (building the pipeline, its workers, tracing, one warm-up epoch per trainer) is timed one
process at a time and printed separately.
Run: `python benchmarks/bench_augmentation.py` (7 rounds, about 4 minutes on 2 cores), `--quick`
(3 rounds of half-size epochs, about 2 minutes).
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import subprocess
import sys
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
from process_tree import descendants  # noqa: E402

BATCH = 64
OURS = "AugmentedSequence"
RECOMMENDED = f"{OURS} processes .to_tf_dataset()"
AUGMENTATION_ALONE = "augmentation alone"
AT_ONCE = "augmentation and training at once"
ONE_PROCESS = "one process"
ALL_CORES = "all cores"
CLOSE = "close"
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
    return sum(sum(int(v) for v in fields[11:15]) for _, fields in descendants(os.getpid())) / TICKS


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


def ours(x, y, **kwargs):
    return AugmentedSequence(x, y, batch_size=BATCH, transform=transforms(), seed=0, drop_remainder=True, **kwargs)


PIPELINES = {
    RECOMMENDED: lambda x, y: ours(x, y, workers=2, use_multiprocessing=True).to_tf_dataset(),
    f"{OURS} threads (workers=2)": lambda x, y: ours(x, y, workers=2),
    "article Sequence (as written)": lambda x, y: ArticleSequence(x, y, BATCH),
    "article Sequence (workers=2)": lambda x, y: ArticleSequence(x, y, BATCH, workers=2),
    "tf.data numpy_function AUTOTUNE": numpy_function_dataset,
}


def pipelines(x, y):
    """The pipelines' makers, each called with no argument: `pipelines(x, y)[name]()`."""
    return {name: (lambda make=make: make(x, y)) for name, make in PIPELINES.items()}


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


_PROBE_IMAGES = None


def _start_probe(x):
    global _PROBE_IMAGES
    cv2.setNumThreads(1)
    _PROBE_IMAGES = x


def _augment_share(share):
    part, parts = share
    augment(_PROBE_IMAGES[part * len(_PROBE_IMAGES) // parts:(part + 1) * len(_PROBE_IMAGES) // parts])


def _augmentation_pool(x):
    """One process per core, each holding `x`, OpenCV at one thread."""
    context = multiprocessing.get_context("forkserver")
    return concurrent.futures.ProcessPoolExecutor(cores(), mp_context=context, initializer=_start_probe,
                                                  initargs=(x,))


def _augment_on_all_cores(pool):
    """Starts the augmentation of every image, split over the pool's processes; returns the futures."""
    return [pool.submit(_augment_share, (part, cores())) for part in range(cores())]


def augmentation_alone(x, y):
    """The augmentation's own cost: the per-sample Compose loop with one OpenCV thread, in this process
    and split over one process per core at once (do the cores add up: shared caches, memory bandwidth,
    a host's hyperthreads?)."""
    cv2.setNumThreads(1)
    pool = _augmentation_pool(x)

    def all_cores(epoch):
        for future in _augment_on_all_cores(pool):
            future.result()

    runs = {ONE_PROCESS: lambda epoch: augment(x), ALL_CORES: all_cores, CLOSE: lambda: pool.shutdown()}
    runs[ONE_PROCESS](0)
    runs[ALL_CORES](0)
    return runs


def training_alone(x, y):
    """The training's own cost: the same model fed from cached, already augmented batches."""
    size = x.shape[1]
    augmented = np.stack([A.Compose(transforms())(image=image)["image"] for image in x])
    cached = tf.data.Dataset.from_tensor_slices((augmented, y)).batch(BATCH).cache()
    return trained(size, lambda: cached)


def at_once(x, y):
    """Both alone-measurements at the same time, with nothing handed over: the augmentation of the
    epoch's images split over one process per core while this process trains an epoch from cached
    batches. What sharing the cores costs the two, before any batch moves between processes."""
    pool = _augmentation_pool(x)
    trainings = training_alone(x, y)
    for future in _augment_on_all_cores(pool):  # warm-up: the processes start and import
        future.result()

    def run(train, epoch):
        started = _augment_on_all_cores(pool)
        train(epoch)
        for future in started:
            future.result()

    runs = {trainer: (lambda epoch, train=train: run(train, epoch)) for trainer, train in trainings.items()}
    runs[CLOSE] = lambda: pool.shutdown()
    return runs


def trained(size, make):
    data = make()
    runs = {}
    for trainer, train in TRAINERS.items():
        model = tiny_model(size)
        train(model, data, 0)  # warm-up: workers, traces, first-batch probes
        runs[trainer] = lambda epoch, model=model, train=train: train(model, data, epoch)
    return runs


def serve(name, size, num_images):
    """A measurement's process: builds it when told to, then runs `<key> <epoch>` requests from stdin."""
    tf.get_logger().setLevel("ERROR")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, num_images).astype(np.int64)
    reply("loaded")
    sys.stdin.readline()
    start = time.perf_counter()
    if name == AUGMENTATION_ALONE:
        runs = augmentation_alone(x, y)
    elif name == TRAINING_ALONE:
        runs = training_alone(x, y)
    elif name == AT_ONCE:
        runs = at_once(x, y)
    else:
        runs = trained(size, pipelines(x, y)[name])
    reply(f"ready {time.perf_counter() - start}")
    for line in sys.stdin:
        key, epoch = line.rsplit(" ", 1)
        wall, cpu, workers = time.perf_counter(), cpu_seconds(), descendants_cpu_seconds()
        runs[key](int(epoch))
        wall, cpu, workers = time.perf_counter() - wall, cpu_seconds() - cpu, descendants_cpu_seconds() - workers
        reply(f"{wall} {cpu} {workers}")
    if CLOSE in runs:
        runs[CLOSE]()


def reply(text):
    print(f"@@ {text}", flush=True)


class Server:
    """The driver's handle on a measurement's process."""

    def __init__(self, name, size, num_images):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", name, "--sizes", str(size),
             "--images", str(num_images)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self):
        for line in self.process.stdout:
            if line.startswith("@@ "):
                return line[3:].split()
        raise RuntimeError(f"the process measuring {self.name!r} ended (its error is above)")

    def send(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=120)


def measure(size, num_images, rounds):
    names = [AUGMENTATION_ALONE, TRAINING_ALONE, AT_ONCE] + list(PIPELINES)
    servers = {name: Server(name, size, num_images) for name in names}  # imports in parallel, untimed
    try:
        for server in servers.values():
            server.read()
        startup = {}
        for name, server in servers.items():  # building and warm-up epochs one process at a time
            server.send("build")
            startup[name] = float(server.read()[1])
        runs = [(AUGMENTATION_ALONE, key) for key in (ONE_PROCESS, ALL_CORES)]
        runs += [(name, trainer) for trainer in TRAINERS for name in names[1:]]
        results = {run: [] for run in runs}
        for r in range(rounds):
            for name, key in runs[r % len(runs):] + runs[: r % len(runs)]:
                servers[name].send(f"{key} {r + 1}")
                wall, cpu, workers = (float(v) for v in servers[name].read())
                results[name, key].append((num_images / wall, cpu / num_images, workers / num_images))
    finally:
        for server in servers.values():
            server.close()
    return results, startup


def report(size, num_images, rounds, results, startup):
    n_cores = cores()
    rate = {run: statistics.median(r[0] for r in v) for run, v in results.items()}
    best = {run: max(r[0] for r in v) for run, v in results.items()}
    cost = {run: statistics.median(r[1] for r in v) for run, v in results.items()}
    workers = {run: statistics.median(r[2] for r in v) for run, v in results.items()}
    one, every = (AUGMENTATION_ALONE, ONE_PROCESS), (AUGMENTATION_ALONE, ALL_CORES)
    augment_cost = cost[one]
    print(f"\n{size}x{size}, batch {BATCH}, {num_images} images per epoch, {rounds} rounds, {n_cores} cores; "
          f"medians over rounds; CPU-us: microseconds of CPU per image, training process and its workers")
    print(f"  alone: augmentation {augment_cost * 1e6:.0f} CPU-us ({rate[one]:.0f} img/s; per-sample Compose, "
          f"1 OpenCV thread, 1 process); in {n_cores} processes at once {cost[every] * 1e6:.0f} CPU-us "
          f"({rate[every]:.0f} img/s, {rate[every] / rate[one]:.2f}x one process)")
    print("  alone: training from cached batches: "
          + ", ".join(f"{t} {cost[TRAINING_ALONE, t] * 1e6:.0f} CPU-us ({rate[TRAINING_ALONE, t]:.0f} img/s)"
                      for t in TRAINERS))
    for trainer in TRAINERS:
        limit = n_cores / (augment_cost + cost[TRAINING_ALONE, trainer])
        peer = max(rate[name, trainer] for name in PIPELINES if not name.startswith(OURS))
        peer_best = max(best[name, trainer] for name in PIPELINES if not name.startswith(OURS))
        print(f"  {trainer}: limit {limit:.0f} img/s = {n_cores} cores / ({augment_cost * 1e6:.0f} + "
              f"{cost[TRAINING_ALONE, trainer] * 1e6:.0f}) CPU-us")
        both = AT_ONCE, trainer
        print(f"    both at once, nothing handed over: {rate[both]:.0f} img/s ({rate[both] / limit:.0%} of the "
              f"limit), {cost[both] * 1e6:.0f} CPU-us, of which {workers[both] * 1e6:.0f} in the augmentation "
              f"processes; ours: {rate[RECOMMENDED, trainer] / rate[both]:.0%} of its img/s")
        print(f"    {'pipeline':44s} {'img/s':>6s} {'of limit':>8s} {'vs best peer':>12s} {'CPU-us':>6s} "
              f"{'in workers':>10s} {'best round':>10s} {'vs best':>7s}")
        for name in sorted(PIPELINES, key=lambda k: -rate[k, trainer]):
            run = name, trainer
            print(f"    {name:44s} {rate[run]:6.0f} {rate[run] / limit:8.0%} {rate[run] / peer:11.2f}x "
                  f"{cost[run] * 1e6:6.0f} {workers[run] * 1e6:10.0f} {best[run]:10.0f} {best[run] / peer_best:6.2f}x")
    print("  start-up (build, workers, one warm-up epoch per trainer), alone on the machine: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items() if name in PIPELINES))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds of half-size epochs (about 2 minutes)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.sizes[0], args.images)
        return
    rounds = 3 if args.quick else args.rounds
    for size in args.sizes:
        num_images = IMAGES_PER_EPOCH.get(size, max(4 * BATCH, 4096 * 64 * 64 // (size * size) // BATCH * BATCH))
        if args.quick:
            num_images = max(4 * BATCH, num_images // 2 // BATCH * BATCH)
        start = time.perf_counter()
        results, startup = measure(size, num_images, rounds)
        report(size, num_images, rounds, results, startup)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
