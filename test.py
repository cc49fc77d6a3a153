"""Evaluate CVNet + SuperGlobal on Revisited Oxford / Paris and append mAP to log.txt.

    python test.py MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop \
        SupG.gemp SupG.rgem SupG.sgem SupG.relup SupG.rerank SupG.onemeval False

`python test.py --help` lists every config key with its default.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from config import describe_keys, load_cfg_from_args, scales_of
from errors import UserError, exit_code_of
from model.checkpoint import load_weights
from model.cvnet_global import build_cvnet_global, extract_cvnet_global
from model.efficientnet_lite import load_lite0_weights
from model.fingerprint import descriptor_fingerprint
from model.superglobal import build_descriptor, descriptor_dim
from modules.reranking import rerank
from test.custom_dataset import load_dataset_entry
from test.distractors import load_distractors
from test.evaluate import evaluate_revisitop, format_results
from test.extract import extract_features
from test.feature_cache import FeatureCache
from test.gldv2 import GLDv2, GLDv2Images, evaluate_gldv2, format_gldv2, load_gldv2
from test.gnd import protocols
from test.images import RevisitopImages, require_images
from test.runtime import options_from_cfg, tune_process, workers_for
from test.search import rank_by_similarity, top_by_similarity
from test.search_1m import (evaluate_from_search, rerank_top, search_with_distractors, top_ranks,
                            wanted_from_protocols)
from test.visualize import write_pictures

USAGE = "usage: python test.py [--cfg FILE] [KEY VALUE | BOOL_KEY] ...\n\nconfig keys (default, meaning):\n"


def resolve_device(name):
    """`auto` -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"DEVICE {name}: no CUDA device is available here; use DEVICE cpu or auto")
    return torch.device(name)


class RunLog:
    """Prints lines and appends them, a block at a time, to <OUT_DIR>/log.txt."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / "log.txt"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as error:
            raise UserError(f"cannot write {self.path} (OUT_DIR): {error.strerror}") from None

    def write(self, *lines):
        for line in lines:
            print(line, flush=True)
        try:
            with open(self.path, "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise UserError(f"cannot write {self.path} (OUT_DIR): {error.strerror}") from None


def config_summary(cfg, device):
    supg = cfg.SupG
    flags = " ".join(f"{k}={supg[k]}" for k in ("gemp", "rgem", "sgem", "relup", "rerank", "onemeval"))
    model = f"MODEL.DEPTH={cfg.MODEL.DEPTH}" if cfg.MODEL.TYPE == "RESNET" else f"MODEL.TYPE={cfg.MODEL.TYPE}"
    return (f"config: {model} scales={scales_of(cfg.TEST.SCALE_LIST)} {flags} "
            f"(gemp_p={supg.gemp_p} rgem_p={supg.rgem_p} rgem_size={supg.rgem_size} "
            f"relup_alpha={supg.relup_alpha} relup_stage1_quirk={supg.relup_stage1_quirk} "
            f"M={supg.M} K={supg.K} beta={supg.beta}) precision={cfg.TEST.PRECISION} device={device}")


def save_features(path, **arrays):
    """np.savez to a temporary file, then an atomic rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror}") from None


def build_extractor(cfg, device):
    """The descriptor network that cfg asks for, with its weights: (extract(paths, bboxes, desc), weights
    path). `superglobal` is the paper's pipeline; `cvnet` is CVNet's own global pipeline (cv2 resizing
    of the image, learned GeM, no SuperGlobal module), for the CVNet-Global rows."""
    if cfg.TEST.DESCRIPTOR == "cvnet":
        backbone = build_cvnet_global(cfg.MODEL.DEPTH, cfg.MODEL.HEADS.REDUCTION_DIM)
        weights = load_weights(backbone, cfg.TEST.WEIGHTS, cfg.MODEL.DEPTH)

        def extract(paths, bboxes, desc, gldv2=False):  # gldv2 entries are refused in run()
            return extract_cvnet_global(backbone, paths, bboxes, device, scales=scales_of(cfg.TEST.SCALE_LIST),
                                        num_workers=workers_for(cfg.TEST.NUM_WORKERS, device),
                                        precision=cfg.TEST.PRECISION, upscale=cfg.TEST.CVNET_UPSCALE, desc=desc)
        return extract, weights
    descriptor = build_descriptor(cfg)
    if cfg.MODEL.TYPE == "EFFICIENTNET_LITE0":
        weights = load_lite0_weights(descriptor.backbone, cfg.TEST.WEIGHTS)
    else:
        weights = load_weights(descriptor.backbone, cfg.TEST.WEIGHTS, cfg.MODEL.DEPTH)
    descriptor.to(device)

    def extract(paths, bboxes, desc, gldv2=False):
        images = GLDv2Images(paths) if gldv2 else RevisitopImages(paths, bboxes)
        return extract_features(descriptor, images, device,
                                precision=cfg.TEST.PRECISION, desc=desc, options=options_from_cfg(cfg))
    return extract, weights


