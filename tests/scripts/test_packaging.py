"""Installing: `pip install -e .` in a fresh virtual environment, then `import superglobal` from
another directory embeds an image, while `python test.py` still runs from the checkout.

From outside the checkout, `import test` finds Python's own test package (the standard library
precedes site-packages); superglobal must bind the name to the checkout's test/ instead.
"""

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import superglobal
from test.data.synthetic import textured_image
from tests.entry_points import shared_weights

ROOT = Path(__file__).resolve().parents[2]
# Embeds argv[2] with the checkpoint argv[1]; prints where `test` came from and the features.
EMBED = """
import importlib.util, sys
print("plain test:", importlib.util.find_spec("test").origin)
import numpy as np, superglobal
print("bound test:", sys.modules["test"].__file__)
features = superglobal.load_descriptor(sys.argv[1], scales=1).embed_images([sys.argv[2]])
np.save(sys.argv[3], features)
"""
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "requirements.txt", "requirements-demo.txt", "config.py",
          "errors.py", "test.py", "superglobal", "model", "modules", "test")


def run(args, cwd, timeout=120):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(checkpoint, image, its embedding computed in this process from the checkout)."""
    folder = tmp_path_factory.mktemp("packaging")
    image = folder / "photo.jpg"
    cv2.imwrite(str(image), textured_image(72, 56, np.random.default_rng(1), 2))
    checkpoint = shared_weights(tmp_path_factory)
    expected = superglobal.load_descriptor(checkpoint, scales=1).embed_images([image])
    return checkpoint, image, expected


def check_embedding(stdout, out, expected, checkout):
    lines = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    assert Path(lines["plain test"]).parent.parent == Path(shutil.__file__).parent  # the stdlib's
    assert Path(lines["bound test"]) == checkout / "test" / "__init__.py"
    np.testing.assert_array_equal(np.load(out), expected)


def test_import_from_another_directory(inputs, tmp_path):
    """The checkout after the standard library on sys.path, as site-packages is."""
    checkpoint, image, expected = inputs
    code = f"import sys; sys.path.append({str(ROOT)!r})\n" + EMBED
    stdout = run([sys.executable, "-c", code, checkpoint, image, tmp_path / "f.npy"], cwd=tmp_path)
    check_embedding(stdout, tmp_path / "f.npy", expected, ROOT)


@pytest.mark.parametrize("setup, fragment", [
    ("open('config.py', 'w').write('x = 1')", "the importable 'config' is "),
    ("import test", "import superglobal first"),
])
def test_name_clashes_stop_the_import_clearly(tmp_path, setup, fragment):
    code = f"import sys; sys.path.append({str(ROOT)!r}); {setup}\nimport superglobal"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: superglobal needs") or last.startswith("ImportError: Python's own")
    assert fragment in last


SETUPTOOLS = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])


@pytest.mark.skipif(SETUPTOOLS < (77, 0), reason="the offline build needs setuptools >= 77 installed")
def test_editable_install_in_a_fresh_venv(inputs, tmp_path):
    """`pip install -e . --no-deps` into a venv sharing this interpreter's packages (built offline with
    the installed setuptools), from a copy of the checkout's sources."""
    checkpoint, image, expected = inputs
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, checkout / name)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", checkout], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stdout = run([python, "-c", EMBED, checkpoint, image, elsewhere / "f.npy"], cwd=elsewhere)
    check_embedding(stdout, elsewhere / "f.npy", expected, checkout)
    assert "TEST.DATASET_LIST" in run([python, "test.py", "--help"], cwd=checkout)
