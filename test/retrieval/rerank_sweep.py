"""Ablation sweeps of SuperGlobal reranking over M, K and beta on saved features (sweep.py).

Work is shared across settings instead of calling ``rerank`` once per setting: for each M (each
distinct m = min(M, N')) and chunk of queries, the top-m descriptors are gathered, their Gram
matrices and the nearest neighbours for the largest K are computed once, and X_T q too; every
(K, beta) then takes the first K+1 neighbours (the prefix of a stable descending order is the
order for a smaller K) and rescales their weights. Each setting runs the same stage-2 code as
``modules.reranking.rerank`` (``rerank_block``) on the same chunks, so its ranks are identical
to a single ``rerank`` call, and so are its mAPs.
"""

import math
import time

import numpy as np
import torch

from config import beta_max
from errors import UserError
from modules.reranking.rerank import (
    FiniteScores,
    auto_chunk_size,
    check_arguments,
    compute_dtype,
    gathered_chunks,
    gram_matrices,
    neighbour_weights,
    rerank_block,
    similarities,
    top_entries,
)

PARAMETERS = ("M", "K", "beta")


# --------------------------------------------------------------------------- the grid

def parse_values(text, name, integer):
    """A comma-separated list of numbers -> sorted distinct values; one-line UserError otherwise."""
    values = []
    for item in str(text).split(","):
        item = item.strip()
        try:
            value = int(item) if integer else float(item)
        except ValueError:
            kind = "integers" if integer else "numbers"
            raise UserError(f"--{name} {text!r}: {item!r} is not a number; give comma-separated {kind}, "
                            f"e.g. --{name} {'100,200,400' if integer else '0.05,0.15'}") from None
        if not math.isfinite(value):
            raise UserError(f"--{name} {text!r}: every value must be finite, got {item!r}")
        values.append(value)
    return sorted(set(values))


def parse_grid(M_text, K_text, beta_text):
    """(Ms, Ks, betas) from the command-line lists, checked: M >= 1, 0 <= K < M, beta >= 0."""
    Ms, Ks, betas = parse_values(M_text, "M", True), parse_values(K_text, "K", True), \
        parse_values(beta_text, "beta", False)
    if Ms[0] < 1:
        raise UserError(f"--M {M_text!r}: every M must be >= 1, got {Ms[0]}")
    if Ks[0] < 0:
        raise UserError(f"--K {K_text!r}: every K must be >= 0, got {Ks[0]}")
    if Ks[-1] >= Ms[0]:
        raise UserError(f"--K {K_text!r} and --M {M_text!r}: every K must be below every M "
                        f"(K={Ks[-1]} >= M={Ms[0]}); drop the large K or the small M")
    if betas[0] < 0:
        raise UserError(f"--beta {beta_text!r}: every beta must be >= 0, got {betas[0]:g}")
    if betas[-1] > beta_max(Ks[-1]):
        raise UserError(f"--beta {beta_text!r}: every beta must be at most {beta_max(Ks[-1]):.4g} with K up to "
                        f"{Ks[-1]}: float32 neighbour weights beta x similarity, summed over K + 1, overflow above")
    return Ms, Ks, betas


# --------------------------------------------------------------------------- reranking, shared work

def sweep_tops(Q, X, ranks, Ms, Ks, betas, chunk_size=None):
    """Reranked top blocks of every setting, M by M.

    Q (nq x D), X (N x D) float tensors, ranks (N' x nq, revisitop orientation) integer tensor.
    Yields (M, m, tops) for each M in order, with tops[(K, beta)] = the reranked top m rows
    (m x nq, int64, CPU) that ``rerank(Q, X, ranks, M, K, beta, chunk_size)`` returns.
    """
    for K in Ks:
        for beta in betas:
            check_arguments(Q, X, ranks, max(Ms), K, beta, chunk_size, columns_are_queries=True)
    ranks = ranks.to(device=X.device, dtype=torch.long)
    last_m, tops = None, None
    for M in Ms:
        m = min(M, ranks.shape[0])
        if m != last_m:  # every M beyond N' reranks the same m = N' rows
            if m and ranks.shape[1]:
                tops = _tops_for_m(Q, X, ranks[:m].T.contiguous(), Ks, betas, chunk_size)
            else:
                tops = {(K, beta): ranks[:m].cpu() for K in Ks for beta in betas}
            last_m = m
        yield M, m, tops


