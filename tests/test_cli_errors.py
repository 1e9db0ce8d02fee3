"""User mistakes on the command line: exit status 2 or 1, one line on stderr naming the file or
option, no traceback, nothing trained first."""

import subprocess
import sys
import zipfile

import pytest

from keras_trainx import cli


@pytest.mark.parametrize(
    "make_argv, status, words",
    [
        (lambda p: ["inspect", str(p / "missing.keras")], 2, "MODEL"),
        (lambda p: ["inspect", str(p / "notes.txt")], 2, "not a readable saved model"),
        (lambda p: ["inspect", str(p / "corrupt.keras")], 2, "not a readable saved model"),
        (lambda p: ["inspect", str(p / "empty.keras")], 2, "not a readable saved model"),
        (lambda p: ["plot-schedule", "OneCycle", "--config", '{"max_learning_rate": 0.1, '
                    '"total_steps": 10}', "--steps", "10", "-o", str(p / "no_dir" / "x.png")],
         2, "folder"),
        (lambda p: ["plot-schedule", "OneCycle", "--config", '{"max_learning_rate": 0.1, '
                    '"total_steps": 10}', "--steps", "10", "-o", str(p / "x.txt")], 2, ".png"),
        (lambda p: ["demo", "--output-dir", str(p / "notes.txt")], 2, "--output-dir"),
    ],
    ids=["missing", "text", "corrupt-zip", "zip-without-config", "missing-folder", "not-png",
         "output-dir-is-a-file"],
)
def test_mistakes_get_one_line_and_a_status(tmp_path, capsys, make_argv, status, words):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04 truncated")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    assert cli.main(make_argv(tmp_path)) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("argv", [["demo", "--accum-steps", "0"], ["demo", "--epochs", "x"]])
def test_bad_demo_numbers_are_usage_errors_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "--" in capsys.readouterr().err


@pytest.mark.parametrize("subcommand", ["demo", "inspect", "plot-schedule", "experiment", "experiment warmup",
                                        "experiment batch-growth", "launch"])
