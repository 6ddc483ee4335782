"""Loading a script that is not a package module (the azd hooks, a copy of the app) by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(name: str, path: Path, *, register: bool = True) -> ModuleType:
    """The module ``path`` defines, run once under ``name``.

    ``register`` puts it in ``sys.modules`` first: dataclasses defined in it look their
    module up there. Without it, every call gives a fresh, unregistered copy.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
