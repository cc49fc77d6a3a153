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

from errors import quiet_interrupt_during_startup  # noqa: E402

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

from config import load_cfg_from_args  # noqa: E402
from errors import UserError, exit_code_of, exit_with, one_line  # noqa: E402
from model.cvnet_rerank import build_cvnet_rerank, load_rerank_weights  # noqa: E402
from model.fingerprint import file_sha256  # noqa: E402
from test.build import default_r1m_path, descriptor_dim, descriptor_fingerprint, load_descriptor  # noqa: E402
from test.data.custom import load_dataset_entry  # noqa: E402
from test.data.gldv2 import load_gldv2  # noqa: E402
from test.data.images import require_images  # noqa: E402
from test.extraction.device import resolve_device  # noqa: E402
from test.extraction.extract import check_precision  # noqa: E402
from test.preflight import prepare  # noqa: E402
from test.r1m.features import load_r1m_features  # noqa: E402


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


def check_r1m_features(report, cfg, weights):
    """The R1M features of SupG.onemeval: readable, finite, of the descriptor's dimension and, when
    the weights loaded and a sidecar is there, extracted with the same descriptor."""
    fingerprint = descriptor_fingerprint(cfg, weights) if weights is not None else None
    try:
        path = cfg.SupG.distractors_path or default_r1m_path(cfg)
        _, info = load_r1m_features(path, expected_fingerprint=fingerprint, check=cfg.SupG.distractors_check,
                                   dim=descriptor_dim(cfg))
    except UserError as error:
        report.problem("distractors", error)
        return
    report.ok("distractors", info.describe().removeprefix("distractors: "))


def check_device(report, cfg):
    """DEVICE and TEST.PRECISION, as test.py resolves them first."""
    try:
        device = resolve_device(cfg.DEVICE)
        check_precision(device, cfg.TEST.PRECISION)
    except UserError as error:
        report.problem("device", error)
        return
    report.ok("device", f"{device}, {cfg.TEST.PRECISION}")


def check_run(report, cfg, argv):
    """test.py's own checks before its header (test.preflight.prepare, the code test.py runs), once
    the rows above found no problem: "ready" then means that test.py passes them too, so the two
    can never disagree (datasets listed twice, settings a dataset does not define, output folders
    inside inputs, outputs over inputs, special files in OUT_DIR)."""
    if report.problems:
        return
    try:
        prepare(cfg, argv)
    except UserError as error:
        report.problem("test.py checks", error)
        return
    report.ok("test.py checks", f"datasets, weights and the outputs in {cfg.OUT_DIR} pass test.py's checks")


def check_rerank_weights(report, cfg):
    """CVNET.RERANK: the checkpoint's CVNet-Rerank network (conv2ds.*, cv_learner.*) loads strictly."""
    try:
        path = load_rerank_weights(build_cvnet_rerank(cfg.MODEL.DEPTH), cfg.TEST.WEIGHTS, cfg.MODEL.DEPTH)
    except UserError as error:
        report.problem("CVNet-Rerank weights", error)
        return
    report.ok("CVNet-Rerank weights", f"{path} (conv2ds, cv_learner of ResNet-{cfg.MODEL.DEPTH})")


def check_setup(cfg, argv=()):
    """Run every check for `cfg` and return the report (one row per check, the problems found)."""
    report = Report()
    for entry in cfg.TEST.DATASET_LIST:
        check_dataset(report, cfg, entry)
    weights = check_weights(report, cfg)
    if cfg.CVNET.RERANK:
        check_rerank_weights(report, cfg)
    if cfg.SupG.onemeval:
        check_r1m_features(report, cfg, weights)
    check_device(report, cfg)
    check_run(report, cfg, list(argv))
    return report


def main(argv=None):
    """Command-line entry point of check_setup.py; returns 0 when all is ready, else 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    codes = []
    status = exit_code_of(lambda: codes.append(check_and_report(argv)))
    return status or codes[0]


def check_and_report(argv):
    """Print the table and the problems; the exit code (0 ready, 2 problems)."""
    cfg = load_cfg_from_args(argv)
    report = check_setup(cfg, argv)
    print(report.table())
    if report.problems:
        print(f"{len(report.problems)} problem(s): fix them before running test.py", flush=True)
        print("\n".join(f"error: {one_line(problem)}" for problem in report.problems), file=sys.stderr)
        return 2
    print("ready: test.py finds every file it needs with this configuration")
    return 0


if __name__ == "__main__":
    exit_with(main())
