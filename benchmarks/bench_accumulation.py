"""Throughput and peak memory of fit_accumulated against its peers, measured in one run.

Throughput (samples/s, one process, peers timed in interleaved rounds so machine noise hits all alike;
the ratio reported is the median over rounds of the ratio within a round, of wall time and of the
process's CPU time, which a shared machine disturbs less):
    fit_accumulated(micro B, N)  vs  the same with `GradientNoiseScale()` and with
    `GradientNoiseScale(every=4)` (the noise scale's cost)  vs
    Model.fit(B)  vs  Model.fit(B) with Keras' built-in
    `gradient_accumulation_steps=N`  vs  Model.fit(B * N). The `fit_accumulated` peers share one
    model (so they differ by the noise scale alone), the others have their own; all are traced before
    the first round, and each round runs the peers in a shuffled order. Two workloads: a small CNN on
    32x32x3 images, compute-bound on a CPU, and an MLP on 64 features, where per-step dispatch weighs
    (8x the samples per round).
Peak memory (each peer in a fresh process, resident set size above the process' size just before
training): fit_accumulated(B, N) vs Model.fit(B) vs Model.fit(B * N).

    python benchmarks/bench_accumulation.py            # defaults below, a few minutes on 2 cores
    python benchmarks/bench_accumulation.py --rounds 3 --samples 1024
    python benchmarks/bench_accumulation.py --workloads mlp --no-memory    # the noise scale's cost
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402


def compiled(layers, optimizer):
    """A seeded Sequential of `layers`, compiled for 10-class sparse labels."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(layers)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def small_cnn(input_shape, optimizer):
    from keras import Input, layers

    return compiled(
        [
            Input(input_shape),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
        ],
        optimizer,
    )


def small_mlp(input_shape, optimizer):
    from keras import Input, layers

    return compiled(
        [
            Input(input_shape),
            layers.Dense(256, activation="relu"),
            layers.Dense(256, activation="relu"),
            layers.Dense(10),
        ],
        optimizer,
    )


def vectors(samples, features=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(samples, features)).astype("float32"), rng.integers(0, 10, size=samples)


def data(samples, size):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(samples, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=samples)
    return x, y


def peers(batch, accum_steps):
    """name -> (optimizer kwargs, train(model, x, y))."""
    import keras_trainx

    return {
        f"fit_accumulated({batch}x{accum_steps})": (
            {},
            lambda m, x, y: keras_trainx.fit_accumulated(
                m, x, y, batch_size=batch, accum_steps=accum_steps, verbose=0
            ),
        ),
        f"fit_accumulated({batch}x{accum_steps}) + GradientNoiseScale": (
            {},
            lambda m, x, y: keras_trainx.fit_accumulated(
                m, x, y, batch_size=batch, accum_steps=accum_steps, verbose=0,
                callbacks=[keras_trainx.planning.GradientNoiseScale()],
            ),
        ),
        f"fit_accumulated({batch}x{accum_steps}) + GradientNoiseScale(every=4)": (
            {},
            lambda m, x, y: keras_trainx.fit_accumulated(
                m, x, y, batch_size=batch, accum_steps=accum_steps, verbose=0,
                callbacks=[keras_trainx.planning.GradientNoiseScale(every=4)],
            ),
        ),
        f"Model.fit({batch})": ({}, lambda m, x, y: m.fit(x, y, batch_size=batch, verbose=0)),
        f"Keras gradient_accumulation_steps={accum_steps}": (
            {"gradient_accumulation_steps": accum_steps},
            lambda m, x, y: m.fit(x, y, batch_size=batch, verbose=0),
        ),
        f"Model.fit({batch * accum_steps})": (
            {},
            lambda m, x, y: m.fit(x, y, batch_size=batch * accum_steps, verbose=0),
        ),
    }