def extract_split(extract, cache, name, paths, bboxes=None, gldv2=False):
    """Features of one split, from the cache when the same images were extracted the same way."""
    if cache is None:
        return extract(paths, bboxes, name, gldv2)
    features, hit = cache.get_or_compute(name.replace(" ", "_"), paths, bboxes,
                                         lambda: extract(paths, bboxes, name, gldv2))
    if hit:
        print(f"{name}: {len(paths)} features from the cache in {cache.directory}", flush=True)
    return features


def evaluate_dataset(extract, cfg, device, cache, distractors, gnd, log):
    name = gnd["dataset"]
    method = "CVNet-Global" if cfg.TEST.DESCRIPTOR == "cvnet" else "SuperGlobal"
    log.write(f">> {name}: Global Retrieval for scale {scales_of(cfg.TEST.SCALE_LIST)} with {method}")
    Q = extract_split(extract, cache, f"{name} queries", gnd["query_paths"], [g["bbx"] for g in gnd["gnd"]])
    X = extract_split(extract, cache, f"{name} database", gnd["db_paths"])
    Qt, Xt = torch.from_numpy(Q).to(device), torch.from_numpy(X).to(device)
    if distractors is None:
        ranks_global, ranks, results = search_database(cfg, Qt, Xt, protocols(gnd["gnd"]))
    else:
        ranks_global, ranks, results = search_with_1m(cfg, Qt, Xt, distractors, protocols(gnd["gnd"]))
    log.write(*format_results(results))
    if cfg.TEST.VIS_QUERIES:
        folder = write_pictures(Path(cfg.OUT_DIR) / "pictures" / name, gnd, Q, X, ranks_global, ranks,
                                cfg.TEST.VIS_QUERIES, cfg.TEST.VIS_TOPK, reranked=cfg.SupG.rerank)
        log.write(f"pictures of {min(cfg.TEST.VIS_QUERIES, len(Q))} queries: {folder / 'index.html'}")
    if cfg.TEST.SAVE_FEATURES:
        save_features(Path(cfg.OUT_DIR) / f"{name}.npz", Q=Q, X=X, ranks_global=ranks_global, ranks=ranks,
                      mapE=results["E"]["map"], mapM=results["M"]["map"], mapH=results["H"]["map"])


def evaluate_gldv2_dataset(extract, cfg, device, cache, gld, log):
    """GLDv2 retrieval: the top 100 (SuperGlobal-reranked) of the index per query, mAP@100."""
    log.write(f">> gldv2 {gld.root}: Global Retrieval for scale {scales_of(cfg.TEST.SCALE_LIST)} with SuperGlobal")
    Q = extract_split(extract, cache, "gldv2 queries", gld.query_paths, gldv2=True)
    X = extract_split(extract, cache, "gldv2 index", gld.index_paths, gldv2=True)
    Qt, Xt = torch.from_numpy(Q).to(device), torch.from_numpy(X).to(device)
    ranks_global = top_by_similarity(Xt, Qt, max(cfg.TEST.TOPK, cfg.SupG.M, 100))
    ranks = rerank_if_on(cfg, Qt, Xt, ranks_global)
    ranks_global, ranks = ranks_global.cpu().numpy(), ranks.cpu().numpy()
    results = evaluate_gldv2(ranks, gld)
    log.write(format_gldv2(results))
    if cfg.TEST.SAVE_FEATURES:
        save_features(Path(cfg.OUT_DIR) / "gldv2.npz", Q=Q, X=X, ranks_global=ranks_global, ranks=ranks,
                      **{f"map{name}": results[name] for name in ("Public", "Private", "All")})


