"""CVNet-Rerank of a first-stage ranking, as sungonce/CVNet's test/test_model.py + test/test_utils.py.

Per query and protocol P in (E, M, H), walking the first-stage ranking from the top:
- junk images are skipped (the protocol's ground truth is used to pick the candidates);
- an easy image is a candidate for E and M, a hard one for M and H, any other image for all three;
- each protocol takes its first `topk` candidates.
Every (database image, query) pair of the union is scored once by CVNet-Rerank. Per protocol, the
candidates are reordered by `global similarity + mix_ratio * score` (descending) inside the rank
positions they occupied; every other position keeps its first-stage image. This gives three
rankings (E, M, H), each evaluated with its own protocol.

Images are CVNet's test loader's at scale 1.0 (queries cropped to their box, test/extraction/cvnet_global_loop.py).

Speed, same numbers: CVNet's loop recomputes a candidate's feature map for every query that
retrieves it and scores one pair at a time. Here each database image's prepared maps (its three
conv2ds outputs and their per-position norms, `model.cvnet_rerank.ScaledFeatures`: 1.75 x 256
floats per stage-3 position, less than the 1024-channel map itself) are kept in an LRU cache bounded
in bytes, a query's maps are computed once per query, and candidates with maps of the same size are
scored together in batches bounded in bytes. Ties of the mixed score keep the first-stage order
(stable sort; CVNet's numpy quicksort only guarantees that below 17 candidates).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from errors import UserError
from test.extraction.cvnet_global_loop import CVNetImages
from test.extraction.extract import _ErrorsAsValues

PROTOCOLS = ("E", "M", "H")
NEGATIVE, EASY, HARD, JUNK = 0, 1, 2, 3
ELIGIBLE = {"E": (NEGATIVE, EASY), "M": (NEGATIVE, EASY, HARD), "H": (NEGATIVE, HARD)}
CORR_COPIES = 6  # float tensors of the 9-channel 4-D correlation's size alive at once (interpolation, conv4d)
GiB = 1 << 30


def candidate_labels(ranks: np.ndarray, gnd_entries) -> np.ndarray:
    """(N', nq) int8 label of every ranked image: NEGATIVE, EASY, HARD or JUNK. An image listed
    twice takes the first of junk, easy, hard (CVNet's test order)."""
    ranks = np.asarray(ranks)
    n_db = int(ranks.max()) + 1 if ranks.size else 0
    table = np.full((len(gnd_entries), n_db), NEGATIVE, dtype=np.int8)
    for key, label in (("hard", HARD), ("easy", EASY), ("junk", JUNK)):  # later writes win
        ids = [np.asarray(g[key], dtype=np.int64).reshape(-1) for g in gnd_entries]
        query = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        keep = ids < n_db
        table[query[keep], ids[keep]] = label
    return np.take_along_axis(table.T, ranks, axis=0) if ranks.size else ranks.astype(np.int8)


def select_candidates(labels: np.ndarray, topk: int) -> dict[str, np.ndarray]:
    """{'E'|'M'|'H': (N', nq) bool}: rank positions whose image protocol P reranks (its first `topk`
    eligible images per query)."""
    selected = {}
    for name in PROTOCOLS:
        eligible = np.isin(labels, ELIGIBLE[name])
        selected[name] = eligible & (np.cumsum(eligible, axis=0) <= topk)
    return selected


def scored_pairs(ranks: np.ndarray, selected: dict) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, positions): every (database index, query index) pair that some protocol reranks,
    query by query in first-stage rank order, as (P, 2) int64; and their (rank position, query)."""
    union = selected["E"] | selected["M"] | selected["H"]
    query, position = np.nonzero(union.T)
    pairs = np.stack([ranks[position, query], query], axis=1).astype(np.int64)
    return pairs, np.stack([position, query], axis=1)


def mix_rankings(ranks, selected, positions, scores, similarity, mix_ratio) -> dict[str, np.ndarray]:
    """{'E'|'M'|'H': (N', nq) ranks}: per protocol, the selected positions of each query reordered by
    `similarity[image, query] + mix_ratio * score` (float32, descending, stable).

    `positions` (P, 2) rank position and query of each scored pair, `scores` (P,) their scores,
    `similarity` (N, nq) the first-stage similarity."""
    ranks = np.asarray(ranks)
    score_at = np.zeros(ranks.shape, dtype=np.float32)
    score_at[positions[:, 0], positions[:, 1]] = scores
    base = np.take_along_axis(np.asarray(similarity, dtype=np.float32), ranks, axis=0)
    mixed_all = base + score_at * np.float32(mix_ratio)
    out = {}
    for name in PROTOCOLS:
        chosen = selected[name]
        counts = chosen.sum(axis=0)
        depth = int(counts.max()) if counts.size else 0
        rows = np.argsort(~chosen, axis=0, kind="stable")[:depth]        # selected positions, in order
        valid = np.arange(depth)[:, None] < counts[None, :]
        mixed = np.where(valid, np.take_along_axis(mixed_all, rows, axis=0), -np.inf)
        order = np.argsort(-mixed, axis=0, kind="stable")
        reordered = np.take_along_axis(np.take_along_axis(ranks, rows, axis=0), order, axis=0)
        result = ranks.copy()
        cols = np.broadcast_to(np.arange(ranks.shape[1]), rows.shape)
        result[rows[valid], cols[valid]] = reordered[valid]
        out[name] = result
    return out


def default_budgets(device) -> tuple[int, int]:
    """(cache bytes, batch bytes) for `device`: on CUDA a quarter of the free memory each; on CPU a
    quarter of the available memory for the cache (at most 8 GiB) and 1 GiB for a batch."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4, free // 4
    available = 4 * GiB
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return min(8 * GiB, available // 4), GiB


class MapCache:
    """LRU of prepared database maps (ScaledFeatures, on the scoring device), bounded in bytes."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used, self.items = budget_bytes, 0, OrderedDict()
        self.hits = self.misses = 0

    def get(self, index):
        item = self.items.get(index)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(index)
        return item

    def put(self, index, item):
        size = item.nbytes()
        if size > self.budget:
            return
        while self.used + size > self.budget:
            _, old = self.items.popitem(last=False)
            self.used -= old.nbytes()
        self.items[index] = item
        self.used += size


def _images(paths, bboxes, indices, num_workers):
    """(index, (1, 3, H, W) tensor) for `indices` of paths, CVNet's loader at scale 1.0, in order."""
    dataset = CVNetImages([paths[i] for i in indices], None if bboxes is None else [bboxes[i] for i in indices],
                          scales=[1.0])
    loader = DataLoader(_ErrorsAsValues(dataset), batch_size=None, shuffle=False,
                        num_workers=num_workers if len(indices) > 1 else 0)
    for local, images in loader:
        if isinstance(images, str):
            raise UserError(images)
        yield indices[int(local)], images[0].unsqueeze(0)


class PairScorer:
    """Scores (database image, query) pairs with a CVNetRerank, reusing maps (see module doc)."""

    def __init__(self, reranker, device, cache_bytes=None, batch_bytes=None, num_workers=0):
        self.device = torch.device(device)
        self.reranker = reranker.to(self.device).eval()
        default_cache, default_batch = default_budgets(self.device)
        self.cache = MapCache(default_cache if cache_bytes is None else cache_bytes)
        self.batch_bytes = default_batch if batch_bytes is None else batch_bytes
        self.num_workers = num_workers

    def _prepare(self, image):
        return self.reranker.prepare(image.to(self.device))

    def _batch_limit(self, query, key):
        (hq, wq), (hk, wk) = query.full_size, key.full_size
        return max(1, self.batch_bytes // (CORR_COPIES * 9 * 4 * hq * wq * hk * wk))

    def _score_query(self, query, candidates, db_paths, out):
        """Fill out[k] with the score of candidates[k] (distinct indices) for the prepared `query`.
        Cached maps are held for the whole query, so later puts may evict them from the cache only."""
        held = {int(c): self.cache.get(int(c)) for c in candidates}
        fresh = _images(db_paths, None, [c for c, feats in held.items() if feats is None], self.num_workers)
        groups = {}  # map size -> [(slot, features)]

        def flush(size):
            slots, feats = zip(*groups.pop(size))
            out[list(slots)] = self.reranker.score(query, type(feats[0]).stack(feats)).float().cpu().numpy()

        for slot, index in enumerate(candidates.tolist()):
            feats = held.pop(index)
            if feats is None:
                loaded, image = next(fresh)
                assert loaded == index
                feats = self._prepare(image)
                self.cache.put(index, feats)
            group = groups.setdefault(feats.full_size, [])
            group.append((slot, feats))
            if len(group) >= self._batch_limit(query, feats):
                flush(feats.full_size)
        for size in list(groups):
            flush(size)

    @torch.inference_mode()
    def score(self, pairs, query_paths, query_bboxes, db_paths, desc="cvnet-rerank"):
        """(P,) float32 scores of `pairs` ((P, 2) database index, query index; grouped by query)."""
        scores = np.zeros(len(pairs), dtype=np.float32)
        queries, starts = np.unique(pairs[:, 1], return_index=True)
        bounds = list(starts) + [len(pairs)]
        with tqdm(total=len(pairs), desc=desc, unit="pair") as bar:
            for at, query_index in enumerate(queries):
                _, image = next(_images(query_paths, query_bboxes, [int(query_index)], 0))
                query = self._prepare(image)
                part = np.zeros(bounds[at + 1] - bounds[at], dtype=np.float32)
                self._score_query(query, pairs[bounds[at]:bounds[at + 1], 0], db_paths, part)
                scores[bounds[at]:bounds[at + 1]] = part
                bar.update(len(part))
        return scores


def cvnet_rerank(scorer, ranks, similarity, gnd, query_paths, query_bboxes, db_paths, topk, mix_ratio,
                 desc="cvnet-rerank"):
    """CVNet-Rerank of first-stage `ranks` (N x nq, full ranking) with `similarity` (N x nq).

    Returns (rankings {'E','M','H': N x nq}, pairs (P, 2) int64 database index, query index,
    scores (P,) float32)."""
    labels = candidate_labels(ranks, gnd)
    selected = select_candidates(labels, topk)
    pairs, positions = scored_pairs(ranks, selected)
    scores = scorer.score(pairs, query_paths, query_bboxes, db_paths, desc=desc)
    if not np.isfinite(scores).all():
        raise UserError(f"CVNet-Rerank: {int((~np.isfinite(scores)).sum())} of {len(scores)} scores are NaN or Inf; "
                        "the weights are damaged: check TEST.WEIGHTS")
    return mix_rankings(ranks, selected, positions, scores, similarity, mix_ratio), pairs, scores


def cache_summary(scorer) -> str:
    """One line on the map cache's use, for the log."""
    cache = scorer.cache
    return (f"CVNet-Rerank maps: {cache.misses} computed, {cache.hits} reused from the cache "
            f"({cache.used / 2**20:.0f} MiB held of {cache.budget / 2**20:.0f} MiB)")

