"""`keras-trainx plot-schedule` and `keras-trainx inspect MODEL`."""

import json

import keras
import matplotlib.image
import pytest

from keras_trainx import cli, layers, schedules


def test_plot_schedule_from_class_name_and_config(tmp_path, capsys):
    out = tmp_path / "onecycle.png"
    config = json.dumps({"max_learning_rate": 0.1, "total_steps": 100})
    assert cli.main(["plot-schedule", "OneCycle", "--config", config, "--steps", "100", "-o", str(out)]) == 0
    # torch OneCycleLR(max_lr=0.1, total_steps=100): 0.004 at step 0, 0.1 at step 29, 4e-07 at step 99.
    assert capsys.readouterr().out == (
        f"wrote {out}: OneCycle, 100 steps, first 0.004, max 0.1 at step 29, last 4e-07\n"
    )
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_schedule_from_a_serialized_nested_schedule_file(tmp_path, capsys):
    schedule = schedules.WarmUp(keras.optimizers.schedules.CosineDecay(0.2, decay_steps=50), warmup_steps=10)
    spec = tmp_path / "schedule.json"
    spec.write_text(json.dumps(keras.saving.serialize_keras_object(schedule)))
    assert cli.main(["plot-schedule", str(spec), "--steps", "61", "-o", str(tmp_path / "lr.png")]) == 0
    assert capsys.readouterr().out.endswith("WarmUp, 61 steps, first 0, max 0.2 at step 10, last 0\n")


def test_plot_schedule_accepts_keras_schedules_by_name(tmp_path, capsys):
    config = json.dumps({"initial_learning_rate": 1.0, "decay_steps": 1, "decay_rate": 0.5})
    assert cli.main(["plot-schedule", "ExponentialDecay", "--config", config, "--steps", "3", "-o", str(tmp_path / "e.png")]) == 0
    assert capsys.readouterr().out.endswith("first 1, max 1 at step 0, last 0.25\n")


@pytest.mark.parametrize(
    "argv,words",
    [
        (["NoSuchSchedule", "--steps", "5"], "NoSuchSchedule"),
        (["OneCycle", "--config", '{"max_learning_rate": 0.1}', "--steps", "5"], "total_steps"),
        (['{"class_name": "OneCycle", "config": {}}', "--config", "{}", "--steps", "5"], "total_steps"),
        (['{"class_name": "MultiStepDecay"}', "--config", '{"factor": 1}', "--steps", "5"], "--config goes with"),
        (["MultiStepDecay", "--config", '{"initial_learning_rate": 1.0, "milestones": [2]}', "--steps", "0"], "`steps`"),
        (["missing.json", "--steps", "5"], "does not exist"),
    ],
)
def test_plot_schedule_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, words):
    out = tmp_path / "x.png"
    assert cli.main(["plot-schedule", *argv, "-o", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_inspect_lists_custom_objects_and_whether_they_resolve(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="mish"), layers.HardMish()])
    model.compile(optimizer=keras.optimizers.SGD(schedules.MultiStepDecay(0.1, [5])), loss="mse")
    model.save(tmp_path / "ours.keras")
    assert cli.main(["inspect", str(tmp_path / "ours.keras")]) == 0
    assert capsys.readouterr().out == (
        f"{tmp_path / 'ours.keras'}: 2 custom object(s)\n"
        "  keras_trainx>HardMish        resolves\n"
        "  keras_trainx>MultiStepDecay  resolves\n"
    )


def test_inspect_reports_unknown_objects_with_exit_code_1(tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="kt_cli")
    class Double(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    keras.Sequential([keras.Input((3,)), Double(), layers.Mish()]).save(tmp_path / "m.keras")
    del keras.saving.get_custom_objects()["kt_cli>Double"]
    assert cli.main(["inspect", str(tmp_path / "m.keras")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'm.keras'}: 2 custom object(s)",
        "  keras_trainx>Mish  resolves",
        "  kt_cli>Double      UNKNOWN",
        "unknown: kt_cli>Double -- pass them to load_model(custom_objects=...)",
    ]


def test_inspect_plain_keras_model_and_unreadable_file(tmp_path, capsys):
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]).save(tmp_path / "plain.keras")
    assert cli.main(["inspect", str(tmp_path / "plain.keras")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'plain.keras'}: no custom objects (plain Keras model)\n"
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["inspect", str(tmp_path / "notes.txt")]) == 2
    assert "neither a .keras zip" in capsys.readouterr().err
