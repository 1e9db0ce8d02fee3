"""Every notebook in notebooks/ runs top to bottom, offline, in a fresh kernel, and checks its claims.

A notebook proves what it shows with `assert`s in its own cells (against reference values or the
library's independent results); nbclient stops at the first cell that raises and names it.
"""

import ast
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _asserts(source):
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return sum(isinstance(node, ast.Assert) or (isinstance(node, ast.Attribute) and node.attr.startswith("assert_"))
               for node in ast.walk(tree))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_every_cell_and_its_checks_pass(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) at the first error
    cells = _code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_checks_what_it_shows(path):
    notebook = nbformat.read(path, as_version=4)
    assert sum(_asserts(cell.source) for cell in _code_cells(notebook)) >= 3, (
        f"{path.name} shows results without checking them: add asserts against reference values")


def test_the_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_fit_accumulated", "02_schedules", "03_augmentation", "04_distributed",
        "05_saving_loading", "06_warmup_large_batch", "07_large_batch_planning",
    ]
