"""Evaluate CVNet + SuperGlobal on Revisited Oxford / Paris and append mAP to log.txt.

    python test.py MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop \
        SupG.gemp SupG.rgem SupG.sgem SupG.relup SupG.rerank SupG.onemeval False

`python test.py --help` lists every config key with its default.
"""

from errors import quiet_interrupt_during_startup

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

import sys
import time
from pathlib import Path

from config import cfg_file_of, describe_keys, load_cfg_from_args, scales_of, vis_selection
from errors import UserError, exit_code_of, one_line
from test.build import default_distractors_path, descriptor_dim, descriptor_fingerprint
from test.datasets import open_datasets
from test.device import resolve_device
from test.distractors import load_distractors
from test.extract import autocast_context
from test.feature_cache import FeatureCache
from test.outputs.per_query import csv_name
from test.pipeline import build_extractor, evaluate_dataset
from test.provenance import (append_result, config_lines, config_unchanged, header_lines, new_run_id, result_record,
                             run_header, write_config)
from test.run_log import RunLog
from test.runtime import tune_process
from test.writer import OutDirLock, forget_inputs, input_named, refuse_input, refuse_output_folder, register_input

USAGE = """usage: python test.py [--cfg FILE] [KEY VALUE | BOOL_KEY] ...

examples:
  python test.py MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop
  python test.py MODEL.DEPTH 101 SupG.rerank False                 (ablation: no reranking)
  python test.py TEST.DATASET_LIST roxford5k SupG.onemeval          (a BOOL_KEY alone means True)
  python test.py TEST.DATASET_LIST custom:/data/my_photos,roxford5k
  python test.py TEST.DATASET_LIST "['custom:/data/a,b', 'gldv2:/data/gldv2']"
  python tools/check_setup.py ...   (the same keys: checks data and weights before a long run)

TEST.DATASET_LIST: one entry, comma-separated entries, or a quoted Python list (for an entry
holding a comma). Entries: a revisitop name (roxford5k, rparis6k; under TEST.DATA_DIR),
custom:<folder> or custom:<folder>::<gt file> (docs/custom_data.md), gldv2:<root> (docs/gldv2.md).

config keys (default, meaning):
"""


def config_summary(cfg, device):
    """One line naming what is really computed: the pooling switches only for the descriptor that
    uses them, the reranking parameters only when it runs."""
    supg = cfg.SupG
    model = f"MODEL.DEPTH={cfg.MODEL.DEPTH}" if cfg.MODEL.TYPE == "RESNET" else f"MODEL.TYPE={cfg.MODEL.TYPE}"
    if cfg.TEST.DESCRIPTOR == "cvnet":
        pooling = (f"descriptor=cvnet (plain ResNet, learned GeM, head.fc; cv2 resize, upscale "
                   f"{cfg.TEST.CVNET_UPSCALE})")
    else:
        flags = " ".join(f"{k}={supg[k]}" for k in ("gemp", "rgem", "sgem", "relup"))
        pooling = (f"{flags} (gemp_p={supg.gemp_p} rgem_p={supg.rgem_p} rgem_size={supg.rgem_size} "
                   f"relup_alpha={supg.relup_alpha} relup_stage1_quirk={supg.relup_stage1_quirk})")
    rerank = f"rerank=True (M={supg.M} K={supg.K} beta={supg.beta})" if supg.rerank else "rerank=False"
    return (f"config: {model} scales={scales_of(cfg.TEST.SCALE_LIST)} {pooling} {rerank} "
            f"onemeval={supg.onemeval} precision={cfg.TEST.PRECISION} device={device}")


def refuse_unsupported(cfg, datasets):
    """Settings a dataset kind does not define stop before any work."""
    for dataset in datasets:
        if cfg.TEST.DESCRIPTOR == "cvnet" and not dataset.supports_cvnet:
            raise UserError(f"{dataset.name}: TEST.DESCRIPTOR cvnet is defined for revisitop-style datasets "
                            "only; use TEST.DESCRIPTOR superglobal")
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