def _tops_for_m(Q, X, top_all, Ks, betas, chunk_size):
    nq, m = top_all.shape
    out = {(K, beta): torch.empty(nq, m, dtype=torch.long, device=X.device) for K in Ks for beta in betas}
    # rerank picks its chunk size from K: group the Ks by it so every setting sees the same chunks
    # (any size >= nq is one chunk of all queries)
    groups = {}
    for K in Ks:
        chunk = chunk_size or auto_chunk_size(m, X.shape[1], K, compute_dtype(Q, X), X.device)
        groups.setdefault(min(chunk, nq), []).append(K)
    finite = {(K, beta): FiniteScores() for K in Ks for beta in betas}
    for chunk, group in groups.items():
        for start, top, q, x_top, gram_out in gathered_chunks(Q, X, top_all, chunk):
            values, neighbours = top_entries(gram_matrices(x_top, gram_out), min(max(group) + 1, m))
            q_raw = similarities(x_top, q)
            for K in group:
                k = min(K + 1, m)
                near, near_values = neighbours[..., :k].contiguous(), values[..., :k].contiguous()
                for beta in betas:
                    new_top, scores = rerank_block(top, q, x_top, near, neighbour_weights(near_values, beta), q_raw)
                    finite[(K, beta)].add(scores)
                    out[(K, beta)][start:start + len(top)] = new_top
    for (_, beta), check in finite.items():
        check.require(nq, beta)
    return {key: top.T.cpu() for key, top in out.items()}


# --------------------------------------------------------------------------- evaluation

def run_sweep(Q, X, ranks, protos, Ms, Ks, betas, chunk_size=None):
    """Rerank and evaluate every (M, K, beta). Q, X, ranks: as :func:`sweep_tops` (numpy or torch).

    Returns {"initial": mAPs of the initial ranking, "records": one dict per setting (M, K, beta,
    mAP_E, mAP_M, mAP_H in percent, None where undefined), "seconds": {"rerank", "evaluate"}}.
    """
    from test.retrieval.evaluate import evaluate_revisitop, top_block_evaluator

    Q, X, ranks = (torch.as_tensor(a) for a in (Q, X, ranks))
    initial = ranks.cpu().numpy().astype(np.int64)
    records, rerank_s, evaluate_s = [], 0.0, 0.0
    settings = sweep_tops(Q, X, ranks, Ms, Ks, betas, chunk_size)
    while True:
        start = time.perf_counter()
        item = next(settings, None)
        rerank_s += time.perf_counter() - start
        if item is None:
            break
        M, m, tops = item
        start = time.perf_counter()
        evaluate = top_block_evaluator(initial, protos, m)   # rows m.. are the initial ranking's
        for (K, beta), top in tops.items():
            records.append({"M": M, "K": K, "beta": beta, **map_percent(evaluate(top.numpy()))})
        evaluate_s += time.perf_counter() - start
    return {"initial": map_percent(evaluate_revisitop(initial, protos)), "records": records,
            "seconds": {"rerank": rerank_s, "evaluate": evaluate_s}}


def map_percent(results):
    """{"mAP_E", "mAP_M", "mAP_H"} x100 from evaluate_revisitop; NaN (no query with positives) -> None."""
    return {f"mAP_{p}": (100 * float(results[p]["map"]) if math.isfinite(results[p]["map"]) else None)
            for p in ("E", "M", "H")}


def anchor(records, defaults):
    """The setting the line plots hold fixed: each of M, K, beta at its default when that value is in
    the grid, else at its value in the best grid point (highest mAP-M, then mAP-H)."""
    def key(r):
        return tuple(-math.inf if r[k] is None else r[k] for k in ("mAP_M", "mAP_H"))
    best = max(records, key=key)
    return {p: defaults[p] if any(r[p] == defaults[p] for r in records) else best[p] for p in PARAMETERS}


def line(records, parameter, fixed):
    """The records along ``parameter`` with the other two parameters at ``fixed``, in grid order."""
    others = [p for p in PARAMETERS if p != parameter]
    return [r for r in records if all(r[p] == fixed[p] for p in others)]


# --------------------------------------------------------------------------- output

def _fmt(value):
    return "   n/a" if value is None else f"{value:6.2f}"


def format_table(result):
    lines = [f"{'M':>5} {'K':>3} {'beta':>6}  {'mAP E':>6} {'mAP M':>6} {'mAP H':>6}"]
    init = result["initial"]
    lines.append(f"{'initial ranking':>16}  {_fmt(init['mAP_E'])} {_fmt(init['mAP_M'])} {_fmt(init['mAP_H'])}")
    for r in result["records"]:
        lines.append(f"{r['M']:>5} {r['K']:>3} {r['beta']:>6g}  {_fmt(r['mAP_E'])} {_fmt(r['mAP_M'])} "
                     f"{_fmt(r['mAP_H'])}")
    return "\n".join(lines)


def csv_text(result):
    """One row per setting; mAPs in percent with full precision; empty = undefined."""
    rows = ["M,K,beta,mAP_E,mAP_M,mAP_H"]
    for r in result["records"]:
        maps = ",".join("" if r[k] is None else repr(r[k]) for k in ("mAP_E", "mAP_M", "mAP_H"))
        rows.append(f"{r['M']},{r['K']},{r['beta']!r},{maps}")
    return "\n".join(rows) + "\n"
