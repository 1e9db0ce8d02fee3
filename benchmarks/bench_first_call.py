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
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
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


def measure(name: str, mode: str, peer: str) -> tuple[float, float]:
    """Wall and CPU seconds of one first `fit` call of one epoch (run inside a fresh process)."""
    import keras_trainx

    model, x, y = build(name, mode)
    start, start_cpu = time.perf_counter(), time.process_time()
    if peer == "fit":
        model.fit(x, y, batch_size=MICRO, epochs=1, verbose=0)
    else:
        keras_trainx.fit_accumulated(model, x, y, batch_size=MICRO, accum_steps=ACCUM_STEPS,
                                     epochs=1, verbose=0)
    return time.perf_counter() - start, time.process_time() - start_cpu


def in_fresh_process(name: str, mode: str, peer: str) -> tuple[float, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([name, mode, peer])],
        check=True, capture_output=True, text=True,
    ).stdout
    return tuple(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
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
                fit.append(in_fresh_process(name, mode, "fit"))
                accumulated.append(in_fresh_process(name, mode, "fit_accumulated"))
                wall.append(accumulated[-1][0] / fit[-1][0])
                cpu.append(accumulated[-1][1] / fit[-1][1])
            print(f"{name:<12} {mode:<9} {statistics.median(f[0] for f in fit):>12.2f} "
                  f"{statistics.median(a[0] for a in accumulated):>18.2f} {statistics.median(wall):>10.2f}x "
                  f"{statistics.median(cpu):>11.2f}x  (wall rounds {min(wall):.2f}-{max(wall):.2f})", flush=True)


if __name__ == "__main__":
    main()
