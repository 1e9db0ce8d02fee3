"""Samples/s of fit_accumulated vs Model.fit under MirroredStrategy on two logical CPU replicas.

One process, the CPU split into two logical devices, `MirroredStrategy(["/cpu:0", "/cpu:1"])`.
Peers, all trained under that strategy on the same small CNN (32x32x3 input, Adam):

- `fit_accumulated`, micro-batch 32 x 4 (effective batch 128);
- `Model.fit` at batch 32 (as many samples per step as one micro-step);
- `Model.fit` at batch 128 (the same effective batch, one all-reduce per 128 samples too).

Timed in interleaved rounds (the machine is noisy: every round times every peer once, in a rotated
order; the median of the rounds' ratios counts). Each timed call trains two epochs and only the second is timed,
so tracing is left out. Then:

- Keras' own `gradient_accumulation_steps=4` under the same strategy: it fails (printed);
- gradient all-reduces per update and per micro-batch, counted at run time by the counting
  cross-device op `keras_trainx.all_reduce_counter.AllReduceCounter` (it counts reductions the graph
  executes).

Run: `python benchmarks/bench_distributed.py` (about three minutes on 2 cores); `--rounds 3` for less.
"""

import argparse
import os
import re
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_trainx  # noqa: E402
from keras_trainx.all_reduce_counter import AllReduceCounter  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]
MICRO_BATCH = 32
ACCUM_STEPS = 4
NUM_SAMPLES = 2048


def build_model(strategy, **optimizer_kwargs):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
                keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3, **optimizer_kwargs),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return model


class SecondEpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def peers(strategy, x, y):
    """name -> function training two epochs and returning the second epoch's samples/s."""
    accumulated = build_model(strategy)
    small = build_model(strategy)
    large = build_model(strategy)

    def timed(train):
        timer = SecondEpochTimer()
        train(timer)
        return len(x) / timer.seconds

    common = dict(epochs=2, shuffle=False, verbose=0)
    return {
        f"fit_accumulated {MICRO_BATCH}x{ACCUM_STEPS}": lambda: timed(
            lambda timer: keras_trainx.fit_accumulated(
                accumulated, x, y, batch_size=MICRO_BATCH, accum_steps=ACCUM_STEPS,
                callbacks=[timer], **common,
            )
        ),
        f"Model.fit batch {MICRO_BATCH}": lambda: timed(
            lambda timer: small.fit(x, y, batch_size=MICRO_BATCH, callbacks=[timer], **common)
        ),
        f"Model.fit batch {MICRO_BATCH * ACCUM_STEPS}": lambda: timed(
            lambda timer: large.fit(
                x, y, batch_size=MICRO_BATCH * ACCUM_STEPS, callbacks=[timer], **common
            )
        ),
    }


def keras_builtin_accumulation(strategy, x, y):
    """Keras' optimizer-level accumulation under the strategy: returns the error it raises."""
    model = build_model(strategy, gradient_accumulation_steps=ACCUM_STEPS)
    try:
        model.fit(x, y, batch_size=MICRO_BATCH, epochs=1, verbose=0)
    except Exception as error:  # the failure is what this reports
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in str(error).splitlines()]
        cause = next((line for line in lines if "merge_call" in line), lines[0])
        return f"{type(error).__name__}: {cause.split('. ')[0]}."
    return "no error (Keras fixed keras-team/keras#20582?)"


def all_reduce_counts(x, y):
    """Gradient all-reduces per update, per micro-batch, for fit_accumulated and Model.fit."""
    rows = {}
    for name in ("fit_accumulated", "Model.fit"):
        counter = AllReduceCounter()
        strategy = tf.distribute.MirroredStrategy(DEVICES, cross_device_ops=counter)
        model = build_model(strategy)
        if name == "fit_accumulated":
            keras_trainx.fit_accumulated(
                model, x, y, batch_size=MICRO_BATCH, accum_steps=ACCUM_STEPS, verbose=0
            )
        else:
            model.fit(x, y, batch_size=MICRO_BATCH, verbose=0)
        micro_batches = -(-len(x) // MICRO_BATCH)
        updates = int(model.optimizer.iterations.numpy())
        reductions = int(counter.gradient_reductions.numpy())
        rows[name] = (updates, micro_batches, reductions)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(NUM_SAMPLES, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=NUM_SAMPLES)
    strategy = tf.distribute.MirroredStrategy(DEVICES)
    runs = peers(strategy, x, y)
    names = list(runs)
    samples = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runs[name]())

    print(f"MirroredStrategy on {DEVICES}, {NUM_SAMPLES} samples of 32x32x3, Adam, "
          f"{args.rounds} interleaved rounds (second epoch of each call)")
    print(f"  {'peer':<26} {'samples/s':>9}   ratio to Model.fit batch {MICRO_BATCH} "
          "(median of the rounds' ratios, min-max)")
    baseline = samples[names[1]]
    for name in names:
        ratios = [s / b for s, b in zip(samples[name], baseline)]
        print(f"  {name:<26} {statistics.median(samples[name]):9.0f}   "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")

    print(f"Keras Adam(gradient_accumulation_steps={ACCUM_STEPS}) under MirroredStrategy:")
    print(f"  {keras_builtin_accumulation(strategy, x[:128], y[:128])}")

    print("Gradient all-reduces executed in one epoch (counted at run time):")
    for name, (updates, micro_batches, reductions) in all_reduce_counts(x[:256], y[:256]).items():
        print(f"  {name:<16} {micro_batches} micro-batches of {MICRO_BATCH}, {updates} updates, "
              f"{reductions} all-reduces: {reductions / updates:.2f} per update, "
              f"{reductions / micro_batches:.2f} per micro-batch")


if __name__ == "__main__":
    main()
