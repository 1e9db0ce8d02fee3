"""Loads a saved keras_trainx model in a fresh process one of three ways and continues its training.

Run by tests/test_saving.py as `python fresh_process_load.py MODE MODEL DATA OUT`:
MODE is "plain" (`import keras_trainx`, then `keras.models.load_model`), "custom_objects"
(`keras.models.load_model(..., custom_objects=keras_trainx.custom_objects())`) or "load_model"
(`keras_trainx.load_model(..., safe_mode=True)`). DATA is an .npz with x, y, x_test; OUT receives
what the parent compares: predictions, optimizer iterations and learning rate before continuing,
and weights and predictions after `continue_training`.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def continue_training(model, data):
    """One more epoch of fit_accumulated; the parent runs the same on the original model."""
    import keras_trainx

    keras_trainx.fit_accumulated(
        model, data["x"], data["y"], accum_steps=3, batch_size=4, epochs=1, shuffle=False, verbose=0
    )


def snapshot(model, data):
    """What must agree between the original and a reloaded model."""
    return {
        "predictions": model.predict(data["x_test"], verbose=0),
        "iterations": np.array(int(model.optimizer.iterations)),
        "learning_rate": np.array(float(model.optimizer.learning_rate)),
    }


def after_training(model, data):
    continue_training(model, data)
    result = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
    result["continued_predictions"] = model.predict(data["x_test"], verbose=0)
    result["continued_iterations"] = np.array(int(model.optimizer.iterations))
    return result


def main(mode, model_path, data_path, out_path):
    import keras

    import keras_trainx

    if mode == "plain":
        model = keras.models.load_model(model_path)
    elif mode == "custom_objects":
        model = keras.models.load_model(model_path, custom_objects=keras_trainx.custom_objects())
    elif mode == "load_model":
        model = keras_trainx.load_model(model_path, safe_mode=True)
    else:
        raise ValueError(f"MODE must be plain, custom_objects or load_model; received {mode!r}.")
    data = dict(np.load(data_path))
    result = snapshot(model, data)
    result["schedule"] = np.array(type(model.optimizer._learning_rate).__name__)
    result.update(after_training(model, data))
    np.savez(out_path, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
