"""What test.py does for each dataset: extract (or reuse cached) features, search, rerank,
evaluate, log, draw and save. One flow over test.datasets.RetrievalDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from config import scales_of, vis_selection
from errors import UserError
from modules.reranking import rerank
from test.build import load_descriptor
from test.cvnet_global import extract_cvnet_global
from test.extract import extract_features
from test.outputs.per_query import npz_arrays, pick_queries, write_csv
from test.provenance import Timings
from test.runtime import options_from_cfg, workers_for
from test.search import rank_by_similarity, top_by_similarity
from test.search_1m import (evaluate_from_search, rerank_top, search_with_distractors, top_ranks,
                            wanted_from_protocols)
from test.visualize import write_pictures
from test.writer import save_npz


def method_name(cfg) -> str:
    return "CVNet-Global" if cfg.TEST.DESCRIPTOR == "cvnet" else "SuperGlobal"


def build_extractor(cfg, device):
    """(extract(split) -> (n, D) float32 features, weights file) for the descriptor cfg asks for:
    `superglobal` (the paper's pipeline) or `cvnet` (CVNet's own global pipeline)."""
    network, weights = load_descriptor(cfg)
    if cfg.TEST.DESCRIPTOR == "cvnet":
        def extract(split):
            return extract_cvnet_global(network, split.paths, split.bboxes, device,
                                        scales=scales_of(cfg.TEST.SCALE_LIST),
                                        num_workers=workers_for(cfg.TEST.NUM_WORKERS, device),
                                        precision=cfg.TEST.PRECISION, upscale=cfg.TEST.CVNET_UPSCALE,
                                        desc=split.label)
        return extract, weights
    network.to(device)

    def extract(split):
        return extract_features(network, split.images, device, precision=cfg.TEST.PRECISION, desc=split.label,
                                options=options_from_cfg(cfg))
    return extract, weights


def require_finite(features: np.ndarray, what: str) -> np.ndarray:
    """Stop, naming the step, when a descriptor holds NaN or Inf: it must never become an mAP."""
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise UserError(f"{what}: {int(bad.sum())} of {len(features)} descriptors hold NaN or Inf (first row "
                        f"{int(np.argmax(bad))}); the pooling overflowed or the weights are damaged: lower "
                        "SupG.gemp_p / SupG.rgem_p, use TEST.PRECISION fp32, or check TEST.WEIGHTS")
    return features


def extract_split(extract, cache, split, cache_name):
    """Features of one split, from the cache when the same images were extracted the same way."""
    if cache is None:
        return require_finite(extract(split), f"extraction of {split.label}")
    features, hit = cache.get_or_compute(cache_name, split.paths, split.bboxes, lambda: extract(split))
    if hit:
        print(f"{split.label}: {len(split.paths)} features from the cache in {cache.directory}", flush=True)
    return require_finite(features, f"extraction of {split.label}")


def rerank_if_on(cfg, Q, X, ranks):
    """SuperGlobal reranking of `ranks` with cfg's M, K, beta when SupG.rerank is on, else `ranks`."""
    if not cfg.SupG.rerank:
        return ranks
    return rerank(Q, X, ranks, M=cfg.SupG.M, K=cfg.SupG.K, beta=cfg.SupG.beta, columns_are_queries=True)