def load_entry(cfg, entry):
    """One TEST.DATASET_LIST entry: gldv2:<root>, custom:<folder>, or a revisitop name."""
    if entry.startswith("gldv2:"):
        gld = load_gldv2(entry[len("gldv2:"):])
        require_images(gld.query_paths + gld.index_paths, "gldv2")
        return gld
    gnd = load_dataset_entry(cfg.TEST.DATA_DIR, entry)
    require_images(gnd["query_paths"] + gnd["db_paths"], gnd["dataset"])
    return gnd


def rerank_if_on(cfg, Q, X, ranks):
    """SuperGlobal reranking of `ranks` with cfg's M, K, beta when SupG.rerank is on, else `ranks`."""
    if not cfg.SupG.rerank:
        return ranks
    return rerank(Q, X, ranks, M=cfg.SupG.M, K=cfg.SupG.K, beta=cfg.SupG.beta)


def search_database(cfg, Q, X, protos):
    """Full ranking of the database, reranked; returns (ranks_global, ranks, results)."""
    ranks_global = rank_by_similarity(X, Q)
    ranks = rerank_if_on(cfg, Q, X, ranks_global).cpu().numpy()
    return ranks_global.cpu().numpy(), ranks, evaluate_revisitop(ranks, protos)


def search_with_1m(cfg, Q, X, distractors, protos):
    """Database + distractors in bounded memory: exact mAP, top TEST.TOPK ranks only."""
    keep = max(cfg.TEST.TOPK, cfg.SupG.M)
    found = search_with_distractors(Q, X, distractors, keep, wanted_from_protocols(protos))
    reranked = None
    if cfg.SupG.rerank:
        reranked = rerank_top(Q, X, distractors, found, M=cfg.SupG.M, K=cfg.SupG.K, beta=cfg.SupG.beta)
    results = evaluate_from_search(found, protos, reranked_top=reranked)
    return top_ranks(found), top_ranks(found, reranked), results


def open_distractors(cfg, fingerprint, log):
    path = cfg.SupG.distractors_path or f"./feats_1m_RN{cfg.MODEL.DEPTH}.pth"
    distractors, info = load_distractors(path, expected_fingerprint=fingerprint,
                                         check=cfg.SupG.distractors_check,
                                         dim=descriptor_dim(cfg))
    log.write(info.describe())
    return distractors


def run(cfg, argv):
    device = resolve_device(cfg.DEVICE)
    log = RunLog(cfg.OUT_DIR)
    ground_truths = [load_entry(cfg, entry) for entry in cfg.TEST.DATASET_LIST]
    if any(isinstance(gnd, GLDv2) for gnd in ground_truths):
        if cfg.TEST.DESCRIPTOR != "superglobal" or cfg.SupG.onemeval:
            raise UserError("gldv2:<root> datasets run with TEST.DESCRIPTOR superglobal and without "
                            "SupG.onemeval (both are defined for revisitop-style datasets)")
    extract, weights = build_extractor(cfg, device)
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} python test.py {' '.join(argv)}",
              config_summary(cfg, device) + f" weights={weights}")
    fingerprint = descriptor_fingerprint(cfg, weights)
    distractors = open_distractors(cfg, fingerprint, log) if cfg.SupG.onemeval else None
    cache = None
    if cfg.TEST.CACHE:
        cache = FeatureCache(cfg.TEST.CACHE_DIR or Path(cfg.OUT_DIR) / "feature_cache", fingerprint)
    for gnd in ground_truths:
        if isinstance(gnd, GLDv2):
            evaluate_gldv2_dataset(extract, cfg, device, cache, gnd, log)
        else:
            evaluate_dataset(extract, cfg, device, cache, distractors, gnd, log)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    if "-h" in argv or "--help" in argv:
        print(USAGE + describe_keys())
        return 0
    return exit_code_of(lambda: run(load_cfg_from_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
