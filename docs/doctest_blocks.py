"""A griffe extension for the API reference: docstring examples become highlighted code blocks.

The package's docstrings write their runnable examples as Keras' do, doctest lines after an
`Example:` line (the test suite runs them). Markdown would read `>>>` as nested quotes and `[0.1]`
outputs as links, so each doctest run (a `>>>` line, its `...` continuations and its output, up to a
blank line) is put into a `pycon` code block before mkdocstrings renders the docstring.
"""

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wraps each doctest run of `text` in a fenced `pycon` block at the run's own indentation."""
    lines, out, index = text.split("\n"), [], 0
    while index < len(lines):
        line = lines[index]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(indent + "```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append(indent + "```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fences the doctests of every docstring of the loaded package."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
