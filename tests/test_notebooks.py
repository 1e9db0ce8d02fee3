"""Every notebook in notebooks/ runs top to bottom, offline, in a fresh kernel."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.output_type == "error"
    ]
    assert not errors


def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS][:5] == [
        "01_fit_accumulated", "02_schedules", "03_augmentation", "04_distributed",
        "05_saving_loading",
    ]
