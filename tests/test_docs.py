"""The documentation site and the README: the site builds with `--strict` and no network, its checks
catch what they should, the architecture page names every module, and README and docs agree where
both state the same figures, commands and names."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "keras_trainx"

# Runs `mkdocs build` with every way out to the network refused and reported on stderr.
_OFFLINE_MKDOCS = """
import socket, sys

def _refuse(*args, **kwargs):
    sys.stderr.write(f"NETWORK ACCESS REFUSED: {args!r}\\n")
    raise OSError("the documentation build must not use the network")

socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
from mkdocs.__main__ import cli
sys.argv = ["mkdocs", *sys.argv[1:]]
cli()
"""


def _mkdocs_build(config, site, timeout=300):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    return subprocess.run(
        [sys.executable, "-c", _OFFLINE_MKDOCS, "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # no end-of-life banner from mkdocs-material
    )


def test_site_builds_strict_and_offline(tmp_path):
    result = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-5000:]
    assert "NETWORK ACCESS REFUSED" not in result.stderr
    site = tmp_path / "site"
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert {f"notebooks/{name}.html" for name in notebooks} <= pages
    html = "\n".join(p.read_text() for p in site.rglob("*.html"))
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html
    # The API reference renders docstrings; their doctests are highlighted code, not nested quotes.
    schedules = (site / "reference" / "schedules.html").read_text()
    assert 'id="keras_trainx.schedules.WarmUp"' in schedules
    assert '<span class="go">[0.0, 0.05, 0.1, 0.0]</span>' in schedules  # a doctest's output, as code
    assert not any("<blockquote>" in p.read_text() for p in (site / "reference").glob("*.html"))


def _broken_site(tmp_path, page, notebook):
    """A copy of mkdocs.yml over a docs folder of `page`, a page it may link to, and `notebook`."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    import yaml  # PyYAML comes with mkdocs

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    (docs / "notebook.ipynb").write_text(notebook)
    python = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT)]
    python["options"]["extensions"] = [str(DOCS / "doctest_blocks.py")]
    config["markdown_extensions"][-1]["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    config.update(docs_dir=str(docs), nav=["index.md", "other.md", "notebook.ipynb"])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")


_NOTEBOOK = (ROOT / "notebooks" / "05_saving_loading.ipynb").read_text()


