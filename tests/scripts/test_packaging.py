"""Installing: `pip install -e .` in a fresh virtual environment that already holds another torch
leaves that torch in place; then `import superglobal` from another directory embeds an image, the
superglobal-* commands run the checkout's scripts, and `python test.py` still runs from the checkout.

From outside the checkout, `import test` finds Python's own test package (the standard library
precedes site-packages); superglobal must bind the name to the checkout's test/ instead.

The nested venv sees exactly this interpreter's packages (a .pth that adds its site directories),
whether the suite runs in a virtualenv or not: a `--system-site-packages` venv would see the base
interpreter's packages instead, which inside a virtualenv are not the ones the suite runs with.
"""

import importlib.metadata
import os
import shutil
import site
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
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "requirements-demo.txt", "requirements-test.txt", "config.py",
          "errors.py", "test.py", "extract_rop1m.py", "rerank_features.py", "sweep.py", "tools", "superglobal",
          "model", "modules", "test")


def run(args, cwd, timeout=120, env=None):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
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
OTHER_TORCH = "2.5.1+cu121"  # an installed torch other than requirements.txt's pin, as a CUDA user has
COMMANDS = {"superglobal-eval": "TEST.DATASET_LIST", "superglobal-extract-r1m": "Extract R1M distractor features",
            "superglobal-rerank": "usage: rerank_features.py", "superglobal-sweep": "usage: sweep.py",
            "superglobal-check-setup": "check_setup.py"}


def fresh_venv(venv):
    """A venv that sees this interpreter's packages after its own (the site directories of this
    process, .pth files included), holding one distribution of its own: a torch OTHER_TORCH
    (metadata only; `import torch` still finds this interpreter's)."""
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).strip())
    ours = [path for path in site.getsitepackages() + [site.getusersitepackages()] if Path(path).is_dir()]
    (purelib / "_outer_environment.pth").write_text(f"import site; list(map(site.addsitedir, {ours!r}))\n")
    info = purelib / f"torch-{OTHER_TORCH}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {OTHER_TORCH}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return python


def offline_pip_environment():
    """No index, no find-links, no config files: pip can only use what is installed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.skipif(SETUPTOOLS < (77, 0), reason="the offline build needs setuptools >= 77 installed "
                    "(requirements-test.txt)")
def test_editable_install_keeps_another_torch_and_runs_from_anywhere(inputs, tmp_path):
    """`pip install -e .` with its dependencies, offline, into a venv holding another torch: it
    succeeds without installing anything else, torch stays OTHER_TORCH, and the package and the
    commands work from another directory."""
    checkpoint, image, expected = inputs
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, checkout / name)
    venv = tmp_path / "venv"
    venv.mkdir()
    python = fresh_venv(venv)
    env = offline_pip_environment()
    run([python, "-m", "pip", "install", "-q", "--no-build-isolation", "-e", checkout], cwd=tmp_path, env=env,
        timeout=300)
    version = "import importlib.metadata as m; print(m.version('torch'), m.version('superglobal'))"
    assert run([python, "-c", version], cwd=tmp_path).split() == [OTHER_TORCH, "0.1.0"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stdout = run([python, "-c", EMBED, checkpoint, image, elsewhere / "f.npy"], cwd=elsewhere)
    check_embedding(stdout, elsewhere / "f.npy", expected, checkout)
    assert "TEST.DATASET_LIST" in run([python, "test.py", "--help"], cwd=checkout)
    for command, fragment in COMMANDS.items():
        assert fragment in run([venv / "bin" / command, "--help"], cwd=elsewhere), command
    refused = subprocess.run([venv / "bin" / "superglobal-eval", "SupG.M", "0"], cwd=elsewhere,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert "SupG.M" in refused.stderr


def test_ci_runs_the_readme_quick_start_as_written():
    """.ci/run's commands after its fresh-clone guard are the README's Quick start lines, verbatim."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    quick_start = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().split("\nfi\n", 1)[1].strip().splitlines()
    assert ci == quick_start
