"""Revisited Oxford / Paris metrics: mAP and mP@k for the Easy / Medium / Hard protocols.

Reproduces revisitop's official ``compute_map`` (python/evaluate.py of the revisitop repo)
bit-for-bit, vectorised: the positions of every query's positives and junk images are found for
all queries at once (a boolean membership table gathered through ``ranks``), and each query's AP
and precisions are then pure numpy. Sums are accumulated in the official order (``np.cumsum`` is
sequential), so the numbers are identical, not merely close.

Official semantics kept on purpose:
  * ``nres`` (the AP denominator) is ``len(ok)`` even when the ranking is truncated (N' < N) and
    some positives never appear; ``ok`` is not de-duplicated.
  * An image in both ``ok`` and ``junk`` counts as a positive, and as a junk image for the
    positives ranked after it.
  * A query with no positives gets AP = NaN and precisions NaN and is left out of the means; if no
    query has positives the mean AP and mean precisions are NaN (the official code divides by 0).

Deviation (the official code crashes there): a query with positives of which none appears in the
ranking gets AP 0 and all precisions 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PROTOCOLS = ("E", "M", "H")


def _check_kappas(kappas) -> np.ndarray:
    k = np.asarray(list(kappas), dtype=np.int64).reshape(-1)
    if k.size and k.min() < 1:
        raise ValueError(f"kappas must be positive integers, got {list(kappas)}")
    return k


def _query_ap(pos: np.ndarray, nres: int) -> float:
    """Official ``compute_ap`` on the junk-adjusted 0-based positions ``pos`` (sorted)."""
    if pos.size == 0:
        return 0.0
    j = np.arange(pos.size, dtype=np.float64)
    rank = pos.astype(np.float64)
    precision_0 = np.divide(j, rank, out=np.ones_like(j), where=rank != 0)
    precision_1 = (j + 1.0) / (rank + 1.0)
    recall_step = 1.0 / nres
    terms = (precision_0 + precision_1) * recall_step / 2.0
    return float(np.cumsum(terms)[-1])  # sequential sum, like the official loop


def compute_map_from_positions(pos_list: Sequence, junk_pos_list: Sequence, nres: Sequence[int],
                               kappas: Sequence[int] = (1, 5, 10)):
    """Official mAP / mP@k from ranking positions instead of the full ranking.

    ``pos_list[i]`` / ``junk_pos_list[i]``: 0-based positions, in query i's ranking, of the images
    that are in its ``ok`` / ``junk`` set (positions of images absent from the ranking are simply
    not listed; an image in both sets is listed in both). ``nres[i]`` = ``len(ok)`` of query i
    (0 marks a query without positives). Returns ``(map, aps, pr, prs)`` like :func:`compute_map`.
    """
    kq_all = _check_kappas(kappas)
    nq = len(pos_list)
    if len(junk_pos_list) != nq or len(nres) != nq:
        raise ValueError(f"pos_list, junk_pos_list and nres must have one entry per query "
                         f"(got {nq}, {len(junk_pos_list)}, {len(nres)})")
    aps = np.zeros(nq)
    prs = np.zeros((nq, kq_all.size))
    nonempty = np.zeros(nq, dtype=bool)
    for i in range(nq):
        n = int(nres[i])
        pos = np.sort(np.asarray(pos_list[i], dtype=np.int64).reshape(-1))
        if n == 0:
            if pos.size:
                raise ValueError(f"query {i} has nres=0 but {pos.size} positive position(s)")
            aps[i] = np.nan
            prs[i, :] = np.nan
            continue
        if n < 0:
            raise ValueError(f"query {i} has negative nres={n}")
        nonempty[i] = True
        junk = np.sort(np.asarray(junk_pos_list[i], dtype=np.int64).reshape(-1))
        if junk.size and pos.size:
            # official: every junk image ranked strictly before a positive moves it up by one
            pos = pos - np.searchsorted(junk, pos, side="left")
        aps[i] = _query_ap(pos, n)
        if pos.size == 0:
            prs[i, :] = 0.0  # official crashes on max([]); see module docstring
            continue
        pos1 = pos + 1
        kq = np.minimum(pos1.max(), kq_all)
        prs[i, :] = (pos1[None, :] <= kq[:, None]).sum(axis=1) / kq
    n_ok = int(nonempty.sum())
    if n_ok == 0:
        return float("nan"), aps, np.full(kq_all.size, np.nan), prs
    mean_ap = float(np.cumsum(aps[nonempty])[-1]) / n_ok
    if kq_all.size:
        pr = np.cumsum(prs[nonempty], axis=0)[-1] / n_ok
    else:
        pr = np.zeros(0)
    return mean_ap, aps, pr, prs


def _positions(ranks: np.ndarray, id_lists: Sequence[np.ndarray], m: int) -> list[np.ndarray]:
    """For each query q: sorted rows r where ``ranks[r, q]`` is in ``id_lists[q]`` (like np.isin)."""
    nq = ranks.shape[1]
    lens = np.array([len(ids) for ids in id_lists], dtype=np.int64)
    member = np.zeros((nq, m), dtype=bool)
    if lens.sum():
        member[np.repeat(np.arange(nq), lens), np.concatenate(id_lists)] = True
    hits = member[np.arange(nq)[None, :], ranks]          # (N', nq)
    q_idx, rows = np.nonzero(hits.T)                      # query-major, rows ascending
    counts = np.bincount(q_idx, minlength=nq)
    return np.split(rows.astype(np.int64), np.cumsum(counts)[:-1])


def _id_array(x, what: str) -> np.ndarray:
    a = np.asarray(x if x is not None else [], dtype=np.int64).reshape(-1)
    if a.size and a.min() < 0:
        raise ValueError(f"{what} contains a negative image index")
    return a


def compute_map(ranks, gnd: Sequence[dict], kappas: Sequence[int] = (1, 5, 10)):
    """Official revisitop ``compute_map``: returns ``(map, aps, pr, prs)``.

    ``ranks``: (N', nq) integer array, column q = database indices for query q, best first
    (N' may be smaller than the database). ``gnd[q]``: ``{'ok': ids, 'junk': ids}`` ('junk' may be
    absent). ``aps``: (nq,), ``pr``: (len(kappas),), ``prs``: (nq, len(kappas)); NaN marks queries
    without positives.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (N' x nq), got shape {ranks.shape}")
    nq = ranks.shape[1]
    if len(gnd) != nq:
        raise ValueError(f"ranks has {nq} columns but gnd has {len(gnd)} queries")
    if ranks.size and ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be integer indices, got dtype {ranks.dtype}")
    ranks = ranks.astype(np.int64, copy=False)
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks contains a negative image index")
    ok = [_id_array(g["ok"], f"gnd[{q}]['ok']") for q, g in enumerate(gnd)]
    junk = [_id_array(g.get("junk"), f"gnd[{q}]['junk']") for q, g in enumerate(gnd)]
    m = 1 + max([int(ranks.max()) if ranks.size else -1]
                + [int(a.max()) for a in ok + junk if a.size])
    pos = _positions(ranks, ok, m)
    junk_pos = _positions(ranks, junk, m)
    return compute_map_from_positions(pos, junk_pos, [len(a) for a in ok], kappas)


def evaluate_revisitop(ranks, gnd, kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """mAP / mP@k for the Easy, Medium and Hard protocols.

    ``gnd``: a ``{'E','M','H'}`` dict from :func:`test.data.gnd.protocols`, or anything
    :func:`test.data.gnd.protocols` accepts (a ``Gnd`` or a list of easy/hard/junk dicts).
    Returns ``{'E'|'M'|'H': {'map': float, 'aps': (nq,), 'mpr': (k,), 'prs': (nq, k)}}``.
    """
    if isinstance(gnd, dict) and set(PROTOCOLS) <= set(gnd):
        protos = gnd
    else:
        from test.data.gnd import protocols

        protos = protocols(gnd)
    results = {}
    for name in PROTOCOLS:
        m, aps, mpr, prs = compute_map(ranks, protos[name], kappas)
        results[name] = {"map": m, "aps": aps, "mpr": mpr, "prs": prs}
    return results


def top_block_evaluator(ranks, gnd, m: int, kappas: Sequence[int] = (1, 5, 10)):
    """:func:`evaluate_revisitop` for many rankings that equal ``ranks`` from row ``m`` on.

    Returns ``evaluate(top)``: the results of ``evaluate_revisitop`` on ``ranks`` with its first m
    rows replaced by ``top`` (m x nq). The positions of every query's positives and junk in rows
    m.. are found once; each call only searches the top block (reranking sweeps evaluate hundreds
    of rankings that differ in their top M). Positions and sums are the same, so the numbers are
    identical to evaluate_revisitop's.
    """
    if isinstance(gnd, dict) and set(PROTOCOLS) <= set(gnd):
        protos = gnd
    else:
        from test.data.gnd import protocols

        protos = protocols(gnd)
    ranks = np.asarray(ranks).astype(np.int64, copy=False)
    if ranks.ndim != 2 or not 0 <= m <= ranks.shape[0] or (ranks.size and ranks.min() < 0):
        raise ValueError(f"ranks must be N' x nq non-negative indices with N' >= m={m}, got shape {ranks.shape}")
    nq = ranks.shape[1]
    cached = {}
    for name in PROTOCOLS:
        if len(protos[name]) != nq:
            raise ValueError(f"ranks has {nq} columns but gnd has {len(protos[name])} queries")
        ok = [_id_array(g["ok"], f"gnd[{q}]['ok']") for q, g in enumerate(protos[name])]
        junk = [_id_array(g.get("junk"), f"gnd[{q}]['junk']") for q, g in enumerate(protos[name])]
        size = 1 + max([int(ranks.max()) if ranks.size else -1] + [int(a.max()) for a in ok + junk if a.size])
        below = [[p + m for p in _positions(ranks[m:], ids, size)] for ids in (ok, junk)]
        cached[name] = (ok, junk, size, below)

    def evaluate(top) -> dict:
        top = np.asarray(top).astype(np.int64, copy=False)
        if top.shape != (m, nq):
            raise ValueError(f"top must be {m} x {nq}, got shape {top.shape}")
        results = {}
        for name, (ok, junk, size, (ok_below, junk_below)) in cached.items():
            if top.size and (top.min() < 0 or top.max() >= size):
                raise ValueError(f"top holds indices outside [0, {size})")
            pos = [np.concatenate(pair) for pair in zip(_positions(top, ok, size), ok_below)]
            junk_pos = [np.concatenate(pair) for pair in zip(_positions(top, junk, size), junk_below)]
            mean_ap, aps, mpr, prs = compute_map_from_positions(pos, junk_pos, [len(a) for a in ok], kappas)
            results[name] = {"map": mean_ap, "aps": aps, "mpr": mpr, "prs": prs}
        return results
    return evaluate


def format_results(results: dict, kappas: Sequence[int] = (1, 5, 10)) -> list[str]:
    """The two official result lines (values x100, 2 decimals), as a list of two strings::

        Retrieval results: mAP E: 87.45, M: 72.31, H: 50.12
        Retrieval results: mP@k[1, 5, 10] E: [97.14, 92.00, 88.71], M: [...], H: [...]
    """
    if isinstance(kappas, str):
        raise TypeError(f"format_results(results, kappas): kappas must be a sequence of ints, "
                        f"got the string {kappas!r}")
    kappas = [int(k) for k in kappas]
    for name in PROTOCOLS:
        if len(results[name]["mpr"]) != len(kappas):
            raise ValueError(f"results['{name}']['mpr'] has {len(results[name]['mpr'])} values "
                             f"for {len(kappas)} kappas")

    def pct(v) -> str:
        return f"{float(v) * 100:.2f}"

    maps = ", ".join(f"{n}: {pct(results[n]['map'])}" for n in PROTOCOLS)
    mprs = ", ".join(f"{n}: [{', '.join(pct(v) for v in results[n]['mpr'])}]" for n in PROTOCOLS)
    return [f"Retrieval results: mAP {maps}", f"Retrieval results: mP@k{kappas} {mprs}"]
