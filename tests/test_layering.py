"""The layering holds: modules/ -> torch only; model/ -> modules/ (and the leaf errors.py), never
config or test/; test/ -> model/, modules/, config; nothing outside tests/ imports tests/; entry
points are not imported by library code. Inside test/, the subpackages form layers (SUBPACKAGES):
the writer, run log and provenance at the bottom, then data/, then extraction/ and retrieval/ side
by side, then r1m/ and two_stage/; only the top-level modules (build, datasets, preflight, pipeline)
combine them. Checked on the source (AST), so lazy imports count too."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"config", "errors", "model", "modules", "test", "tests", "extract_rop1m", "rerank_features",
           "sweep", "tools", "bench", "demo", "superglobal"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# Top-level names a layer may import: project packages and third-party libraries.
ALLOWED = {
    "modules": {"modules", "torch"},
    "model": {"model", "modules", "errors", "torch", "numpy"},
    "test": {"test", "model", "modules", "errors", "config", "torch", "numpy", "cv2", "yaml", "tqdm",
             "matplotlib", "PIL"},
}


# What each subpackage of test/ may import from test/ (besides itself).
SUBPACKAGES = {
    "outputs": {"data", "retrieval"},  # pictures.py reads images and APs; the writer level imports nothing
    "data": {"outputs"},
    "extraction": {"data", "outputs"},
    "retrieval": {"data", "outputs"},
    "r1m": {"data", "extraction", "retrieval", "outputs"},
    "two_stage": {"data", "extraction", "retrieval", "outputs"},
}
WRITER_LEVEL = ("test/outputs/writer.py", "test/outputs/run_log.py", "test/outputs/provenance.py")


def imported_modules(path):
    """Full dotted names of every absolute import in `path`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    return names


def subpackages_imported(path):
    """The test.<subpackage> names `path` imports (top-level modules of test/ count as 'top')."""
    parts = [name.split(".") for name in imported_modules(path) if name.startswith("test.")]
    return {p[1] if (ROOT / "test" / p[1]).is_dir() else "top" for p in parts}


def imported_names(path):
    """Top-level names of every import in `path` (relative imports resolve to its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(path.relative_to(ROOT).parts[0] if node.level else node.module.split(".")[0])
    return names - STDLIB


def sources(folder):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer):
    files = sources(layer)
    assert files, f"no sources in {layer}/"
    wrong = {str(f.relative_to(ROOT)): sorted(imported_names(f) - ALLOWED[layer]) for f in files}
    assert not {f: names for f, names in wrong.items() if names}


def test_errors_is_a_leaf():
    assert not imported_names(ROOT / "errors.py") & PROJECT


def test_config_never_imports_the_evaluation_code():
    assert not imported_names(ROOT / "config.py") & {"test", "tests", "modules"}


def test_nothing_outside_tests_imports_tests():
    outside = [p for p in ROOT.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts
               and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert outside
    assert [str(p.relative_to(ROOT)) for p in outside if "tests" in imported_names(p)] == []


def test_library_never_imports_entry_points():
    entry_points = {"extract_rop1m", "rerank_features", "sweep"}
    library = sources("modules") + sources("model") + sources("test")
    assert [str(p.relative_to(ROOT)) for p in library if imported_names(p) & entry_points] == []


def test_test_modules_do_not_import_each_other():
    """Shared fixtures live in conftest.py, shared helpers in non-test modules, and independent
    transcriptions in tests/reference/."""
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.test_"):
                offenders.setdefault(path.name, []).append(node.module)
    assert offenders == {}


@pytest.mark.parametrize("package", sorted(SUBPACKAGES))
def test_subpackages_of_test_keep_their_layers(package):
    files = sources(f"test/{package}")
    assert len(files) > 1, f"no modules in test/{package}/"
    wrong = {str(f.relative_to(ROOT)): sorted(subpackages_imported(f) - SUBPACKAGES[package] - {package})
             for f in files}
    assert not {f: names for f, names in wrong.items() if names}


def test_writer_log_and_provenance_import_nothing_from_test():
    assert {name: sorted(subpackages_imported(ROOT / name)) for name in WRITER_LEVEL
            if subpackages_imported(ROOT / name) - {"outputs"}} == {}


def test_no_subpackage_folder_is_crowded():
    """A folder of test/ holds at most 8 modules, so its name still says what is inside."""
    crowded = {str(d.relative_to(ROOT)): n for d in [ROOT / "test", *(ROOT / "test").iterdir()] if d.is_dir()
               for n in [len([p for p in d.glob("*.py") if p.name != "__init__.py"])] if n > 8}
    assert crowded == {}
