"""Import paths of modules that moved: the old path still imports, with a warning naming the new one.

0.2.0 gathered the accumulation window's modules into `keras_trainx.accumulation`. Code written
against 0.1.0 may import `keras_trainx.fit` or `keras_trainx.loss_normalization`; a finder on
`sys.meta_path` answers those names with the moved module itself (the same object, so state and
`isinstance` checks agree) and a `DeprecationWarning` that says where it lives now.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED = {f"keras_trainx.{name}": f"keras_trainx.accumulation.{name}"
         for name in ("fit", "accumulators", "loss_normalization", "window_metrics")}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]} in keras_trainx 0.2.0; import it "
                      "from there (the old path will be removed).", DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        """The moved module is already executed."""


def install() -> None:
    """Lets the old import paths of moved modules find them (once per process)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
