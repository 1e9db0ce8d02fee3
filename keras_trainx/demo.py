"""Train a small Mish CNN on scikit-learn's bundled digits with fit_accumulated, offline.

The demo strings the package together: `auto_strategy()` picks the device, an `AugmentedSequence`
feeds albumentations-augmented micro-batches, the optimizer follows a `WarmUp` + cosine schedule,
`fit_accumulated` trains with an effective batch of `batch_size * accum_steps`, and the saved
`.keras` model is reloaded with `keras_trainx.load_model` and checked to predict identically.
"""

import os
from typing import Any

import numpy as np

from keras_trainx.extras import require
from keras_trainx.validation import check_int, check_output_folder

#: Training digits after the 80/20 split: the largest micro-batch the demo accepts.
TRAINING_DIGITS = 1437


def load_digits_split(seed: int) -> list[np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (shipped with the wheel) as uint8 images, 80/20 split."""
    load_digits = require("sklearn.datasets", "keras-trainx demo").load_digits
    train_test_split = require("sklearn.model_selection", "keras-trainx demo").train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype("uint8")[..., None]
    return train_test_split(images, digits.target, test_size=0.2, random_state=seed,
                            stratify=digits.target)


def build_model(learning_rate: Any) -> Any:
    import keras

    import keras_trainx
    from keras_trainx.layers import Mish

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, 3, padding="same"),
            Mish(),
            keras.layers.Conv2D(64, 3, padding="same", activation=keras_trainx.activations.mish),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def check_arguments(epochs: int = 12, batch_size: int = 32, accum_steps: int = 4,
                    output_dir: str | os.PathLike = "keras_trainx_demo", seed: int = 0, verbose: int = 2) -> None:
    """Raises `TypeError`/`ValueError` naming the first of `run`'s arguments that has no meaning.

    Example:

    >>> check_arguments(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: `epochs` must be an int >= 1; received epochs=0.
    """
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1, maximum=TRAINING_DIGITS,
              hint=f"It is the micro-batch; the demo trains on {TRAINING_DIGITS} digits.")
    check_int("accum_steps", accum_steps, minimum=1)
    check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    check_int("verbose", verbose, minimum=0, maximum=2)
    check_output_folder("output_dir", output_dir)


def learning_rate_schedule(total_updates: int) -> Any:
    """The demo's schedule: a linear warm-up over a tenth of the updates, then a cosine decay.

    With fewer than two updates in all there is no warm-up (the one update uses the peak rate).

    Example:

    >>> schedule = learning_rate_schedule(1)
    >>> schedule.warmup_steps, round(float(schedule(0)), 6)
    (0, 0.003)
    """
    import keras

    from keras_trainx.schedules import WarmUp

    warmup_steps = min(max(1, total_updates // 10), total_updates - 1)
    return WarmUp(keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=total_updates - warmup_steps),
                  warmup_steps=warmup_steps)


def save_model(model: Any, path: str) -> None:
    """Saves `model` to `path` under a temporary name first: an interrupted save leaves no file at all."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f".{name}.{os.getpid()}.partial.keras")
    try:
        model.save(partial)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def run(epochs: int = 12, batch_size: int = 32, accum_steps: int = 4,
        output_dir: str | os.PathLike = "keras_trainx_demo", seed: int = 0, verbose: int = 2) -> bool:
    """Trains, evaluates, saves and reloads the demo model; returns whether predictions match.

    Args:
        epochs: training epochs.
        batch_size: the micro-batch size (per replica).
        accum_steps: micro-batches per optimizer update.
        output_dir: folder the `.keras` model is saved in (created if missing, once trained; checked
            first: it must be a folder, or creatable, and writable).
        seed: random seed of the data split, augmentation and initial weights.
        verbose: Keras' progress output (0, 1 or 2).

    Every argument is checked (`check_arguments`) before any work starts.
    """
    check_arguments(epochs, batch_size, accum_steps, output_dir, seed, verbose)
    import keras

    import keras_trainx
    from keras_trainx.schedules import updates_per_epoch

    A = require("albumentations", "keras-trainx demo")
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = load_digits_split(seed)
    strategy = keras_trainx.distribute.auto_strategy()
    micro_batch = keras_trainx.distribute.global_batch_size(batch_size, strategy)
    effective_batch = micro_batch * accum_steps
    train = keras_trainx.AugmentedSequence(
        x_train, y_train, batch_size=micro_batch, seed=seed,
        transform=[A.Affine(translate_px=(-1, 1), rotate=(-10, 10), p=0.7),
                   A.RandomBrightnessContrast(0.2, 0.2, p=0.5)],
    )
    total_updates = updates_per_epoch(steps_per_epoch=len(train), accum_steps=accum_steps) * epochs
    schedule = learning_rate_schedule(total_updates)
    warmup_steps = schedule.warmup_steps
    with strategy.scope():
        model = build_model(schedule)
    print(f"keras_trainx demo: {len(x_train)} training digits, micro-batch {micro_batch} x "
          f"{accum_steps} accumulation steps = effective batch {effective_batch}, "
          f"{total_updates} updates ({warmup_steps} warm-up), Mish activations")
    keras_trainx.fit_accumulated(
        model, train, accum_steps=accum_steps, epochs=epochs,
        validation_data=(x_test, y_test), verbose=verbose,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"effective batch: {effective_batch}; optimizer updates: "
          f"{int(keras.ops.convert_to_numpy(model.optimizer.iterations))}; "
          f"test accuracy: {accuracy:.4f}")

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "digits_mish.keras")
    save_model(model, path)
    reloaded = keras_trainx.load_model(path)
    same = np.array_equal(model.predict(x_test, verbose=0), reloaded.predict(x_test, verbose=0))
    print(f"saved {path}; reloaded with keras_trainx.load_model: identical predictions: {same}")
    return same
