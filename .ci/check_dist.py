"""CI: build the sdist and the wheel, check what they hold, and install each in a fresh venv.

Run with the project's venv (it has `build` from the `test` extra): `.venv/bin/python .ci/check_dist.py`.
Each distribution must hold the package, `py.typed` and `LICENSE`, and no tests, notebooks or docs.
Each is installed with `pip install --no-deps` into a new venv (this venv's pip, `--python`) (no TensorFlow download); the installed
copy is then imported with the dependencies borrowed from the running venv through a `.pth` line, and
must report the version of `keras_trainx/_version.py` and run the `keras-trainx` command.
"""

import ast
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = ("tests/", "notebooks/", "docs/", ".ipynb", "conftest.py")


def _version() -> str:
    tree = ast.parse((ROOT / "keras_trainx" / "_version.py").read_text())
    (assign,) = [node for node in tree.body if isinstance(node, ast.Assign)]
    return ast.literal_eval(assign.value)


def _check_names(kind: str, names: list[str], required: list[str]) -> None:
    missing = [r for r in required if not any(n.endswith(r) for n in names)]
    unwanted = [n for n in names if any(f in n for f in FORBIDDEN)]
    if missing or unwanted:
        sys.exit(f"{kind}: missing {missing}, must not ship {unwanted}")
    if not any(n.endswith("keras_trainx/__init__.py") for n in names):
        sys.exit(f"{kind}: the package's modules are missing")


def _install_and_import(kind: str, artifact: pathlib.Path, scratch: pathlib.Path, version: str) -> None:
    venv = scratch / f"venv-{kind}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(artifact)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies (TensorFlow, Keras, ...) come from this venv, after the fresh venv's own packages.
    (pathlib.Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("import importlib.metadata as m, pathlib, keras_trainx; "
            "files = [str(f) for f in m.files('keras_trainx')]; "
            "print(keras_trainx.__version__, m.version('keras_trainx'), "
            "pathlib.Path(keras_trainx.__file__).is_relative_to(pathlib.Path(r'%s')), "
            "any(f.endswith('py.typed') for f in files), any(f.endswith('LICENSE') for f in files))" % site)
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=scratch)
    report = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or report != f"{version} {version} True True True":
        sys.exit(f"{kind}: installed package reports {report!r} (want version {version}, imported from "
                 f"the fresh venv, py.typed and LICENSE installed)\n{result.stderr[-2000:]}")
    command = subprocess.run([str(venv / "bin" / "keras-trainx"), "--help"], capture_output=True, text=True)
    if command.returncode != 0 or "demo" not in command.stdout:
        sys.exit(f"{kind}: `keras-trainx --help` failed\n{command.stderr[-2000:]}")
    print(f"{kind}: {artifact.name} installs in a fresh venv; keras_trainx {version} imports from it")


def main() -> None:
    version = _version()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = pathlib.Path(scratch_name)
        built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(scratch / "dist"), str(ROOT)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(f"python -m build failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
        (wheel,) = (scratch / "dist").glob(f"keras_trainx-{version}-*.whl")
        (sdist,) = (scratch / "dist").glob(f"keras_trainx-{version}.tar.gz")
        with zipfile.ZipFile(wheel) as archive:
            _check_names("wheel", archive.namelist(), ["keras_trainx/py.typed", "licenses/LICENSE"])
        with tarfile.open(sdist) as archive:
            _check_names("sdist", archive.getnames(),
                         ["keras_trainx/py.typed", f"keras_trainx-{version}/LICENSE", "CHANGELOG.md"])
        print(f"built {wheel.name} and {sdist.name}: py.typed and LICENSE in both, no tests or notebooks")
        _install_and_import("wheel", wheel, scratch, version)
        _install_and_import("sdist", sdist, scratch, version)


if __name__ == "__main__":
    main()
