"""What fit_accumulated's dense gradient accumulator costs for a large Embedding, measured in one run.

fit_accumulated adds each micro-batch's gradient into a dense accumulator of every trainable
variable's shape (that is why its Adam is standard Adam on sparse gradients): for an Embedding of
V rows and D columns, V * D * 4 bytes more state, and per micro-step a densified V x D gradient
added into it, where Keras' `Model.fit` hands the optimizer a `tf.IndexedSlices` of the batch's
rows. Workload: Embedding(V, D) -> mean over 32 tokens -> Dense(10), micro-batches of 32 sequences
(1,024 token ids drawn uniformly), for V in {50k, 250k} and D in {64, 256}, with SGD (whose sparse
update touches only the batch's rows) and Adam (whose Keras update already reads and writes its
dense V x D moments every step).

Time (one process, each configuration's peers timed in interleaved rounds, rotated; per-round
ratio of milliseconds per micro-batch, median over rounds, min-max in brackets; wall time and
process CPU time, which a shared machine distorts less):
    fit_accumulated(B x 1) and fit_accumulated(B x N)  vs  Model.fit(B).
Memory: the accumulator's size (V * D * 4 bytes plus the Dense layer's), next to the table and the
optimizer's own state; with --memory, the peak resident-set growth during one run of each peer, each
in a fresh process with model and optimizer state built first (Linux: the peak is reset through
/proc/self/clear_refs just before training).

    python benchmarks/bench_sparse_embedding.py                  # about 5 minutes on 2 cores
    python benchmarks/bench_sparse_embedding.py --memory         # adds 24 fresh-process runs, ~5 min
    python benchmarks/bench_sparse_embedding.py --vocabularies 50000 --dims 64 --rounds 3
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

LENGTH, CLASSES = 32, 10


def build(vocabulary, dim, optimizer):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(vocabulary, dim),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES),
    ])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def make_optimizer(name):
    import keras

    return {"SGD": lambda: keras.optimizers.SGD(0.1), "Adam": lambda: keras.optimizers.Adam(1e-3)}[name]()


def tokens(vocabulary, samples):
    rng = np.random.default_rng(0)
    return (rng.integers(0, vocabulary, size=(samples, LENGTH)).astype("int32"),
            rng.integers(0, CLASSES, size=samples))


def peers(batch, accum_steps):
    """name -> train(model, x, y); each consumes len(x) / batch micro-batches."""
    import keras_trainx

    def accumulated(steps):
        return lambda m, x, y: keras_trainx.fit_accumulated(
            m, x, y, batch_size=batch, accum_steps=steps, shuffle=False, verbose=0)

    return {
        f"Model.fit({batch})": lambda m, x, y: m.fit(x, y, batch_size=batch, shuffle=False, verbose=0),
        f"fit_accumulated({batch} x 1)": accumulated(1),
        f"fit_accumulated({batch} x {accum_steps})": accumulated(accum_steps),
    }


def timed_rounds(args, vocabulary, dim, optimizer_name):
    """Per round and peer: (wall ms, CPU ms) per micro-batch."""
    runs = peers(args.batch, args.accum_steps)
    names = list(runs)
    x, y = tokens(vocabulary, args.batch * args.micro_batches)
    models = {name: build(vocabulary, dim, make_optimizer(optimizer_name)) for name in names}
    for name in names:  # trace and build the optimizer state before timing
        runs[name](models[name], x[: 2 * args.batch * args.accum_steps],
                   y[: 2 * args.batch * args.accum_steps])
    rounds = []
    for index in range(args.rounds):
        per_micro_batch = {}
        for name in names[index % len(names):] + names[: index % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](models[name], x, y)
            per_micro_batch[name] = (1e3 * (time.perf_counter() - wall) / args.micro_batches,
                                     1e3 * (time.process_time() - cpu) / args.micro_batches)
        rounds.append(per_micro_batch)
    state = {
        "table": vocabulary * dim * 4,
        "accumulator": sum(int(np.prod(v.shape)) * 4 for v in models[names[0]].trainable_variables),
        "optimizer": sum(int(np.prod(v.shape)) * 4 for v in models[names[0]].optimizer.variables
                         if len(v.shape) > 0),
    }
    return rounds, state


def memory_worker(args):
    """One peer, one epoch, in this fresh process; prints its peak RSS growth in MiB."""
    vocabulary, dim, optimizer_name, name = json.loads(args.memory_worker)
    x, y = tokens(vocabulary, args.batch * args.micro_batches)
    model = build(vocabulary, dim, make_optimizer(optimizer_name))
    model(x[:2])
    model.optimizer.build(model.trainable_variables)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak RSS, to the current RSS
        f.write("5")
    before = status_mib("VmHWM")
    peers(args.batch, args.accum_steps)[name](model, x, y)
    print(json.dumps({"before": before, "growth": status_mib("VmHWM") - before}))


def status_mib(field):
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def peak_growth(args, vocabulary, dim, optimizer_name, name):
    command = [sys.executable, __file__, "--memory-worker",
               json.dumps([vocabulary, dim, optimizer_name, name]),
               "--batch", str(args.batch), "--accum-steps", str(args.accum_steps),
               "--micro-batches", str(args.micro_batches)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["growth"]


def mib(n_bytes):
    return n_bytes / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabularies", type=int, nargs="+", default=[50_000, 250_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--optimizers", nargs="+", default=["SGD", "Adam"])
    parser.add_argument("--batch", type=int, default=32, help="micro-batch size B (sequences)")
    parser.add_argument("--accum-steps", type=int, default=4, help="micro-batches per update N")
    parser.add_argument("--micro-batches", type=int, default=16, help="micro-batches per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--memory", action="store_true", help="also peak RSS, fresh processes")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args)
        return

    names = list(peers(args.batch, args.accum_steps))
    reference = names[0]
    print(f"Embedding(V, D) -> mean -> Dense({CLASSES}); micro-batch {args.batch} x {LENGTH} tokens; "
          f"{args.rounds} interleaved rounds of {args.micro_batches} micro-batches per peer. "
          "Time per micro-batch: median over rounds; ratio: median of per-round ratios to "
          f"{reference} (min-max).")
    for optimizer_name in args.optimizers:
        for vocabulary in args.vocabularies:
            for dim in args.dims:
                rounds, state = timed_rounds(args, vocabulary, dim, optimizer_name)
                print(f"\n{optimizer_name}, V={vocabulary:,}, D={dim}: table {mib(state['table']):.1f} "
                      f"MiB; {optimizer_name} state {mib(state['optimizer']):.1f} MiB; fit_accumulated's "
                      f"accumulator {mib(state['accumulator']):.1f} MiB (+{state['accumulator'] / state['table']:.2f}x "
                      "the table)")
                for name in names:
                    for column, label in ((0, "wall"), (1, "CPU ")):
                        values = [r[name][column] for r in rounds]
                        ratios = [r[name][column] / r[reference][column] for r in rounds]
                        print(f"  {name:<26} {label} {np.median(values):8.2f} ms/micro-batch   "
                              f"{np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
                if args.memory:
                    growth = {name: peak_growth(args, vocabulary, dim, optimizer_name, name)
                              for name in names}
                    print("  peak RSS growth, one run in a fresh process: " + ", ".join(
                        f"{name} {value:.0f} MiB ({value / growth[reference]:.2f}x)"
                        for name, value in growth.items()))


if __name__ == "__main__":
    main()
