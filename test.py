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

from config import describe_keys, load_cfg_from_args, scales_of
from errors import UserError, exit_code_of, exit_with, one_line
from test.build import descriptor_dim
from test.extraction.feature_cache import FeatureCache
from test.extraction.runtime import tune_process
from test.outputs.provenance import (
    append_result,
    config_lines,
    header_lines,
    new_run_id,
    result_record,
    run_header,
    write_config,
)
from test.outputs.run_log import RunLog
from test.outputs.writer import OutDirLock
from test.pipeline import evaluate_dataset
from test.preflight import prepare

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
    if cfg.CVNET.RERANK:
        rerank += f" cvnet_rerank=True (topk={cfg.CVNET.TOPK} mix_ratio={cfg.CVNET.MIX_RATIO})"
    return (f"config: {model} scales={scales_of(cfg.TEST.SCALE_LIST)} {pooling} {rerank} "
            f"onemeval={supg.onemeval} precision={cfg.TEST.PRECISION} device={device}")


def run(cfg, argv, log):
    """Check every input, then write the header and evaluate each dataset. Whatever is wrong with
    the inputs stops the run before the header."""
    prepared = prepare(cfg, argv)
    device, weights, fingerprint, described = (prepared.device, prepared.weights, prepared.fingerprint,
                                               prepared.described)
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
    for dataset in prepared.datasets:
        results, timings, extra = evaluate_dataset(cfg, dataset, prepared.extract, cache, prepared.distractors,
                                                   device, log, header["run_id"], prepared.cvnet_scorer)
        append_result(cfg.OUT_DIR, result_record(header, cfg, fingerprint, dataset.name, results, timings, extra))


def run_logged(cfg, argv):
    """`run` under the OUT_DIR lock; a user error also goes to log.txt, as one line."""
    with OutDirLock(cfg.OUT_DIR):
        log = RunLog(cfg.OUT_DIR)
        try:
            run(cfg, argv, log)
        except UserError as error:
            try:  # log.txt itself (or what it links to) may be the input that stopped the run
                log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} python test.py {' '.join(argv)} -> "
                          f"error: {one_line(error)}", echo=False)
            except UserError:
                pass
            raise


def main(argv=None):
    """Evaluate every dataset of the config: extract, search, rerank, score; the exit code (0, 2, 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    if "-h" in argv or "--help" in argv:
        print(USAGE + describe_keys())
        return 0
    return exit_code_of(lambda: run_logged(load_cfg_from_args(argv), argv))


if __name__ == "__main__":
    exit_with(main())
