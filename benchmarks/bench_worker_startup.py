"""Worker processes: start-up time and memory, `to_tf_dataset()`'s pool against Keras' own process pool.

The same `AugmentedSequence` (256 images of 64x64x3, batches of 32, flip + brightness/contrast + affine,
`workers=2, use_multiprocessing=True`) is read two ways, each in a fresh Python process that has
imported NumPy, albumentations, TensorFlow, Keras and keras_trainx before the clock starts:

- Keras: the sequence handed to Keras' own `PyDataset` adapter, as `Model.fit` does (`PyDatasetAdapter`,
  `on_epoch_begin()`, `get_tf_dataset()`): a `multiprocessing.Pool` forked from the training process;
- ours: `sequence.to_tf_dataset()`: workers forked from a launcher process without TensorFlow.

Timed: from building the dataset to holding its first two batches (Keras builds two batches in the
training process for its element spec, then starts its pool; `to_tf_dataset()` starts the launcher, the
workers, and has its first and last batch built by them for its element spec). While the epoch is read to
its end, every 20 ms: each worker's unique memory (largest USS: `Private_Clean + Private_Dirty` of
`/proc/<pid>/smaps_rollup`, the memory that goes when it ends) and whether a TensorFlow library is mapped
in it (`/proc/<pid>/maps`).
For ours, the launcher's USS, the time to the first two batches of a second dataset in the same
process (the launcher is started once per training process), and, as the floor of the first, the time
a fresh interpreter takes to import NumPy, OpenCV and albumentations (what the launcher imports). Three rounds, the two peers alternating
in a rotated order; medians. The load average at the start and the end is printed: the figures are only
comparable between peers of the same run.

Run: `python benchmarks/bench_worker_startup.py` (about a minute on 2 idle cores), `--rounds N`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from process_tree import descendants  # noqa: E402

PEERS = ("keras", "ours")
LABELS = {"keras": "Keras PyDataset adapter, multiprocessing.Pool (fork)",
          "ours": "AugmentedSequence.to_tf_dataset() (launcher + forks)"}


def _uss_mib(pid: int) -> float:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _maps_tensorflow(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "tensorflow" in maps.read()


class _Sampler:
    """Samples the processes below `root` every 20 ms while it runs: each one's largest USS, and whether
    a TensorFlow library is mapped in it (Keras' pool ends its workers once it has sent every batch)."""

    def __init__(self, root: int) -> None:
        import threading

        self.root, self.uss, self.mapped = root, {}, {}
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            for pid, _ in descendants(self.root):
                try:
                    self.uss[pid] = max(self.uss.get(pid, 0.0), _uss_mib(pid))
                    self.mapped[pid] = self.mapped.get(pid, False) or _maps_tensorflow(pid)
                except (OSError, KeyError):  # it ended
                    continue
            time.sleep(0.02)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def serve(peer: str) -> dict:
    """One measurement, in this (fresh) process."""
    import albumentations as A
    import numpy as np
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter  # what fit uses

    from keras_trainx.data import AugmentedSequence, process_pool

    x = np.random.default_rng(0).integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
    transform = [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5), A.Affine(rotate=(-15, 15), p=0.5)]

    def sequence() -> AugmentedSequence:
        return AugmentedSequence(x, np.arange(256), batch_size=32, seed=0, transform=transform, workers=2,
                                 use_multiprocessing=True)

    def make_keras() -> object:
        adapter = PyDatasetAdapter(sequence(), shuffle=False)
        adapter.on_epoch_begin()
        return adapter.get_tf_dataset()

    def first_two(make: object) -> tuple[float, object]:
        start = time.perf_counter()
        dataset = make()  # type: ignore[operator]
        iterator = iter(dataset)
        next(iterator)
        next(iterator)
        return time.perf_counter() - start, (dataset, iterator)

    sampler = _Sampler(os.getpid())
    result: dict = {"peer": peer}
    result["seconds"], alive = first_two(make_keras if peer == "keras" else lambda: sequence().to_tf_dataset())
    for _ in alive[1]:  # the rest of the epoch, so that every worker has worked
        pass
    sampler.stop()
    launcher = process_pool.launcher().process.pid if peer == "ours" else None
    workers = [pid for pid in sampler.uss if pid != launcher]
    result["workers"] = len(workers)
    result["uss"] = [sampler.uss[pid] for pid in workers]
    result["tensorflow_mapped"] = [sampler.mapped[pid] for pid in workers]
    if launcher is not None:
        result["launcher_uss"] = sampler.uss[launcher]
        del alive  # its workers end; a second dataset finds the launcher running
        result["second_seconds"] = first_two(lambda: sequence().to_tf_dataset())[0]
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a measurement counts as hung")
    parser.add_argument("--serve", choices=PEERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve)), flush=True)
        os._exit(0)  # Keras' pool threads can hold up the interpreter's exit; the figures are out
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {peer: [] for peer in PEERS}
    imports: list[float] = []
    hung = {peer: 0 for peer in PEERS}
    for round_number in range(args.rounds):
        order = PEERS[round_number % 2:] + PEERS[:round_number % 2]
        for peer in order:
            try:
                done = subprocess.run([sys.executable, __file__, "--serve", peer], capture_output=True, text=True,
                                      timeout=args.timeout)
            except subprocess.TimeoutExpired:  # seen with Keras' pool: a fork of a threaded process can hang
                hung[peer] += 1
                continue
            if done.returncode:
                sys.exit(f"the {peer} measurement failed:\n{done.stderr[-3000:]}")
            runs[peer].append(json.loads(done.stdout.strip().splitlines()[-1]))
        start = time.perf_counter()  # the launcher's floor: a fresh interpreter importing what it needs
        subprocess.run([sys.executable, "-c", "import numpy, cv2, albumentations"], check=True, timeout=600)
        imports.append(time.perf_counter() - start)
    load_after = os.getloadavg()
    print(f"{args.rounds} rounds; load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{os.cpu_count()} cores")
    keras_seconds = _median([run["seconds"] for run in runs["keras"]])
    print(f"{'peer':58s} {'first 2 batches':>16s} {'vs Keras':>9s} {'worker USS (MiB)':>17s} {'TF mapped':>10s}")
    for peer in PEERS:
        seconds = _median([run["seconds"] for run in runs[peer]])
        uss = _median([value for run in runs[peer] for value in run["uss"]])
        mapped = sum(any(run["tensorflow_mapped"]) for run in runs[peer])
        print(f"{LABELS[peer]:58s} {seconds:15.2f}s {seconds / keras_seconds:8.1f}x {uss:17.1f} "
              f"{mapped:>4d} of {len(runs[peer])}" + (f"  ({hung[peer]} run(s) hung, not counted)" if hung[peer] else ""))
    ours = runs["ours"]
    print(f"ours: worker processes per run {sorted({run['workers'] for run in ours})}, launcher USS "
          f"{_median([run['launcher_uss'] for run in ours]):.1f} MiB, a second to_tf_dataset() in the same process: "
          f"{_median([run['second_seconds'] for run in ours]):.2f}s to its first two batches; a fresh interpreter "
          f"importing numpy, cv2 and albumentations (the launcher's start): {_median(imports):.2f}s")


if __name__ == "__main__":
    main()