def test_every_subcommand_has_help(subcommand):
    result = subprocess.run([sys.executable, "-m", "keras_trainx", *subcommand.split(), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert f"usage: keras-trainx {subcommand}" in result.stdout


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert cli.main(["experiment", "warmup", "--quick", "--no-plot", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == ("keras-trainx experiment: error: keras-trainx experiment warmup needs the optional package "
                   "'sklearn', which is not installed: pip install 'keras_trainx[demo]'\n")


@pytest.mark.parametrize(
    "make_argv, line",
    [
        (lambda p: ["plot-schedule", "OneCycle", "--config", '{"max_learning_rate": 0.1, "total_steps": 10}',
                    "--steps", "10", "-o", str(p / "folder.png")],
         "keras-trainx plot-schedule: error: -o/--output '{p}/folder.png' is a folder; name a .png file"),
        (lambda p: ["plot-schedule", "OneCycle", "--config", '{"max_learning_rate": 0.1, "total_steps": 10}',
                    "--steps", "10", "-o", str(p / "notes.txt" / "x.png")],
         "keras-trainx plot-schedule: error: -o/--output '{p}/notes.txt/x.png': '{p}/notes.txt' is a file, not a "
         "folder"),
        (lambda p: ["demo", "--output-dir", str(p / "notes.txt" / "models")],
         "keras-trainx demo: error: `--output-dir` cannot be created: '{p}/notes.txt' is a file, not a folder; "
         "received --output-dir='{p}/notes.txt/models'."),
        (lambda p: ["experiment", "warmup", "--quick", "--no-plot", "--no-progress", "--output-dir",
                    str(p / "notes.txt" / "sweep")],
         "keras-trainx experiment: error: `--output-dir` cannot be created: '{p}/notes.txt' is a file, not a "
         "folder; received --output-dir='{p}/notes.txt/sweep'."),
        (lambda p: ["experiment", "warmup", "--quick", "--no-plot", "--no-progress", "--output-dir",
                    str(p / "notes.txt")],
         "keras-trainx experiment: error: `--output-dir` must be a folder; received --output-dir='{p}/notes.txt', "
         "an existing file."),
        (lambda p: ["experiment", "batch-growth", "--quick", "--no-plot", "--no-progress", "--output-dir",
                    str(p / "notes.txt")],
         "keras-trainx experiment: error: `--output-dir` must be a folder; received --output-dir='{p}/notes.txt', "
         "an existing file."),
        (lambda p: ["experiment", "batch-growth", "--epochs", "1"],
         "keras-trainx experiment: error: `epochs` must be an int >= 2; received epochs=1."),
        (lambda p: ["experiment", "batch-growth", "--seeds", "0,-1"],
         "keras-trainx experiment: error: --seeds must be ints >= 0; received 0,-1"),
    ],
    ids=["png-is-a-folder", "png-under-a-file", "demo-under-a-file", "experiment-under-a-file",
         "experiment-onto-a-file", "growth-onto-a-file", "growth-one-epoch", "growth-negative-seed"],
)
def test_unusable_output_paths_and_arguments_are_refused_before_any_work(tmp_path, capsys, make_argv, line):
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    assert cli.main(make_argv(tmp_path)) == 2
    assert capsys.readouterr().err == line.format(p=tmp_path) + "\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder.png", "notes.txt"]


ARRAY = "must hold a serialized schedule: a JSON object with a \"class_name\" string and a \"config\" object"


@pytest.mark.parametrize(
    "schedule, config, line",
    [
        ("OneCycle", "{bad", "--config '{bad' is not JSON (Expecting property name enclosed in double quotes: "
                             "line 1 column 2 (char 1))."),
        ("OneCycle", "[1, 2]", "--config must be a JSON object of OneCycle's keyword arguments; received a JSON "
                               "array: '[1, 2]'."),
        ("OneCycle", '{"bogus": 1}', "--config: OneCycle.__init__() got an unexpected keyword argument 'bogus'."),
        ("{bad", None, "SCHEDULE '{bad' is not JSON (Expecting property name enclosed in double quotes: line 1 "
                       "column 2 (char 1))."),
        ('{"class_name": "OneCycle", "config": [1]}', None,
         "SCHEDULE '{\"class_name\": \"OneCycle\", \"config\": [1]}' " + ARRAY + " (as "
         "keras.saving.serialize_keras_object(schedule) writes); its \"config\" is a JSON array."),
        ("{p}/bad.json", None, "SCHEDULE file '{p}/bad.json' is not JSON (Expecting property name enclosed in "
                               "double quotes: line 1 column 2 (char 1))."),
        ("{p}/latin1.json", None, "SCHEDULE file '{p}/latin1.json' is not UTF-8 text ('utf-8' codec can't decode "
                                  "byte 0xe9 in position 5: invalid continuation byte)."),
        ("{p}/list.json", None, "SCHEDULE file '{p}/list.json' " + ARRAY + " (as "
                                "keras.saving.serialize_keras_object(schedule) writes); it is a JSON array."),
    ],
    ids=["config-not-json", "config-a-list", "config-unknown-key", "schedule-not-json", "schedule-config-a-list",
         "file-not-json", "file-not-utf8", "file-a-list"],
)
def test_plot_schedule_bad_json_names_the_option_and_what_is_wrong(tmp_path, capsys, schedule, config, line):
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "latin1.json").write_bytes('{"caf\xe9": 1}'.encode("latin-1"))
    (tmp_path / "list.json").write_text("[1, 2]")
    argv = ["plot-schedule", schedule.replace("{p}", str(tmp_path)), "--steps", "5", "-o", str(tmp_path / "lr.png")]
    assert cli.main(argv + (["--config", config] if config is not None else [])) == 2
    assert capsys.readouterr().err == f"keras-trainx plot-schedule: error: {line.replace('{p}', str(tmp_path))}\n"
    assert not (tmp_path / "lr.png").exists()
