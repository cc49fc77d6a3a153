"""Everything test.py checks before it writes its header: the one sequence of checks that
test.py runs and tools/check_setup.py reports, so the two can never disagree.

`prepare(cfg, argv)` checks the device and precision, opens every dataset (ground truth, images),
refuses settings a dataset does not define and output folders inside inputs, loads the weights
(and CVNet-Rerank's, with CVNET.RERANK),
opens the R1M distractors (SupG.onemeval) and refuses outputs that would land on an input. It
writes nothing. The first problem raises UserError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config import cfg_file_of, vis_selection
from errors import UserError
from test.build import default_r1m_path, descriptor_dim, descriptor_fingerprint
from test.datasets import open_datasets
from test.extraction.device import resolve_device
from test.extraction.extract import check_precision
from test.outputs.per_query import csv_name
from test.outputs.provenance import config_unchanged
from test.outputs.writer import forget_inputs, refuse_input, refuse_output_folder, register_input
from test.pipeline import build_cvnet_scorer, build_extractor
from test.r1m.features import load_r1m_features


@dataclass
class Prepared:
    """What the checks opened, ready for the run."""
    device: object
    datasets: list
    extract: object
    weights: Path
    fingerprint: dict
    distractors: object = None
    described: str | None = None
    cvnet_scorer: object = None  # CVNET.RERANK: test.two_stage.cvnet_rerank.PairScorer


def refuse_unsupported(cfg, datasets):
    """Settings a dataset kind does not define stop before any work."""
    for dataset in datasets:
        if cfg.TEST.DESCRIPTOR == "cvnet" and not dataset.supports_cvnet:
            raise UserError(f"{dataset.name}: TEST.DESCRIPTOR cvnet is defined for revisitop-style datasets "
                            "only; use TEST.DESCRIPTOR superglobal")
        if cfg.CVNET.RERANK and dataset.gnd is None:
            raise UserError(f"{dataset.name}: CVNET.RERANK needs revisitop-style ground truth (easy, hard, junk: "
                            "CVNet's candidate selection skips junk); set CVNET.RERANK False")
        if cfg.SupG.onemeval and not dataset.supports_distractors:
            raise UserError(f"{dataset.name}: SupG.onemeval (R1M distractors) is defined for revisitop-style "
                            "datasets only; set SupG.onemeval False")


def refuse_bad_selection(cfg, datasets):
    """TEST.VIS_QUERIES helped / hurt need reranking, and every name must be a query of a dataset
    that gets pictures: checked before any work."""
    selection = vis_selection(cfg.TEST.VIS_QUERIES)
    if selection.kind in ("helped", "hurt") and not cfg.SupG.rerank:
        raise UserError(f"TEST.VIS_QUERIES {selection.kind}:{selection.count} picks queries by what reranking "
                        "changed, but SupG.rerank is False: set SupG.rerank True or give a number of queries")
    if selection.kind == "names":
        pictured = [dataset for dataset in datasets if dataset.gnd is not None]
        known = {name for dataset in pictured for name in dataset.gnd.qimlist}
        missing = [name for name in selection.names if name not in known]
        if missing:
            some = ", ".join(sorted(known)[:3]) if known else "none (pictures are drawn for revisitop-style datasets)"
            raise UserError(f"TEST.VIS_QUERIES: no query named {missing[0]!r} in "
                            f"{', '.join(d.name for d in pictured) or 'TEST.DATASET_LIST'}: give names as in the "
                            f"ground truth's query list (e.g. {some})")


def open_r1m_features(cfg, fingerprint):
    """(the R1M features, a line describing them) from SupG.distractors_path or the default file."""
    path = cfg.SupG.distractors_path or default_r1m_path(cfg)
    distractors, info = load_r1m_features(path, expected_fingerprint=fingerprint,
                                         check=cfg.SupG.distractors_check, dim=descriptor_dim(cfg))
    register_input(path, "SupG.distractors_path")
    return distractors, info.describe()


def refuse_outputs_over_inputs(cfg, datasets, argv):
    """No file this run writes in OUT_DIR may be one it reads (a weights file or a ground truth named
    log.txt, results.json, per_query_<dataset>.csv or <dataset>.npz there, or the --cfg file, unless
    config.yaml would stay byte for byte as it is), a special file, or reached through a link to an
    input."""
    if cfg_file_of(argv):
        register_input(cfg_file_of(argv), "--cfg")
    out_dir = Path(cfg.OUT_DIR)
    outputs = ["log.txt", "results.json"] + ([] if config_unchanged(out_dir, cfg) else ["config.yaml"])
    outputs += [csv_name(dataset.output_name) for dataset in datasets]
    if cfg.TEST.SAVE_FEATURES:
        outputs += [f"{dataset.output_name}.npz" for dataset in datasets]
    for name in outputs:
        refuse_input(out_dir / name)


def prepare(cfg, argv) -> Prepared:
    """Run every check test.py makes before its header, in test.py's order; raise the first problem."""
    forget_inputs()  # a new run in this process (tests, check_setup) starts with no inputs
    device = resolve_device(cfg.DEVICE)
    check_precision(device, cfg.TEST.PRECISION)  # before any work
    datasets = open_datasets(cfg.TEST.DATASET_LIST, cfg.TEST.DATA_DIR, cfg.TEST.TOPK)
    refuse_unsupported(cfg, datasets)
    refuse_bad_selection(cfg, datasets)
    refuse_output_folder(cfg.OUT_DIR, "OUT_DIR")
    if cfg.TEST.CACHE and cfg.TEST.CACHE_DIR:
        refuse_output_folder(cfg.TEST.CACHE_DIR, "TEST.CACHE_DIR")
    extract, weights = build_extractor(cfg, device)
    register_input(weights, "TEST.WEIGHTS")
    fingerprint = descriptor_fingerprint(cfg, weights)
    prepared = Prepared(device, datasets, extract, weights, fingerprint)
    prepared.cvnet_scorer, _ = build_cvnet_scorer(cfg, device)
    if cfg.SupG.onemeval:
        prepared.distractors, prepared.described = open_r1m_features(cfg, fingerprint)
    refuse_outputs_over_inputs(cfg, datasets, argv)
    return prepared