def open_distractors(cfg, fingerprint):
    """(the R1M features, a line describing them) from SupG.distractors_path or the default file."""
    path = cfg.SupG.distractors_path or default_distractors_path(cfg)
    distractors, info = load_distractors(path, expected_fingerprint=fingerprint,
                                         check=cfg.SupG.distractors_check, dim=descriptor_dim(cfg))
    register_input(path, "SupG.distractors_path")
    return distractors, info.describe()


def refuse_outputs_over_inputs(cfg, datasets, argv):
    """Before any work: no file this run writes in OUT_DIR may be one it reads (a weights file or a
    ground truth named log.txt, results.json, per_query_<dataset>.csv or <dataset>.npz there, or the
    --cfg file, unless config.yaml would stay byte for byte as it is)."""
    if cfg_file_of(argv):
        register_input(cfg_file_of(argv), "--cfg")
    out_dir = Path(cfg.OUT_DIR)
    outputs = ["log.txt", "results.json"] + ([] if config_unchanged(out_dir, cfg) else ["config.yaml"])
    outputs += [csv_name(dataset.output_name) for dataset in datasets]
    if cfg.TEST.SAVE_FEATURES:
        outputs += [f"{dataset.output_name}.npz" for dataset in datasets]
    for name in outputs:
        refuse_input(out_dir / name)


def run(cfg, argv, log):
    """Check every input, then write the header and evaluate each dataset. Whatever is wrong with
    the inputs stops the run before the header."""
    device = resolve_device(cfg.DEVICE)
    autocast_context(device, cfg.TEST.PRECISION)  # fp16 on a CPU stops here, before any work
    datasets = open_datasets(cfg.TEST.DATASET_LIST, cfg.TEST.DATA_DIR, cfg.TEST.TOPK)
    refuse_unsupported(cfg, datasets)
    refuse_bad_selection(cfg, datasets)
    refuse_output_folder(cfg.OUT_DIR, "OUT_DIR")
    if cfg.TEST.CACHE and cfg.TEST.CACHE_DIR:
        refuse_output_folder(cfg.TEST.CACHE_DIR, "TEST.CACHE_DIR")
    extract, weights = build_extractor(cfg, device)
    register_input(weights, "TEST.WEIGHTS")
    fingerprint = descriptor_fingerprint(cfg, weights)
    distractors, described = open_distractors(cfg, fingerprint) if cfg.SupG.onemeval else (None, None)
    refuse_outputs_over_inputs(cfg, datasets, argv)
    header = run_header(new_run_id(), argv, device, weights)
    log.write(f"==== {header['started']} {header['command']}", config_summary(cfg, device) + f" weights={weights}",
              *header_lines(header))
    log.write(*config_lines(cfg), echo=False)
    write_config(cfg.OUT_DIR, cfg)
    if described:
        log.write(described)
    cache = None
    if cfg.TEST.CACHE:
        cache = FeatureCache(cfg.TEST.CACHE_DIR or Path(cfg.OUT_DIR) / "feature_cache", fingerprint,
                             descriptor_dim(cfg))
    for dataset in datasets:
        results, timings, table = evaluate_dataset(cfg, dataset, extract, cache, distractors, device, log,
                                                   header["run_id"])
        append_result(cfg.OUT_DIR, result_record(header, cfg, fingerprint, dataset.name, results, timings, table))


def run_logged(cfg, argv):
    """`run` under the OUT_DIR lock; a user error also goes to log.txt, as one line."""
    forget_inputs()  # main() may run several times in one process (tests)
    with OutDirLock(cfg.OUT_DIR):
        log = RunLog(cfg.OUT_DIR)
        try:
            run(cfg, argv, log)
        except UserError as error:
            if input_named(log.path) is None:  # log.txt itself may be the input that stopped the run
                log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} python test.py {' '.join(argv)} -> "
                          f"error: {one_line(error)}", echo=False)
            raise


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    if "-h" in argv or "--help" in argv:
        print(USAGE + describe_keys())
        return 0
    return exit_code_of(lambda: run_logged(load_cfg_from_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
