"""A worker of test_distribute_launch.py's restart test, run by `keras_trainx.distribute.launch`.

Run as `python launch_resume_worker.py FOLDER`: it trains multiworker_worker's MLP with fit_accumulated
for `EPOCHS` epochs under `auto_strategy()`, with `keras.callbacks.BackupAndRestore` in a folder of
its own (Keras 3 writes the backup from every worker), prints a line as each epoch begins, and saves
its final weights to FOLDER/worker{index}.npz. The first time it runs, worker 1 dies (`os._exit(1)`)
after the first window of the second epoch: the launcher must restart the group, which resumes from
the backup of the first epoch. The test imports `train` for its uninterrupted single-process reference.
"""

import json
import os
import pathlib
import sys

import keras
import numpy as np

import multiworker_worker as base

EPOCHS = 3
DYING_WORKER = 1
DYING_EPOCH = 1


class DieOnce(keras.callbacks.Callback):
    """Prints each epoch's start; on the dying worker, ends the process in `DYING_EPOCH` unless `marker` exists."""

    def __init__(self, index: int, marker: pathlib.Path) -> None:
        super().__init__()
        self.index, self.marker, self.epoch = index, marker, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        print(f"epoch {epoch} begins", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        if self.index == DYING_WORKER and self.epoch == DYING_EPOCH and not self.marker.exists():
            self.marker.touch()
            print("dying", flush=True)
            os._exit(1)


def train(strategy, callbacks):
    """The MLP trained for EPOCHS epochs under `strategy`; returns the model."""
    with strategy.scope():
        model = base.build_model()
    x, y = base.data()
    import keras_trainx

    keras_trainx.fit_accumulated(
        model, x, y, batch_size=base.BATCH_SIZE, accum_steps=base.ACCUM_STEPS, epochs=EPOCHS,
        shuffle=False, verbose=0, callbacks=callbacks,
    )
    return model


def main(folder):
    import logging

    import keras_trainx

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = keras_trainx.distribute.auto_strategy()
    callbacks = [
        keras.callbacks.BackupAndRestore(str(folder / f"backup{index}")),
        DieOnce(index, folder / "died"),
    ]
    model = train(strategy, callbacks)
    np.savez(folder / f"worker{index}.npz", replicas=strategy.num_replicas_in_sync,
             iterations=model.optimizer.iterations.numpy(),
             **{f"weight_{i}": w for i, w in enumerate(model.get_weights())})


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
