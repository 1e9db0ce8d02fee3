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


@pytest.mark.parametrize("subcommand", ["demo", "inspect", "plot-schedule", "experiment", "experiment warmup"])
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
