"""Scaling past one machine: predicted throughput for 1..64 workers, and what sharding measures here.

Two cores cannot show a multi-worker speed-up, so this script predicts one from what does not depend
on the cores, and measures those quantities where it can:

- Table (default, seconds, no TensorFlow): samples/s, speed-up and efficiency of data-parallel
  training on W = 1, 2, 4, ..., 64 workers for the digits CNN (`keras_trainx.experiments.build_cnn`)
  and a BERT-base-sized model (110 M parameters), at 10 and 100 Gb/s, without accumulation (K = 1)
  and with `accum_steps` K = 8. Per update each worker runs K micro-steps of `t_step` (its
  micro-batch, weak scaling: the global batch grows with W) and then one ring all-reduce of the
  gradients, `4 x parameters` bytes (float32; fit_accumulated all-reduces once per window), which
  moves `2 (W-1)/W x` those bytes through each worker's link and takes `2 (W-1)` latency-bound steps:
      t_update = K t_step + 2 (W-1)/W * 4 P / bandwidth + 2 (W-1) latency
      samples/s = W K b / t_update;   speed-up = (samples/s) / (b / t_step)
  Assumptions: no overlap of communication with compute (fit_accumulated applies the window's
  gradients after its last micro-step), the link's full bandwidth (no contention, no compression),
  50 us per ring step, identical workers, input sharded (each worker augments only its share, so
  `t_step` does not grow with W). The digits step time was measured here (`--measure` measures it
  again); the BERT-base step time is not measured but derived: 6 x parameters x tokens FLOPs (Kaplan
  et al. 2020) for a micro-batch of 32 sequences of 128 tokens at a stated 125 TFLOP/s sustained
  (about 40% of an A100's bf16 peak). Pass your own with `--digits-step-ms` / `--bert-step-ms`.
- `--measure` (3.3 minutes on the loaded 2-core machine): trains the digits CNN with `fit_accumulated` on an
  `AugmentedSequence` of the 1,437 training digits (batch 64, accum_steps 2, 2 epochs) in one
  process alone and on W = 2 worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy), and prints
  per worker: transform calls (and their ratio to one process's), updates per epoch, parameters and
  bytes all-reduced per update, and the single process's micro-step time, which the table then uses.

Run: `python benchmarks/scaling_plan.py` (the table) or `python benchmarks/scaling_plan.py --measure`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKERS = (1, 2, 4, 8, 16, 32, 64)
BANDWIDTHS_GBPS = (10, 100)
ACCUM_STEPS = (1, 8)
LATENCY_S = 50e-6
DIGITS_FILTERS = (32, 32, 64, 64, 128, 128)
DIGITS_MICRO_BATCH = 64
#: Measured with `--measure` on this project's 2-core machine (loaded), one process, batch 64, input included.
DIGITS_STEP_MS = 103.5
BERT_SEQUENCES, BERT_TOKENS = 32, 128
BERT_FLOPS_PER_S = 125e12
MEASURE_EPOCHS, MEASURE_BATCH, MEASURE_ACCUM = 2, 64, 2
DEADLINE_S = 600


def digits_cnn_parameters(filters=DIGITS_FILTERS):
    """Trainable parameters of `build_cnn(filters)`: bias-free 3x3 convolutions, BatchNorm's gamma and
    beta, and the 10-way dense layer."""
    channels, total = 1, 0
    for width in filters:
        total += 9 * channels * width + 2 * width
        channels = width
    return total + channels * 10 + 10


def bert_base_parameters(layers=12, hidden=768, intermediate=3072, vocabulary=30522, positions=512):
    """BERT-base's parameters: embeddings (word, position, 2 token types, LayerNorm), 12 encoder layers
    (attention 4 x (h x h + h), 2 LayerNorms, feed-forward), pooler: 109,482,240."""
    embeddings = (vocabulary + positions + 2) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + 2 * hidden * intermediate + intermediate + hidden
    return embeddings + layers * layer + hidden * hidden + hidden


def update_time(step_s, parameters, workers, bandwidth_gbps, accum_steps):
    """Seconds per update: K micro-steps, then one ring all-reduce of 4 x parameters bytes."""
    gradient_bytes = 4 * parameters
    transfer = 2 * (workers - 1) / workers * gradient_bytes * 8 / (bandwidth_gbps * 1e9)
    return accum_steps * step_s + transfer + 2 * (workers - 1) * LATENCY_S


def table(name, step_s, parameters, micro_batch):
    """The prediction for one model, as Markdown."""
    single = micro_batch / step_s
    lines = [
        f"**{name}**: {parameters:,} parameters ({4 * parameters / 1e6:,.2f} MB all-reduced per update), "
        f"micro-batch {micro_batch} per worker, step {step_s * 1e3:.1f} ms ({single:,.0f} samples/s on one worker).",
        "",
        "| W | " + " | ".join(f"{bw} Gb/s, K={k}" for bw in BANDWIDTHS_GBPS for k in ACCUM_STEPS) + " |",
        "|---:|" + "---:|" * (len(BANDWIDTHS_GBPS) * len(ACCUM_STEPS)),
    ]
    for workers in WORKERS:
        cells = []
        for bandwidth in BANDWIDTHS_GBPS:
            for accum in ACCUM_STEPS:
                rate = workers * accum * micro_batch / update_time(step_s, parameters, workers, bandwidth, accum)
                speed_up = rate / single
                cells.append(f"{rate:,.0f}/s, {speed_up:.1f}x ({speed_up / workers:.0%})")
        lines.append(f"| {workers} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(digits_step_ms, bert_step_ms):
    print(table("Digits CNN", digits_step_ms / 1e3, digits_cnn_parameters(), DIGITS_MICRO_BATCH))
    print()
    print(table(f"BERT-base-sized ({BERT_SEQUENCES} x {BERT_TOKENS} tokens)", bert_step_ms / 1e3,
                bert_base_parameters(), BERT_SEQUENCES))
    print("\nCells: samples/s, speed-up over one worker (efficiency). Assumptions: see the script's docstring.")


def bert_step_ms():
    """6 x parameters x tokens FLOPs at BERT_FLOPS_PER_S."""
    return 6 * bert_base_parameters() * BERT_SEQUENCES * BERT_TOKENS / BERT_FLOPS_PER_S * 1e3


# --- measurement: W = 1 and W = 2 worker processes on 127.0.0.1 --------------------------------


def run_workers(count, directory):
    """Runs `count` workers (one process alone when 1); returns their JSON results."""
    from keras_trainx.distribute.launch import free_ports

    outputs = [os.path.join(directory, f"w{count}_{i}.json") for i in range(count)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    processes = []
    for index, output in enumerate(outputs):
        environment = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
        environment.pop("TF_CONFIG", None)
        if count > 1:
            environment["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(output + ".log", "w")
        processes.append(subprocess.Popen([sys.executable, __file__, "--worker", output], env=environment,
                                          stdout=subprocess.DEVNULL, stderr=log))
        log.close()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    if any(p.returncode != 0 for p in processes):
        logs = "\n".join(open(output + ".log").read()[-3000:] for output in outputs)
        raise SystemExit(f"{count} worker(s) failed or ran past {DEADLINE_S} s:\n{logs}")
    results = []
    for output in outputs:
        with open(output) as file:
            results.append(json.load(file))
    return results


def worker(output):
    """One worker: trains the digits CNN on an AugmentedSequence that counts its transform calls."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import albumentations as A
    import keras
    import numpy as np

    import keras_trainx
    from keras_trainx.experiments import build_cnn, load_digits_standardized

    class CountCalls(A.ImageOnlyTransform):
        def __init__(self, path, p=1.0):
            super().__init__(p=p)
            self.path = path

        def apply(self, img, **params):
            with open(self.path, "ab") as file:
                file.write(b".")
            return img

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    strategy = keras_trainx.distribute.auto_strategy()
    x, y, _, _ = load_digits_standardized()
    count_path = output + ".count"
    sequence = keras_trainx.AugmentedSequence(
        x, y, batch_size=MEASURE_BATCH, seed=0,
        transform=[A.Affine(rotate=(-10, 10), p=0.5), CountCalls(count_path)])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build_cnn(DIGITS_FILTERS)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = EpochTimes()
    keras_trainx.fit_accumulated(model, sequence, accum_steps=MEASURE_ACCUM, epochs=MEASURE_EPOCHS, verbose=0,
                                 callbacks=[times])
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    with open(output, "w") as file:
        json.dump({
            "replicas": strategy.num_replicas_in_sync,
            "calls": os.path.getsize(count_path),
            "updates": int(model.optimizer.iterations.numpy()),
            "trainable": trainable,
            "step_ms": times.times[-1] / len(sequence) * 1e3,  # the last epoch: tracing is done
        }, file)


