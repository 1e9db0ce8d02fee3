"""Keras' own tests of `fit` as the spec of `fit_accumulated`.

The test files come from the source distribution of the INSTALLED Keras (downloaded from the package
index once, then cached); none are copied into this repository. They run three times in separate
pytest processes (see `keras_fit_spec_plugin.py`): with `Model.fit` itself, with `fit_accumulated(...,
accum_steps=1)`, and with half the batch and `accum_steps=2` on array inputs. Every test that passes
with `Model.fit` must pass in the other two runs, except those listed with a reason in
`keras_fit_spec_differences.txt`; a listed test that passes again is reported too, so the list stays
true. The outcomes with `Model.fit` depend on the installed Keras, TensorFlow, NumPy and Python and the
machine's core count, not on keras_trainx: they are kept beside the cached test files under those
versions, and that run is made once per such environment. It takes 5-8 minutes on 2 cores, so it is
marked `keras_spec` and runs on its own: `python -m pytest -q -m keras_spec` (CI runs it after the
suite).
"""

import concurrent.futures
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree

import keras
import numpy as np
import pytest
import tensorflow as tf

HERE = pathlib.Path(__file__).resolve().parent
DIFFERENCES = HERE / "keras_fit_spec_differences.txt"
CACHE = pathlib.Path(os.environ.get("KERAS_TRAINX_CACHE", pathlib.Path.home() / ".cache" / "keras_trainx"))
SPEC_FILES = ("keras/src/trainers/trainer_test.py", "keras/src/callbacks/")
MODES = ("accum1", "accum2")
RUN_TIMEOUT_S = 1500


def _distribution():
    """`(name, version)` of the installed distribution that provides `keras` (release or nightly)."""
    for name in importlib.metadata.packages_distributions().get("keras", []):
        if name in ("keras", "keras-nightly", "keras_nightly"):
            return name, importlib.metadata.version(name)
    return "keras", keras.version()


def _spec_directory():
    """Keras' fit tests for the installed version, extracted flat into the cache."""
    name, version = _distribution()
    target = CACHE / f"{name}-{version}-fit-tests"
    if (target / "trainer_test.py").exists():
        return target
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "-q", "-d", str(downloads), f"{name}=={version}"],
        capture_output=True, text=True, timeout=300,
    )
    archives = sorted(downloads.glob(f"{name.replace('-', '_')}-{version}.tar.gz")) + sorted(
        downloads.glob(f"{name}-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        pytest.skip(f"no source distribution of {name}=={version} to take Keras' tests from: "
                    f"{result.stderr.strip()[-300:]}")
    partial = target.with_suffix(".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0]) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[-1]
            if member.isfile() and inner.endswith("_test.py") and inner.startswith(SPEC_FILES):
                (partial / pathlib.Path(inner).name).write_bytes(archive.extractfile(member).read())
    if not (partial / "trainer_test.py").exists():
        pytest.skip(f"the source distribution of {name}=={version} ships no test files "
                    "(keras-nightly's does not): no Keras tests to run")
    partial.rename(target)
    return target


def _run(directory, mode):
    """Outcome of every test in `directory` under `mode`: `{test id: (outcome, message)}`."""
    report = directory / f"report-{mode}.xml"
    environment = dict(os.environ, KERAS_TRAINX_FIT_MODE=mode, KERAS_BACKEND="tensorflow",
                       TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                                os.environ.get("PYTHONPATH")])))
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "keras_fit_spec_plugin",
         "--import-mode=importlib", "-o", "addopts=", "--continue-on-collection-errors",
         f"--rootdir={directory}", f"--junitxml={report}", str(directory)],
        cwd=directory, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        test = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if problem is None:
            outcomes[test] = ("passed", "")
        else:
            message = (problem.get("message") or "").strip().splitlines()
            outcomes[test] = (problem.tag, message[0][:200] if message else "")
    return outcomes


def _saved_reference(directory):
    """Where `Model.fit`'s outcomes in this environment are kept (the directory is per Keras version)."""
    return directory / (f"outcomes-fit-tensorflow-{tf.__version__}-numpy-{np.__version__}-"
                        f"python-{platform.python_version()}-cores-{os.cpu_count()}.json")


def _reference(directory):
    """`Model.fit`'s own outcome of every test: as saved for this environment, else run now."""
    saved = _saved_reference(directory)
    if saved.exists():
        return {test: tuple(outcome) for test, outcome in json.loads(saved.read_text()).items()}
    return _run(directory, "fit")


def _known_differences():
    """`{(mode, test id): reason}` from the differences file (`mode test-id  reason`)."""
    known = {}
    for line in DIFFERENCES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            mode, test, reason = line.split(maxsplit=2)
            known[(mode, test)] = reason
    return known


@pytest.mark.keras_spec
def test_keras_fit_tests_pass_with_fit_accumulated():
    directory = _spec_directory()
    with concurrent.futures.ThreadPoolExecutor(len(MODES) + 1) as pool:
        runs = dict(zip(("fit", *MODES), pool.map(
            lambda m: _reference(directory) if m == "fit" else _run(directory, m), ("fit", *MODES))))
    passing = {test for test, (outcome, _) in runs["fit"].items() if outcome == "passed"}
    assert len(passing) > 100, f"only {len(passing)} of Keras' tests passed with Model.fit itself"
    _saved_reference(directory).write_text(json.dumps(runs["fit"], indent=0, sort_keys=True))
    known = _known_differences()
    unexpected, stale = [], []
    for mode in MODES:
        for test in sorted(passing):
            outcome, message = runs[mode].get(test, ("missing", ""))
            if outcome != "passed" and (mode, test) not in known:
                unexpected.append(f"{mode} {test}: {outcome}: {message}")
            if outcome == "passed" and (mode, test) in known:
                stale.append(f"{mode} {test}")
    print({mode: sum(o == "passed" for t, (o, _) in runs[mode].items() if t in passing)
           for mode in runs}, f"of {len(passing)} passing with Model.fit")
    assert not unexpected, "fails with fit_accumulated:\n" + "\n".join(unexpected)
    assert not stale, "listed as differing but passes: remove from the list:\n" + "\n".join(stale)
