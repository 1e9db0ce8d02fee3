"""First-call time of fit_accumulated against Model.fit: trace + one epoch, in a fresh process.

What a user waits for before the first epoch ends: each measurement starts a new Python process,
builds and compiles the model, and times one `fit` call of one epoch (tracing included). Peers:
`Model.fit` at the micro-batch and `fit_accumulated(micro, accum_steps)`, compiled (the default),
`jit_compile=True` and `run_eagerly=True`. Models: the digits CNN of `keras_trainx.experiments` and
tiny KerasHub task models (Llama causal LM, DistilBERT classifier with its preprocessor), built from
configs (no download). Measurements of the peers alternate (A, B, A, B, ...) so that machine noise
hits both; the figures are the medians of `fit_accumulated / Model.fit` over the rounds, of wall
time and of the CPU-seconds the process spent in the call (steadier on a shared machine).

    python benchmarks/bench_first_call.py                    # 3 rounds, every model and mode
    python benchmarks/bench_first_call.py --rounds 5 --models llama --modes compiled
    python benchmarks/bench_first_call.py --phases --models distilbert --modes jit

`--phases` also says where each first call's time goes, from TensorFlow's own log of its XLA
compilations (`TF_CPP_VMODULE=device_compiler=2,device_compilation_profiler=2`) and the threads' CPU
time sampled every 50 ms: tracing and graph building (from the start of the call to the first XLA
compilation), each XLA compilation (the cluster's name), and running; each phase with its wall time,
its CPU time and the CPU time of its busiest threads (several busy threads: the phase runs in
parallel).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MODELS = ("digits_cnn", "llama", "distilbert")
MODES = ("compiled", "jit", "eager")
MICRO, ACCUM_STEPS = 8, 4


def build(name: str, mode: str):
    """(model, x, y) for `name`, compiled in `mode`, seeded."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    compile_options = {"jit_compile": mode == "jit", "run_eagerly": mode == "eager"}
    if name == "digits_cnn":
        from keras_trainx.experiments import build_cnn, load_digits_standardized

        x, y, _, _ = load_digits_standardized()
        model = build_cnn()
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_options)
        return model, x[:256], y[:256]
    import keras_hub

    if name == "llama":
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=64, num_layers=2, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=16, intermediate_dim=32, dropout=0.0)
        model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
        x = {"token_ids": np.random.randint(1, 64, size=(64, 16)),
             "padding_mask": np.ones((64, 16), "int32")}
        y = np.random.randint(1, 64, size=(64, 16))
    else:
        vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox"]
        backbone = keras_hub.models.DistilBertBackbone(
            vocabulary_size=len(vocabulary), num_layers=2, num_heads=2, hidden_dim=16,
            intermediate_dim=32, max_sequence_length=16, dropout=0.0)
        preprocessor = keras_hub.models.DistilBertTextClassifierPreprocessor(
            keras_hub.models.DistilBertTokenizer(vocabulary=vocabulary), sequence_length=12)
        model = keras_hub.models.DistilBertTextClassifier(backbone, num_classes=2,
                                                          preprocessor=preprocessor, dropout=0.0)
        x = ["the quick brown fox", "the fox", "quick brown", "the brown fox"] * 16
        y = np.random.randint(0, 2, size=64)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_options)
    return model, x, y


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread id (from /proc)."""
    seconds = {}
    for thread in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{thread}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[thread] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


class ThreadSampler:
    """Samples `(time.time(), process CPU s, thread_cpu_seconds())` every 50 ms while running."""

    def __init__(self) -> None:
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), time.process_time(), thread_cpu_seconds()))
            time.sleep(0.05)

    def __enter__(self) -> "ThreadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), time.process_time(), thread_cpu_seconds()))


def measure(name: str, mode: str, peer: str, phases: bool = False) -> tuple:
    """Wall and CPU seconds of one first `fit` call of one epoch (run inside a fresh process); with
    `phases`, also its start time and the thread samples."""
    import keras_trainx

    model, x, y = build(name, mode)
    sampler = ThreadSampler() if phases else None
    if sampler is not None:
        sampler.__enter__()
    started = time.time()
    start, start_cpu = time.perf_counter(), time.process_time()
    if peer == "fit":
        model.fit(x, y, batch_size=MICRO, epochs=1, verbose=0)
    else:
        keras_trainx.fit_accumulated(model, x, y, batch_size=MICRO, accum_steps=ACCUM_STEPS,
                                     epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if sampler is None:
        return wall, cpu
    sampler.__exit__()
    return wall, cpu, started, sampler.samples


def in_fresh_process(name: str, mode: str, peer: str, phases: bool = False) -> tuple:
    """`measure` in a new process: (wall, CPU), and with `phases` the list of phases (see `phases_of`)."""
    environment = dict(os.environ)
    if phases:
        environment.update(TF_CPP_MIN_LOG_LEVEL="0",
                           TF_CPP_VMODULE="device_compiler=2,device_compilation_profiler=2")
    finished = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([name, mode, peer, phases])],
        check=True, capture_output=True, text=True, env=environment,
    )
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    if not phases:
        return tuple(result)
    wall, cpu, started, samples = result
    return wall, cpu, phases_of(started, started + wall, samples, finished.stderr)


def phases_of(start: float, end: float, samples: list, log: str) -> list[tuple[str, float, float, list[float]]]:
    """`(phase, wall s, CPU s, the 3 busiest threads' CPU s)` from the start of the call to its end,
    cut at each XLA compilation's start and end as TensorFlow logged them."""
    cuts = [("trace and graph", start)]
    begun: dict[str, float] = {}
    for line in log.splitlines():
        stamp = re.match(r"\w\d{4} \d\d:\d\d:(\d+\.\d+)", line)
        compiling = re.search(r"Instantly compiling for signature: __inference_(\S+?)_\d+$", line)
        compiled = re.search(r"Compiled __inference_(\S+?)_\d+ 1 times, compile time: (\d+) us", line)
        if stamp and compiling:
            begun[compiling.group(1)] = float(stamp.group(1))
        elif compiled and compiled.group(1) in begun:
            cluster = compiled.group(1)
            cuts += [(f"XLA compile {cluster}", begun[cluster]),
                     ("run", begun[cluster] + int(compiled.group(2)) / 1e6)]
    cuts.append(("end", end))

    def nearest(moment: float) -> tuple:
        return min(samples, key=lambda sample: abs(sample[0] - moment))

    phases = []
    for (name, begin), (_, finish) in zip(cuts, cuts[1:]):
        first, last = nearest(begin), nearest(finish)
        busiest = sorted((seconds - first[2].get(thread, 0.0) for thread, seconds in last[2].items()),
                         reverse=True)[:3]
        phases.append((name, finish - begin, last[1] - first[1], [round(b, 2) for b in busiest]))
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--phases", action="store_true",
                        help="also print where each first call's time goes (trace, XLA compilations, run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(measure(*json.loads(arguments.child))))
        return
    print(f"first call (trace + one epoch, fresh process), micro-batch {MICRO}, "
          f"accum_steps {ACCUM_STEPS}, {arguments.rounds} alternating rounds")
    print(f"{'model':<12} {'mode':<9} {'Model.fit s':>12} {'fit_accumulated s':>18} {'wall ratio':>11} "
          f"{'CPU-s ratio':>12}")
    for name in arguments.models:
        for mode in arguments.modes:
            fit, accumulated, wall, cpu = [], [], [], []
            for _ in range(arguments.rounds):
                fit.append(in_fresh_process(name, mode, "fit", arguments.phases))
                accumulated.append(in_fresh_process(name, mode, "fit_accumulated", arguments.phases))
                wall.append(accumulated[-1][0] / fit[-1][0])
                cpu.append(accumulated[-1][1] / fit[-1][1])
                for peer, result in (("Model.fit", fit[-1]), ("fit_accumulated", accumulated[-1])):
                    for phase, seconds, cpu_seconds, busiest in (result[2] if arguments.phases else []):
                        print(f"    {peer:<16} {phase:<40} {seconds:6.2f} s  CPU {cpu_seconds:6.2f} s  "
                              f"busiest threads {busiest}", flush=True)
            print(f"{name:<12} {mode:<9} {statistics.median(f[0] for f in fit):>12.2f} "
                  f"{statistics.median(a[0] for a in accumulated):>18.2f} {statistics.median(wall):>10.2f}x "
                  f"{statistics.median(cpu):>11.2f}x  (wall rounds {min(wall):.2f}-{max(wall):.2f})", flush=True)


if __name__ == "__main__":
    main()