def measure():
    """Runs W = 1 and W = 2, prints what they measured; returns the single process's step time (ms)."""
    with tempfile.TemporaryDirectory() as directory:
        alone = run_workers(1, directory)[0]
        pair = run_workers(2, directory)
    assert alone["trainable"] == digits_cnn_parameters(), (alone["trainable"], digits_cnn_parameters())
    print(f"Digits CNN, {MEASURE_EPOCHS} epochs of 1,437 images, batch {MEASURE_BATCH}, "
          f"accum_steps {MEASURE_ACCUM}, input sharded:")
    print("| run | replicas | transform calls | vs one process | updates per epoch | gradient bytes per update (4 x parameters) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in [("one process", alone)] + [(f"worker {i} of 2", r) for i, r in enumerate(pair)]:
        print(f"| {name} | {result['replicas']} | {result['calls']} | {result['calls'] / alone['calls']:.3f} | "
              f"{result['updates'] / MEASURE_EPOCHS:g} | {4 * result['trainable']:,} |")
    print(f"\nOne process's micro-step (batch {MEASURE_BATCH}, input included, last epoch): {alone['step_ms']:.1f} ms")
    return alone["step_ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true",
                        help="run W = 1 and W = 2 on 127.0.0.1 first; the table then uses the measured step")
    parser.add_argument("--digits-step-ms", type=float, default=DIGITS_STEP_MS)
    parser.add_argument("--bert-step-ms", type=float, default=None,
                        help="default: 6 x parameters x tokens at 125 TFLOP/s")
    parser.add_argument("--worker", metavar="OUTPUT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker)
        return
    digits_step = measure() if arguments.measure else arguments.digits_step_ms
    print()
    print_tables(digits_step, arguments.bert_step_ms if arguments.bert_step_ms is not None else bert_step_ms())


if __name__ == "__main__":
    main()
