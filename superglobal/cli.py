"""The superglobal-* commands of an installed checkout (pyproject.toml [project.scripts]).

Each runs one of the checkout's scripts exactly as `python <script> ARGS` from the checkout does:
the same argv, the same sys.path[0] (the script's folder), run as __main__, so its options, output,
messages and exit codes are the script's own. The scripts stay files of the checkout, so the
commands need the editable install (`pip install -e .`).
"""

import runpy
import sys

from errors import quiet_interrupt_during_startup
from superglobal._checkout import ROOT

SCRIPTS = {"superglobal-eval": "test.py", "superglobal-extract-r1m": "extract_rop1m.py",
           "superglobal-rerank": "rerank_features.py", "superglobal-sweep": "sweep.py",
           "superglobal-check-setup": "tools/check_setup.py"}


def run_script(relative):
    """Run ROOT/relative as `python ROOT/relative sys.argv[1:]`; exits with its exit code."""
    quiet_interrupt_during_startup()
    path = ROOT / relative
    if not path.is_file():
        sys.stderr.write(f"error: {path} not found: the superglobal-* commands run the scripts of a checkout; "
                         "install it with pip install -e <checkout>\n")
        return 2
    sys.argv[0] = str(path)
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")  # the script ends with errors.exit_with(main())
    return 0


def evaluate():
    return run_script(SCRIPTS["superglobal-eval"])


def extract_r1m():
    return run_script(SCRIPTS["superglobal-extract-r1m"])


def rerank():
    return run_script(SCRIPTS["superglobal-rerank"])


def sweep():
    return run_script(SCRIPTS["superglobal-sweep"])


def check_setup():
    return run_script(SCRIPTS["superglobal-check-setup"])
