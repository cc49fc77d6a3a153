"""What a run records about itself: the code (git commit, dirty or not), the software versions, the
device, the weights' sha256, the full config, and where the time went. log.txt gets it as a header,
<OUT_DIR>/config.yaml the merged config (loadable with --cfg), and <OUT_DIR>/results.json one record
per run and dataset."""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from errors import log_safe, readable_file
from model.fingerprint import weights_sha256
from test.outputs.per_query import UNITS
from test.outputs.writer import atomic_write, save_json

REPO = Path(__file__).resolve().parents[2]
KAPPAS = (1, 5, 10)  # the official mP@k cut-offs (test.retrieval.evaluate)


def new_run_id() -> str:
    """Start time plus a random suffix: ties every output of one run together."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def git_state(repo=REPO) -> str:
    """`<commit> (clean|dirty)`, or `unknown (not a git checkout)`."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return f"{head.stdout.strip()} ({'dirty' if dirty else 'clean'})"


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__}


def device_description(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device} ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return (f"{device} ({torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()})")


def run_header(run_id, argv, device, weights) -> dict:
    """Everything the header lines say, as a dict (results.json keeps it too)."""
    return {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python test.py " + " ".join(argv), "code": git_state(), **versions(),
            "device": device_description(device), "weights": str(weights),
            "weights_sha256": weights_sha256(weights)}


def header_lines(header: dict) -> list[str]:
    soft = " ".join(f"{k}={header[k]}" for k in ("python", "torch", "numpy", "opencv"))
    return [f"run {header['run_id']}: code {header['code']}; {soft}",
            f"device {header['device']}; weights {header['weights']} sha256 {header['weights_sha256']}"]


def config_lines(cfg) -> list[str]:
    """The full merged config as YAML, indented under a `full config:` line (pycls dump_cfg). Text
    values are escaped first (`errors.log_safe`): YAML would fold a value holding a line break over
    several lines, and each would read as a line of the log."""
    shown = cfg.clone()
    shown.defrost()

    def escape(node):
        for key, value in node.items():
            if isinstance(value, dict):  # a CfgNode section
                escape(value)
            elif isinstance(value, str):
                node[key] = log_safe(value)
            elif isinstance(value, list):
                node[key] = [log_safe(v) if isinstance(v, str) else v for v in value]
    escape(shown)
    return ["full config:"] + ["  " + line for line in shown.dump().rstrip().splitlines()]


def config_unchanged(out_dir, cfg) -> bool:
    """<OUT_DIR>/config.yaml already holds exactly this config (e.g. it was given back with --cfg)."""
    path = readable_file(Path(out_dir) / "config.yaml", " (OUT_DIR)")
    try:
        return path.read_text() == cfg.dump()
    except (OSError, UnicodeDecodeError):
        return False


def write_config(out_dir, cfg) -> Path:
    """<OUT_DIR>/config.yaml: the merged config, loadable with `python test.py --cfg`. Left as it is
    when it already holds this config (the --cfg file of a rerun is then not rewritten)."""
    path = Path(out_dir) / "config.yaml"
    if config_unchanged(out_dir, cfg):
        return path
    return atomic_write(path, cfg.dump(), " (OUT_DIR)")


class Timings:
    """Seconds per step of one dataset: `with timings("search"): ...`."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, step):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def line(self, name) -> str:
        parts = ", ".join(f"{step} {value:.2f} s" for step, value in self.seconds.items())
        return f"time for {name}: {parts} (total {sum(self.seconds.values()):.2f} s)"


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def result_scores(results) -> dict:
    """mAP and mP@k per protocol (revisitop) or mAP@100 (GLDv2), as JSON numbers (None if not finite)."""
    if "E" in results:
        return {p: {"map": _finite_or_none(results[p]["map"]),
                    "mp@k": {str(k): _finite_or_none(v) for k, v in zip(KAPPAS, results[p]["mpr"])}}
                for p in ("E", "M", "H")}
    return {k: _finite_or_none(v) for k, v in results.items() if np.ndim(v) == 0}


def result_record(header, cfg, fingerprint, dataset_name, results, timings, extra=None) -> dict:
    """One results.json record: the final results (result_scores) as fractions in [0, 1] (``units``;
    log.txt prints them x100), plus `extra` entries: each query's AP before and after reranking
    (``per_query``, test.outputs.per_query.json_value) and, for a two-stage run, the reranker, its
    parameters and the first stage's results."""
    return {**header, "dataset": dataset_name, "config": json.loads(json.dumps(cfg, default=list)),
            "fingerprint": fingerprint, "units": UNITS, "results": result_scores(results),
            "seconds": dict(timings.seconds), **(extra or {})}


def append_result(out_dir, record) -> Path:
    """Add `record` to <OUT_DIR>/results.json (a JSON list; the caller holds the OUT_DIR lock)."""
    path = Path(out_dir) / "results.json"
    records = []
    if readable_file(path, " (OUT_DIR)").is_file():
        try:
            records = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError):
            records = None
        if not isinstance(records, list):  # never lose a damaged file: keep it aside
            os.replace(path, path.with_name(f"results.json.damaged-{new_run_id()}"))
            records = []
    return save_json(path, records + [record], " (OUT_DIR)")
