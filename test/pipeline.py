"""What test.py does for each dataset: extract (or reuse cached) features, search, rerank,
evaluate, log, draw and save. One flow over test.datasets.RetrievalDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from config import scales_of, vis_selection
from errors import UserError
from model.cvnet_rerank import build_cvnet_rerank, load_rerank_weights
from modules.reranking import rerank
from test.build import load_descriptor
from test.extraction.cvnet_global_loop import extract_cvnet_global
from test.extraction.extract import extract_features
from test.extraction.runtime import options_from_cfg, workers_for
from test.outputs.per_query import json_value, npz_arrays, pick_queries, write_csv
from test.outputs.pictures import write_pictures
from test.outputs.provenance import Timings, result_scores
from test.outputs.writer import save_npz
from test.r1m.search import evaluate_from_search, rerank_top, search_with_r1m, top_ranks, wanted_from_protocols
from test.retrieval.evaluate import compute_map
from test.retrieval.similarity import rank_by_similarity, top_by_similarity
from test.two_stage.cvnet_rerank import PROTOCOLS, PairScorer, cache_summary, cvnet_rerank


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
                        "SupG.gemp_p / SupG.rgem_p / SupG.relup_alpha, use TEST.PRECISION fp32, or check TEST.WEIGHTS")
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
            found = search_with_r1m(Q, X, distractors, keep, wanted_from_protocols(dataset.protocols))
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


def build_cvnet_scorer(cfg, device):
    """(PairScorer of CVNet-Rerank with TEST.WEIGHTS, weights file) when CVNET.RERANK is on, else
    (None, None). Weights without the reranking network stop here, before any work."""
    if not cfg.CVNET.RERANK:
        return None, None
    reranker = build_cvnet_rerank(cfg.MODEL.DEPTH)
    weights = load_rerank_weights(reranker, cfg.TEST.WEIGHTS, cfg.MODEL.DEPTH)
    return PairScorer(reranker, device, num_workers=workers_for(cfg.TEST.NUM_WORKERS, device)), weights


def rerank_with_cvnet(cfg, dataset, scorer, Q, X, ranks_global):
    """CVNet-Rerank of the first-stage ranking: (results per protocol from its own ranking,
    rankings {'E','M','H'}, pairs, scores)."""
    similarity = (X @ Q.T).cpu().numpy()
    split = dataset.queries
    rankings, pairs, scores = cvnet_rerank(scorer, ranks_global, similarity, dataset.gnd.gnd, split.paths,
                                           split.bboxes, dataset.database.paths, cfg.CVNET.TOPK,
                                           cfg.CVNET.MIX_RATIO, desc=f"{dataset.name} cvnet-rerank")
    results = {}
    for name in PROTOCOLS:
        mean_ap, aps, mpr, prs = compute_map(rankings[name], dataset.protocols[name])
        results[name] = {"map": mean_ap, "aps": aps, "mpr": mpr, "prs": prs}
    return results, rankings, pairs, scores


def reranker_record(cfg, first_stage, pairs) -> dict:
    """What results.json says of a two-stage run."""
    return {"reranker": {"name": "CVNet-Rerank", "topk": cfg.CVNET.TOPK, "mix_ratio": cfg.CVNET.MIX_RATIO,
                         "image_scale": 1.0, "pairs_scored": int(len(pairs))},
            "first_stage": {"method": method_name(cfg), "results": result_scores(first_stage)}}


def evaluate_dataset(cfg, dataset, extract, cache, distractors, device, log, run_id="", cvnet_scorer=None):
    """The whole flow for one dataset; returns (final results, timings, extra results.json entries:
    the per-query table and, with `cvnet_scorer`, the reranker and the first stage's results)."""
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
    two_stage, extra = {}, {}
    if cvnet_scorer is not None:
        with timings("cvnet-rerank"):
            reranked, rankings, pairs, scores = rerank_with_cvnet(cfg, dataset, cvnet_scorer, Qt, Xt, ranks_global)
        two_stage = {**{f"ranks_cvnet_{p}": rankings[p] for p in PROTOCOLS}, "cvnet_pairs": pairs,
                     "cvnet_scores": scores, **{f"map_cvnet_{p}": reranked[p]["map"] for p in PROTOCOLS}}
        extra = reranker_record(cfg, results, pairs)
    log.write(timings.line(dataset.name))
    if cvnet_scorer is not None:
        log.write(cache_summary(cvnet_scorer), f">> {dataset.name}: Reranking results with CVNet-Rerank",
                  dataset.format(reranked)[0])
    # the per-query "after" is the final ranking's: CVNet-Rerank's when it runs
    final_table = dataset.per_query(results_global, reranked) if cvnet_scorer is not None else table
    out_dir = Path(cfg.OUT_DIR)
    draw_pictures(cfg, dataset, Q, X, ranks_global, ranks, table, log)
    if cfg.TEST.SAVE_FEATURES:
        save_npz(out_dir / f"{dataset.output_name}.npz", " (TEST.SAVE_FEATURES)", Q=Q, X=X,
                 ranks_global=ranks_global, ranks=ranks, run_id=np.array(run_id), **dataset.arrays(results),
                 **two_stage, **npz_arrays(final_table))
    write_csv(out_dir, dataset.output_name, final_table, run_id)
    return (reranked if cvnet_scorer is not None else results), timings, {"per_query": json_value(final_table),
                                                                          **extra}
