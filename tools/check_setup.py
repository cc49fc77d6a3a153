"""Check the data and weights that a test.py run would use, in seconds, before hours of extraction.

    python tools/check_setup.py [--cfg FILE] [KEY VALUE ...]     (the same overrides as test.py)

For each dataset of TEST.DATASET_LIST: the ground truth loads, and how many query and database
images are found of those it lists (with the first missing one). The weights file: found, loads
into the configured network, its sha256. With SupG.onemeval: the distractor features open and match
the descriptor. Prints a table; exit code 0 when everything is ready, else 2 with one
`error: ...` line per problem on stderr.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_cfg_from_args  # noqa: E402
from errors import UserError  # noqa: E402
from model.fingerprint import file_sha256  # noqa: E402
from test.build import default_distractors_path, descriptor_dim, descriptor_fingerprint, load_descriptor  # noqa: E402
from test.custom_dataset import load_dataset_entry  # noqa: E402
from test.distractors import load_distractors  # noqa: E402
from test.gldv2 import load_gldv2  # noqa: E402
from test.images import require_images  # noqa: E402


class Report:
    """Rows of the table (check, status, details) and the problems found, one message each."""

    def __init__(self):
        self.rows, self.problems = [], []

    def ok(self, check, details):
        self.rows.append((check, "ok", details))

    def problem(self, check, error, details=None):
        self.rows.append((check, "PROBLEM", details or str(error)))
        self.problems.append(str(error))

    def table(self):
        width = max(len(check) for check, _, _ in self.rows)
        return "\n".join(f"{check:<{width}}  {status:<7}  {details}" for check, status, details in self.rows)


def check_images(report, check, what, paths):
    """Count the images a split lists that exist; a problem (first missing one) when any is absent.
    `what` names them in the message, e.g. "roxford5k query" (images)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    details = f"{len(paths) - len(missing)} of {len(paths)} found"
    if not missing:
        report.ok(check, details)
        return
    try:
        require_images(paths, what)  # the message test.py would stop with
    except UserError as error:
        report.problem(check, error, f"{details}; first missing: {missing[0]}")


def check_dataset(report, cfg, entry):
    """One TEST.DATASET_LIST entry: gldv2:<root>, custom:<folder>, or a revisitop name (as test.py)."""
    try:
        if entry.startswith("gldv2:"):
            gld = load_gldv2(entry[len("gldv2:"):])
            splits = [("queries", "query", gld.query_paths), ("index", "index", gld.index_paths)]
            report.ok(f"{entry} ground truth", f"{gld.root}: {len(gld.query_paths)} queries, "
                                                 f"{len(gld.index_paths)} index images")
        else:
            gnd = load_dataset_entry(cfg.TEST.DATA_DIR, entry)
            splits = [("queries", "query", gnd.query_paths), ("database", "database", gnd.db_paths)]
            report.ok(f"{entry} ground truth", f"{gnd.gnd_path}: {gnd.nq} queries, {gnd.n} database images")
    except UserError as error:
        report.problem(f"{entry} ground truth", error)
        return
    for split, kind, paths in splits:
        check_images(report, f"{entry} {split}", f"{entry} {kind}", paths)


def check_weights(report, cfg):
    """Load the weights into the configured network (depth and head checked); returns the path or None."""
    check = "weights" if cfg.MODEL.TYPE == "RESNET" else f"weights ({cfg.MODEL.TYPE})"
    try:
        _, path = load_descriptor(cfg)
    except UserError as error:
        report.problem(check, error)
        return None
    network = f"ResNet-{cfg.MODEL.DEPTH}" if cfg.MODEL.TYPE == "RESNET" else cfg.MODEL.TYPE
    report.ok(check, f"{path} ({network}, {os.path.getsize(path) / 2**20:.1f} MiB) "
                     f"sha256 {file_sha256(path)}")
    return path


def check_distractors(report, cfg, weights):
    """The R1M features of SupG.onemeval: readable, finite, of the descriptor's dimension and, when
    the weights loaded and a sidecar is there, extracted with the same descriptor."""
    fingerprint = descriptor_fingerprint(cfg, weights) if weights is not None else None
    try:
        path = cfg.SupG.distractors_path or default_distractors_path(cfg)
        _, info = load_distractors(path, expected_fingerprint=fingerprint, check=cfg.SupG.distractors_check,
                                   dim=descriptor_dim(cfg))
    except UserError as error:
        report.problem("distractors", error)
        return
    report.ok("distractors", info.describe().removeprefix("distractors: "))


def check_setup(cfg):
    report = Report()
    for entry in cfg.TEST.DATASET_LIST:
        check_dataset(report, cfg, entry)
    weights = check_weights(report, cfg)
    if cfg.SupG.onemeval:
        check_distractors(report, cfg, weights)
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    try:
        cfg = load_cfg_from_args(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = check_setup(cfg)
    print(report.table())
    if report.problems:
        print(f"{len(report.problems)} problem(s): fix them before running test.py", flush=True)
        print("\n".join(f"error: {problem}" for problem in report.problems), file=sys.stderr)
        return 2
    print("ready: test.py finds every file it needs with this configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