@pytest.mark.parametrize("page, notebook, messages", [
    ("# Index\n\n[a page](missing.md), [an anchor](other.md#nowhere), [a name][keras_trainx.no_such_name]\n",
     _NOTEBOOK, ["contains a link 'missing.md'", "does not contain an anchor '#nowhere'",
                 "Could not find cross-reference target 'keras_trainx.no_such_name'"]),
    ("# Index\n\n::: keras_trainx.no_such_module\n", _NOTEBOOK,
     ["keras_trainx.no_such_module could not be found"]),
    ("# Index\n", _NOTEBOOK[: len(_NOTEBOOK) // 2], ["JSONDecodeError"]),
], ids=["links-anchors-names", "docstring-reference", "notebook-render"])
def test_strict_build_fails_on_what_it_must_catch(tmp_path, page, notebook, messages):
    result = _broken_site(tmp_path, page, notebook)
    assert result.returncode != 0
    assert [m for m in messages if m not in result.stderr] == [], result.stderr[-3000:]


def test_the_broken_site_builds_without_its_breakage(tmp_path):
    """The three failures above come from what each one breaks, not from the copied configuration."""
    result = _broken_site(tmp_path, "# Index\n\n[a page](other.md#a-heading)\n\n::: keras_trainx.schedules.values\n",
                          _NOTEBOOK)
    assert result.returncode == 0, result.stderr[-3000:]


def _fence_doctests():
    spec = importlib.util.spec_from_file_location("doctest_blocks", DOCS / "doctest_blocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fence_doctests


def test_doctests_are_fenced_as_code_blocks():
    pytest.importorskip("griffe", reason="griffe is not installed (pip install -e '.[docs]')")
    text = "Example:\n\n>>> x = [1,\n...      2]\n>>> x\n[1, 2]\n\nAfter.\n    >>> indented\n    1"
    assert _fence_doctests()(text).split("\n") == [
        "Example:", "", "```pycon", ">>> x = [1,", "...      2]", ">>> x", "[1, 2]", "```", "", "After.",
        "    ```pycon", "    >>> indented", "    1", "    ```"]


def test_architecture_layout_names_every_module_and_folder_of_the_package():
    page = (DOCS / "architecture.md").read_text()
    layout = page.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[A-Za-z_]+\.py|[A-Za-z_]+/|py\.typed", layout))
    entries = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries - named == set(), "docs/architecture.md's Layout misses these"
    anywhere = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.rglob("*")} | {"keras_trainx/"}
    assert named - anywhere == set(), "docs/architecture.md's Layout names what is not there"


def _prose(markdown):
    """Markdown without fenced code, links reduced to their text, emphasis and code marks dropped."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*`|()]", " ", text)
    return " ".join(text.lower().split())


_FIGURE = r"\d+(?:x\d+)+|\d+(?:[.,]\d+)*(?:e-?\d+)?x?"


def _stated_figures(prose):
    """Each figure with the word before it: ("about", "0.97"), ("to", "1e-6"), ..."""
    return set(re.findall(rf"([a-z][\w'-]*) ({_FIGURE})(?![\w.-]*\w)", prose))


def _docs_prose():
    pages = [p.read_text() for p in DOCS.rglob("*.md")] + [(ROOT / "CHANGELOG.md").read_text()]
    return _prose("\n".join(pages))


def test_readme_states_its_figures_as_the_docs_do():
    readme = _stated_figures(_prose((ROOT / "README.md").read_text()))
    assert len(readme) >= 8  # the demo's time and accuracy, the suite's time, the exactness bounds, ...
    docs = _docs_prose()
    missing = sorted(f"{word} {figure}" for word, figure in readme if f"{word} {figure}" not in docs)
    assert missing == [], "README states these figures, no docs page states them so: update both"


def test_figure_check_finds_a_changed_figure():
    docs = _docs_prose()
    assert "about 0.97" in docs and ("about", "0.98") in _stated_figures("test accuracy about 0.98")
    assert "about 0.98" not in docs


def _code_blocks(markdown, language):
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def test_readme_and_getting_started_give_the_same_two_commands():
    readme = (ROOT / "README.md").read_text()
    started = (DOCS / "getting-started.md").read_text()
    assert _code_blocks(readme, "bash")[0] == _code_blocks(started, "bash")[0]
    assert _code_blocks(readme, "bash")[0].splitlines() == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/keras-trainx demo',
        ".venv/bin/python -m pytest -q"]
    assert _code_blocks(readme, "bash")[1] == _code_blocks(started, "bash")[1]  # building the docs


def test_readme_links_lead_to_existing_files():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert links and [link for link in links if not (ROOT / link).is_file()] == []
    guides = {p.relative_to(ROOT).as_posix() for p in (DOCS / "guide").glob("*.md")}
    assert guides <= set(links), "every guide page is linked from the README"


def test_names_in_the_readme_are_in_the_docs():
    names = set(re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", (ROOT / "README.md").read_text()))
    docs = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    assert [name for name in sorted(names) if name not in docs] == []


def _subcommands(parser, prefix="keras-trainx"):
    """Every command line the parser accepts down to its leaves: "keras-trainx demo", ..."""
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return [prefix]
    return [line for name, sub in actions[0].choices.items() for line in _subcommands(sub, f"{prefix} {name}")]


def test_command_line_guide_names_every_subcommand():
    from keras_trainx.cli import build_parser

    lines = _subcommands(build_parser())
    guide = (DOCS / "guide" / "command-line.md").read_text()
    assert "keras-trainx experiment batch-growth" in lines
    assert [line for line in lines if f"`{line}" not in guide] == []