def search(cfg, dataset, Q, X, distractors, timings):
    """(ranks_global, ranks, results, results_global): the whole database ranked, its top k only,
    or the database plus R1M distractors in bounded memory (exact mAP, top TEST.TOPK ranks kept);
    `results_global` evaluates the ranking before reranking (the same object when it is off)."""
    if distractors is not None:
        keep = max(cfg.TEST.TOPK, cfg.SupG.M)
        with timings("search"):
            found = search_with_distractors(Q, X, distractors, keep, wanted_from_protocols(dataset.protocols))
        reranked = None
        if cfg.SupG.rerank:
            with timings("rerank"):
                reranked = rerank_top(Q, X, distractors, found, M=cfg.SupG.M, K=cfg.SupG.K, beta=cfg.SupG.beta)
        with timings("evaluate"):
            results = evaluate_from_search(found, dataset.protocols, reranked_top=reranked)
            results_global = evaluate_from_search(found, dataset.protocols) if reranked is not None else results
        return top_ranks(found), top_ranks(found, reranked), results, results_global
    with timings("search"):
        if dataset.top_k is None:
            ranks_global = rank_by_similarity(X, Q)
        else:
            ranks_global = top_by_similarity(X, Q, max(dataset.top_k, cfg.TEST.TOPK, cfg.SupG.M))
    with timings("rerank"):
        ranks = rerank_if_on(cfg, Q, X, ranks_global).cpu().numpy()
    ranks_global = ranks_global.cpu().numpy()
    with timings("evaluate"):
        results = dataset.evaluate(ranks)
        results_global = dataset.evaluate(ranks_global) if cfg.SupG.rerank else results
    return ranks_global, ranks, results, results_global


def draw_pictures(cfg, dataset, Q, X, ranks_global, ranks, table, log):
    """The pictures TEST.VIS_QUERIES selects (revisitop-style datasets only), with the run's APs."""
    selection = vis_selection(cfg.TEST.VIS_QUERIES)
    if not selection.wanted or dataset.gnd is None:
        return
    picked = pick_queries(selection, table)
    if selection.kind == "names" and not picked:
        return  # the names belong to another dataset of the run (checked before any work)
    folder = write_pictures(Path(cfg.OUT_DIR) / "pictures" / dataset.output_name, dataset.gnd, Q, X, ranks_global,
                            ranks, None, cfg.TEST.VIS_TOPK,
                            reranking=(cfg.SupG.M, cfg.SupG.K, cfg.SupG.beta) if cfg.SupG.rerank else None,
                            queries=picked, aps=(table.before, table.after))
    chosen = "" if selection.kind == "first" else f" ({selection_text(selection, len(picked))})"
    log.write(f"pictures of {len(picked)} queries{chosen}: {folder / 'index.html'}")


def selection_text(selection, found) -> str:
    """How the pictured queries were chosen, for the log line."""
    if selection.kind == "names":
        return f"named: {', '.join(selection.names)}"
    verb = "raised" if selection.kind == "helped" else "lowered"
    return (f"{selection.kind}:{selection.count}: the {found} whose {selection.protocol} AP reranking {verb} "
            f"most")


def evaluate_dataset(cfg, dataset, extract, cache, distractors, device, log, run_id=""):
    """The whole flow for one dataset; returns (results, timings, per-query table)."""
    timings = Timings()
    log.write(f">> {dataset.name}: Global Retrieval for scale {scales_of(cfg.TEST.SCALE_LIST)} with "
              f"{method_name(cfg)}")
    with timings("extraction"):
        Q = extract_split(extract, cache, dataset.queries, f"{dataset.output_name}_queries")
        X = extract_split(extract, cache, dataset.database, f"{dataset.output_name}_database")
        Qt, Xt = torch.from_numpy(Q).to(device), torch.from_numpy(X).to(device)
    ranks_global, ranks, results, results_global = search(cfg, dataset, Qt, Xt, distractors, timings)
    table = dataset.per_query(results_global, results)
    log.write(*dataset.format(results))
    log.write(timings.line(dataset.name))
    out_dir = Path(cfg.OUT_DIR)
    draw_pictures(cfg, dataset, Q, X, ranks_global, ranks, table, log)
    if cfg.TEST.SAVE_FEATURES:
        save_npz(out_dir / f"{dataset.output_name}.npz", " (TEST.SAVE_FEATURES)", Q=Q, X=X,
                 ranks_global=ranks_global, ranks=ranks, run_id=np.array(run_id), **dataset.arrays(results),
                 **npz_arrays(table))
    write_csv(out_dir, dataset.output_name, table, run_id)
    return results, timings, table