def throughput(args, build, x, y):
    """(samples/s, CPU-s per sample) of every peer in each round, peers in a shuffled order.

    Shuffled, not rotated: in a rotated order each peer always follows the same one, and what that
    one leaves behind (caches, the allocator, threads waking) then counts as the peer's own cost
    (measured: `every=4` then "cost" as much as `every=1`, 1.08x and 1.09x).
    """
    import keras

    runs = peers(args.batch, args.accum_steps)
    names = list(runs)
    models = {}
    warm_up = args.batch * args.accum_steps * 2
    for name, (optimizer_kwargs, train) in runs.items():
        if name.startswith("fit_accumulated") and names[0] in models:
            # One model for every fit_accumulated peer, so that they differ by the noise scale alone:
            # two instances of the same model differed by up to 5% in speed here (buffer placement).
            models[name] = models[names[0]]
        else:
            models[name] = build(x.shape[1:], keras.optimizers.Adam(1e-3, **optimizer_kwargs))
        train(models[name], x[:warm_up], y[:warm_up])
    rounds = []
    order = np.random.default_rng(0)
    for _ in range(args.rounds):
        rates = {}
        for position in order.permutation(len(names)):
            name = names[position]
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name][1](models[name], x, y)
            rates[name] = (len(x) / (time.perf_counter() - start), (time.process_time() - start_cpu) / len(x))
        rounds.append({name: rates[name] for name in names})
    return rounds


def memory_worker(args):
    """Runs one peer for one epoch in this fresh process; prints its peak RSS growth in MiB."""
    import keras

    name = args.memory_worker
    optimizer_kwargs, train = peers(args.batch, args.accum_steps)[name]
    x, y = data(args.memory_samples, args.memory_size)
    model = small_cnn(x.shape[1:], keras.optimizers.Adam(1e-3, **optimizer_kwargs))
    model(x[:2])
    before = current_rss_mib()
    train(model, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "before": before, "peak": peak, "growth": peak - before}))


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(args):
    names = [
        f"fit_accumulated({args.batch}x{args.accum_steps})",
        f"Model.fit({args.batch})",
        f"Model.fit({args.batch * args.accum_steps})",
    ]
    results = {}
    for name in names:
        command = [sys.executable, __file__, "--memory-worker", name] + forwarded(args)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    return results


def forwarded(args):
    return [
        "--batch", str(args.batch), "--accum-steps", str(args.accum_steps),
        "--memory-size", str(args.memory_size), "--memory-samples", str(args.memory_samples),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="micro-batch size B")
    parser.add_argument("--accum-steps", type=int, default=4, help="micro-batches per update N")
    parser.add_argument("--size", type=int, default=32, help="image side for throughput")
    parser.add_argument("--samples", type=int, default=1024, help="samples per timed epoch")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--memory-size", type=int, default=96, help="image side for memory")
    parser.add_argument("--memory-samples", type=int, default=512)
    parser.add_argument("--workloads", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args)
        return

    accumulated = f"fit_accumulated({args.batch}x{args.accum_steps})"
    workloads = {
        "cnn": (f"{args.size}x{args.size}x3 small CNN", small_cnn, lambda: data(args.samples, args.size)),
        "mlp": ("64-feature MLP (256-256-10)", small_mlp, lambda: vectors(8 * args.samples)),
    }
    for workload, build, make_data in (workloads[name] for name in args.workloads):
        x, y = make_data()
        rounds = throughput(args, build, x, y)
        print(f"Throughput, {workload}, Adam, {args.rounds} interleaved rounds of {len(x)} samples "
              "(ratio: median over rounds of fit_accumulated's samples/s over the peer's in the same "
              "round, min-max in brackets; best: the ratio of each one's fastest round, which a "
              "machine that stalls in whole time slices distorts least; CPU: the same median ratio "
              "of CPU-seconds per sample, this one's over fit_accumulated's):")
        for name in rounds[0]:
            rates = [r[name][0] for r in rounds]
            ratios = [r[accumulated][0] / r[name][0] for r in rounds]
            cpu = [r[name][1] / r[accumulated][1] for r in rounds]
            best = max(r[accumulated][0] for r in rounds) / max(rates)
            print(f"  {name:<56} {np.median(rates):7.0f} samples/s   fit_accumulated / this = "
                  f"{np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}), best {best:.2f}x; "
                  f"CPU {np.median(cpu):.2f}x")
    if not args.no_memory:
        report_memory(args)


def report_memory(args):
    peaks = memory(args)
    print(f"Peak memory, {args.memory_size}x{args.memory_size}x3, one epoch of "
          f"{args.memory_samples} samples, each in a fresh process (RSS growth during training):")
    reference = peaks[f"Model.fit({args.batch})"]["growth"]
    for name, result in peaks.items():
        print(f"  {name:<40} {result['growth']:8.0f} MiB   {result['growth'] / reference:.2f}x "
              f"Model.fit({args.batch})   (peak RSS {result['peak']:.0f} MiB)")


if __name__ == "__main__":
    main()
