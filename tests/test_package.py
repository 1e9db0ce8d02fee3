"""The package as a newcomer meets it: imports, dependencies, types.

Each check runs the package in a fresh interpreter (or reads its source), so nothing another test
imported or set up can hide a problem.
"""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_trainx"
OPTIONAL = ("albumentations", "cv2", "tensorflow_datasets", "sklearn", "matplotlib", "pandas")


def _run(code, timeout=180):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=PACKAGE.parent)


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """`{module: set of keras_trainx modules it imports}`, read from the source."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t.startswith("keras_trainx") and t != name}
    modules = set(graph)
    return {name: {t for t in targets if t in modules} for name, targets in graph.items()}


def _cycles(graph):
    """The import cycles of `graph` between modules (package `__init__` re-exports aside)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if target == "keras_trainx" or node.startswith(target + "."):
                continue  # a module importing its own package's __init__ is no cycle of modules
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_between_modules():
    assert _cycles(_imports()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_library_never_imports_the_command_line():
    command_line = ("keras_trainx.cli", "keras_trainx.__main__")
    importers = [name for name, targets in _imports().items()
                 if not name.startswith(command_line)
                 and any(t.startswith("keras_trainx.cli") for t in targets)]
    assert importers == []


def test_importing_the_package_changes_no_environment_variable():
    # Keras is imported first: it imports OpenCV when installed, which sets LD_LIBRARY_PATH.
    result = _run(
        "import json, os, keras; before = dict(os.environ); import keras_trainx; "
        "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


_BLOCK_OPTIONAL = f"""
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _Missing())
"""


def test_core_imports_and_trains_without_the_optional_packages():
    result = _run(_BLOCK_OPTIONAL + """
import numpy as np, keras, keras_trainx
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
keras_trainx.fit_accumulated(model, np.ones((10, 3)), np.ones((10, 1)), batch_size=2,
                             accum_steps=2, verbose=0)
print("updates", int(model.optimizer.iterations))
print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in """ + repr(OPTIONAL) + """))
""")
    assert result.returncode == 0, result.stderr
    assert "updates 3" in result.stdout
    assert "loaded []" in result.stdout


@pytest.mark.parametrize(
    "use, extra",
    [
        ("keras_trainx.AugmentedSequence(np.zeros((2, 8, 8, 3), 'uint8'), np.zeros(2), "
         "batch_size=1)", "augment"),
        ("keras_trainx.schedules.plot(keras_trainx.schedules.MultiStepDecay(0.1, [2]), 4)", "plot"),
    ],
    ids=["augment", "plot"],
)
def test_a_missing_extra_is_named_when_used(use, extra):
    result = _run(_BLOCK_OPTIONAL + "import numpy as np, keras_trainx\n" + use)
    assert result.returncode != 0
    assert f"pip install 'keras_trainx[{extra}]'" in result.stderr.strip().splitlines()[-1]


def test_type_check_passes():
    result = subprocess.run([sys.executable, "-m", "mypy", str(PACKAGE)], capture_output=True,
                            text=True, timeout=600, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_version_is_written_once():
    """setup.cfg reads `keras_trainx/_version.py` (without importing the package, so without
    TensorFlow); the package and the changelog's newest entry state the same version."""
    import configparser

    import keras_trainx
    from keras_trainx._version import __version__

    setup = configparser.ConfigParser()
    setup.read(PACKAGE.parent / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: keras_trainx._version.__version__"
    assert keras_trainx.__version__ == __version__
    changelog = (PACKAGE.parent / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == __version__
    assert [line for line in (PACKAGE / "_version.py").read_text().splitlines() if line.startswith(("import", "from"))] == []


def test_a_moved_module_imports_from_its_old_path_with_a_warning_naming_the_new_one():
    from keras_trainx._moved import MOVED

    result = _run(
        "import importlib, json, warnings; warnings.simplefilter('always'); import keras_trainx\n"
        "found = {}\n"
        f"for old, new in {sorted(MOVED.items())!r}:\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        module = importlib.import_module(old)\n"
        "    found[old] = [module is importlib.import_module(new),\n"
        "                  [str(w.message) for w in caught if w.category is DeprecationWarning]]\n"
        "print(json.dumps(found))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        old: [True, [f"{old} moved to {new} in keras_trainx 0.2.0; import it from there (the old "
                     "path will be removed)."]]
        for old, new in MOVED.items()
    }


def test_in_a_batch_worker_importing_the_package_loads_neither_keras_nor_tensorflow_until_used():
    result = subprocess.run([sys.executable, "-c", (
        "import sys, keras_trainx\n"
        "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow'})\n"
        "print(heavy(), keras_trainx.__version__, heavy())\n"
        "keras_trainx.fit_accumulated, keras_trainx.AugmentedSequence, keras_trainx.schedules.MultiStepDecay\n"
        "print(heavy(), sorted(set(keras_trainx.__all__) - set(dir(keras_trainx))))")],
        capture_output=True, text=True, timeout=180, cwd=PACKAGE.parent,
        env={**os.environ, "KERAS_TRAINX_BATCH_WORKER": "1"})
    assert result.returncode == 0, result.stderr
    from keras_trainx._version import __version__

    assert result.stdout.strip().splitlines()[-2:] == [f"[] {__version__} []", "['keras', 'tensorflow'] []"]


SAVED_WITH_OUR_OBJECTS = """
import keras, keras_trainx
model = keras.Sequential([keras.Input((3,)), keras_trainx.layers.Mish(), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(keras_trainx.schedules.WarmUp(0.1, 10)), loss="mse")
model.save({path!r})
"""


@pytest.mark.parametrize("imports", ["import keras_trainx, keras", "import keras, keras_trainx"])
def test_importing_the_package_registers_its_objects_for_keras_load_model(tmp_path, imports):
    path = str(tmp_path / "model.keras")
    assert _run(SAVED_WITH_OUR_OBJECTS.format(path=path)).returncode == 0
    result = _run(f"{imports}\nmodel = keras.models.load_model({path!r})\n"
                  "print(type(model.layers[0]).__name__, model.optimizer.get_config()['learning_rate']['class_name'])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Mish", "WarmUp"]


@pytest.mark.parametrize("code", ["import keras, keras_trainx", "import keras_trainx; keras_trainx.load_model"],
                         ids=["keras-first", "public-name"])
def test_another_keras_backend_is_refused_where_keras_is_loaded(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                            cwd=PACKAGE.parent, env={**os.environ, "KERAS_BACKEND": "numpy"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: keras_trainx needs Keras' TensorFlow backend; this process uses 'numpy'. Set "
        "KERAS_BACKEND=tensorflow before importing keras.")
