"""Make the project's top-level modules importable for an installed `superglobal`.

The project keeps the layout the official code mandates: `config.py`, `errors.py`, `model/`,
`modules/` and the evaluation package `test/` at the top of the checkout, importing each other by
those names. Scripts run from the checkout find them first on sys.path. An installed package imported
from anywhere else finds them through the install, except `test`: the standard library's regression
test package comes first on sys.path and would shadow ours. So, before using them, superglobal binds
`test` to the checkout's folder explicitly (nothing else changes; Python's own `test` package is for
CPython's test suite and cannot be used in the same process) and checks that the other names are the
project's, so a user's own `config.py` in the working directory fails clearly instead of strangely.
"""

import importlib.util
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PATHS = {key: Path(value).resolve() for key, value in sysconfig.get_paths().items()}
PROJECT_MODULES = {"errors": "errors.py", "config": "config.py", "model": "model/__init__.py",
                   "modules": "modules/__init__.py", "test": "test/__init__.py"}


def _origin(module_or_spec):
    origin = getattr(module_or_spec, "origin", None) or getattr(module_or_spec, "__file__", None)
    return Path(origin).resolve() if origin else None


def _in_stdlib(path):
    """True for a file of the standard library (not of site-packages, which may lie inside it)."""
    inside = [path.is_relative_to(_PATHS[key]) for key in ("stdlib", "purelib", "platlib")]
    return inside[0] and not any(inside[1:])


def _load_from_checkout(name, path):
    """Import `name` from `path` (a package __init__.py or a module file) under that name."""
    folders = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=folders)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def bind_project_modules():
    """Ensure each top-level project name refers to this checkout's file; ImportError on a clash."""
    for name, relative in PROJECT_MODULES.items():
        expected = ROOT / relative
        loaded = sys.modules.get(name)
        found = _origin(loaded) if loaded is not None else _origin(importlib.util.find_spec(name))
        if found == expected:
            continue
        if loaded is None and (found is None or _in_stdlib(found)):
            _load_from_checkout(name, expected)  # not importable, or the standard library's `test`
            continue
        if name == "test" and found is not None and _in_stdlib(found):
            raise ImportError("Python's own `test` package is already imported, and superglobal needs the "
                              f"project's evaluation package of that name ({expected}): import superglobal first")
        raise ImportError(f"superglobal needs the project's module {name!r} ({expected}), but "
                          f"{'the imported' if loaded is not None else 'the importable'} {name!r} is "
                          f"{found or 'a built-in module'}: rename that one, or import superglobal from "
                          "another working directory")


def require_opencv():
    """OpenCV is not a declared dependency (opencv-python and opencv-python-headless both provide
    `cv2` and overwrite each other's files, so requiring one would break an environment with the
    other): without either, stop here with the fix instead of deep inside an image read."""
    if importlib.util.find_spec("cv2") is None:
        raise ImportError("superglobal needs OpenCV (the module cv2), which is not installed: "
                          "pip install opencv-python-headless (or opencv-python, for its GUI functions)")
