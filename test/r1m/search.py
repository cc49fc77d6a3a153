"""Bounded-memory search over the database plus the R1M distractors, with exact rank positions.

Instead of the official concatenate-and-argsort ((N + N1) x nq scores and their int64 argsort), the
database is searched once, then the distractors stream through a block at a time: a running top
``keep`` per query, and per query a count, for each wanted (easy / hard / junk) id, of the
distractors that score strictly higher (``searchsorted`` + ``bincount``). revisitop's mAP needs only
those positions, the reranking only the top. docs/r1m_search.md describes it and its memory.

Ranking semantics: a full STABLE sort by descending similarity over the combined list (database
indices 0..N-1, then distractor i at N + i), so ties go to the lower combined index.

Consistency of the float32 similarities (how the last bits are pinned down):
* every item's similarity is computed exactly once, and that one value is used for its own rank,
  for the comparisons with every other item, and in ``top_scores``; the wanted ids' scores are
  gathered from S_X, not recomputed. The positions are therefore exactly those of a stable sort of
  the similarity vector this module computes, whatever the BLAS does;
* every similarity comes from the same call, ``torch.mm`` of a (chunk_rows x D) float32 block by
  Q^T (the last block is zero-padded to chunk_rows; the database goes through the same blocks).
  BLAS libraries pick their blocking, hence the rounding of the last bit, from the matrix shape
  (and the thread count): with one fixed shape a row's score depends only on the row and Q, not on
  where it lies (checked for MKL: identical rows anywhere, in the database or among the
  distractors, score bit-identically), so duplicated rows tie exactly;
* a single (N + N1) x nq matmul, as in the official code, may round the last bit of some scores
  differently (its own blocking depends on its shape). That can only swap items whose float32
  scores are within an ulp or so of each other; on data whose dot products are exact in float32
  (tests/r1m/test_r1m_search.py uses such data) the results are identical to the full argsort.

Works on the device of Q (blocks of a memory-mapped CPU matrix are copied there one at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from errors import UserError, is_int

CPU_BLOCK_BYTES = 128 * 2 ** 20     # float32 bytes of one block of rows on CPU (16384 rows at D=2048)
DEVICE_BLOCK_BYTES = 256 * 2 ** 20  # ... on an accelerator
CPU_RERANK_BYTES = 64 * 2 ** 20     # gathered top descriptors per group of queries in rerank_top
DEVICE_RERANK_BYTES = 256 * 2 ** 20


@dataclass
class SearchResult:
    """What :func:`search_with_r1m` returns.

    ``top``: keep x nq int64 (CPU), column j = the best ``keep`` combined indices for query j, best
    first (database i -> i, distractor i -> N + i). ``top_scores``: keep x nq float32, their
    similarities. ``wanted[j]`` / ``positions[j]``: the requested ids of query j (as given) and
    their exact 0-based positions in the full ranking of all N + N1 items.
    """

    top: torch.Tensor
    top_scores: torch.Tensor
    wanted: list
    positions: list
    n_database: int
    n_distractors: int
    chunk_rows: int

    @property
    def n_total(self) -> int:
        return self.n_database + self.n_distractors

    def positions_of(self, j: int, ids) -> np.ndarray:
        """Positions (full ranking of query j) of ``ids``; each must have been in ``wanted[j]``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        known, first = np.unique(self.wanted[j], return_index=True)
        slot = np.searchsorted(known, ids)
        found = slot < known.size
        found[found] = known[slot[found]] == ids[found]
        if not found.all():
            raise ValueError(f"query {j}: ids {ids[~found][:5].tolist()} were not among the wanted ids "
                             f"of the search")
        return self.positions[j][first[slot]]


def search_with_r1m(Q, X, distractors, keep, wanted, chunk_rows=None) -> SearchResult:
    """Search queries Q (nq x D) over database X (N x D) + ``distractors`` (N1 x D).

    ``distractors``: a torch tensor (possibly memory-mapped, on any device) or a numpy array /
    memmap, of any float dtype (scores are computed in float32). ``keep``: top positions returned per
    query (capped at N + N1). ``wanted``: nq integer arrays of database ids (< N) whose exact positions
    are needed. ``chunk_rows``: rows per block (default: 128 MB of float32 rows on CPU, 256 MB on an
    accelerator). Runs on Q's device. Raises UserError if distractor rows give NaN / Inf scores.
    """
    _check_inputs(Q, X, keep, chunk_rows)
    device = Q.device
    nq, dim = Q.shape
    n_db, n_dis = X.shape[0], int(distractors.shape[0])
    if distractors.ndim != 2 or int(distractors.shape[1]) != dim:
        raise UserError(f"distractor features have shape {tuple(distractors.shape)} but the database "
                        f"descriptors have dimension {dim}")
    wanted = _check_wanted(wanted, nq, n_db)
    keep = min(int(keep), n_db + n_dis)
    if chunk_rows is None:
        budget = CPU_BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES
        chunk_rows = max(1, budget // (4 * dim))
    blocks = _Blocks(Q, chunk_rows)

    # 1. database pass: S_X, the stable database ranking, wanted scores and database positions
    S_X = torch.empty(n_db, nq, dtype=torch.float32, device=device)
    for start in range(0, n_db, chunk_rows):
        rows = min(chunk_rows, n_db - start)
        S_X[start:start + rows] = blocks.scores(X, start, rows)
    if n_db and not bool(torch.isfinite(S_X.sum())) and not bool(torch.isfinite(S_X).all()):
        raise ValueError("the database or query descriptors contain NaN / Inf (or give infinite scores)")
    # query-major from here on (nq x ...): sorts and reductions run along contiguous rows
    top_scores, order = torch.sort(S_X.T, dim=1, descending=True, stable=True)    # nq x N
    db_pos = torch.empty_like(order).scatter_(
        1, order, torch.arange(n_db, device=device).unsqueeze(0).expand(nq, n_db))
    top_ids = order[:, :keep].contiguous()
    top_scores = top_scores[:, :keep].contiguous()
    del order

    width = max((len(w) for w in wanted), default=0)
    counter = _GreaterCounter(S_X, wanted, width) if width else None
    pos_db = counter.database_positions(db_pos) if width else None
    del db_pos, S_X

    # 2. distractor pass
    bad_rows = 0
    for start in range(0, n_dis, chunk_rows):
        rows = min(chunk_rows, n_dis - start)
        sims = blocks.scores(distractors, start, rows).T.contiguous()           # nq x rows
        if not bool(torch.isfinite(sims.sum())):
            bad = ~torch.isfinite(sims).all(dim=0)
            bad_rows += int(bad.sum())
            sims[:, bad] = -torch.inf
        top_ids, top_scores = _merge_top(top_ids, top_scores, sims, n_db + start, keep)
        if counter is not None:
            counter.add(sims)
    if bad_rows:
        raise UserError(f"distractor features: {bad_rows} of {n_dis} rows give NaN / Inf similarities "
                        f"(NaN / Inf or huge values in the features); re-extract them")

    positions = []
    if counter is not None:
        full = (pos_db + counter.greater()).cpu().numpy()
        positions = [full[j, :len(w)].copy() for j, w in enumerate(wanted)]
    else:
        positions = [np.zeros(0, dtype=np.int64) for _ in wanted]
    return SearchResult(top=top_ids.T.contiguous().cpu(), top_scores=top_scores.T.contiguous().cpu(),
                        wanted=wanted, positions=positions,
                        n_database=n_db, n_distractors=n_dis, chunk_rows=chunk_rows)


# --------------------------------------------------------------------------- blocks of scores

class _Blocks:
    """Scores of row blocks, always through one (chunk_rows x D) @ (D x nq) float32 product."""

    def __init__(self, Q, chunk_rows, staging=None):
        self.device = Q.device
        # numpy blocks reach a device through a reused (pinned, on CUDA) host buffer; None = only off
        # the CPU. staging=True runs that path on a CPU too (the test suite's way to execute it).
        self.staging = self.device.type != "cpu" if staging is None else staging
        self.qt = Q.to(torch.float32).T                 # a fixed D x nq view, same for every block
        self.buf = torch.zeros(chunk_rows, Q.shape[1], dtype=torch.float32, device=self.device)
        self.out = torch.empty(chunk_rows, Q.shape[0], dtype=torch.float32, device=self.device)
        self.stage = None                               # CPU float32 staging for numpy -> device
        self.padded_to = chunk_rows                     # rows of buf past the data are zero

    def scores(self, matrix, start, rows):
        """Scores (rows x nq, a view of a reused buffer) of ``matrix[start:start + rows]``."""
        buf = self.buf
        if isinstance(matrix, torch.Tensor):
            buf[:rows].copy_(matrix[start:start + rows])
        elif not self.staging:
            np.copyto(buf.numpy()[:rows], matrix[start:start + rows], casting="same_kind")
        else:
            if self.stage is None:
                self.stage = torch.empty(buf.shape, dtype=torch.float32, pin_memory=self.device.type == "cuda")
            np.copyto(self.stage.numpy()[:rows], matrix[start:start + rows], casting="same_kind")
            buf[:rows].copy_(self.stage[:rows])
        if rows < self.padded_to:                       # keep the product's shape: zero the tail
            buf[rows:].zero_()
        self.padded_to = rows
        torch.mm(buf, self.qt, out=self.out)
        return self.out[:rows]


# --------------------------------------------------------------------------- running top

def _merge_top(top_ids, top_scores, sims, offset, keep):
    """Merge a block's best items into the running top (nq x k0, best first, stable).

    ``sims``: nq x rows scores of the block, whose items all have higher combined indices (from
    ``offset``) than the current top, so a stable sort of [current top, block candidates in index
    order] gives the correct tie-break.
    """
    rows = sims.shape[1]
    k = min(keep, rows)
    if k == 0:
        return top_ids, top_scores
    full = top_scores.shape[1] >= keep
    kth = top_scores[:, -1:] if full else torch.full((sims.shape[0], 1), -torch.inf, device=sims.device)
    if full:
        # only block items strictly above the current k-th score can enter (a tie has a higher
        # index): at most `entering` per query, usually far fewer than keep after the first blocks
        entering = int((sims > kth).sum(1).max())
        if entering == 0:
            return top_ids, top_scores
        k = min(k, entering)
    extra = min(k + 1, rows)                            # one more shows a tie at the boundary
    values, local = torch.topk(sims, extra, dim=1)      # nq x extra, by value; order of ties arbitrary
    if extra > k:
        # topk's choice among items tied at the block's k-th score matters only if they can enter
        ambiguous = (values[:, k] == values[:, k - 1]) & (values[:, k - 1] > kth[:, 0])
        values, local = values[:, :k], local[:, :k]
        if bool(ambiguous.any()):
            qs = ambiguous.nonzero().squeeze(1)
            q_values, q_local = torch.sort(sims[qs], dim=1, descending=True, stable=True)
            values[qs], local[qs] = q_values[:, :k], q_local[:, :k]
    local, by_index = torch.sort(local, dim=1)          # block candidates in index order
    values = values.gather(1, by_index)
    all_scores = torch.cat([top_scores, values], dim=1)
    all_ids = torch.cat([top_ids, local + offset], dim=1)
    merged, order = torch.sort(all_scores, dim=1, descending=True, stable=True)
    k_new = min(keep, all_scores.shape[1])
    return all_ids.gather(1, order[:, :k_new]), merged[:, :k_new].contiguous()


# --------------------------------------------------------------------------- exact positions

class _GreaterCounter:
    """Per query and wanted id: how many distractors score strictly higher than the wanted id."""

    def __init__(self, S_X, wanted, width):
        device = S_X.device
        nq = len(wanted)
        ids = torch.zeros(nq, width, dtype=torch.long)
        valid = torch.zeros(nq, width, dtype=torch.bool)
        for j, w in enumerate(wanted):
            ids[j, :len(w)] = torch.from_numpy(w)
            valid[j, :len(w)] = True
        self.ids, self.valid = ids.to(device), valid.to(device)
        scores = S_X.T.gather(1, self.ids)                                     # nq x W
        scores[~self.valid] = torch.inf                                        # padding never counts
        self.sorted_scores, self.perm = torch.sort(scores, dim=1)
        self.sorted_scores = self.sorted_scores.contiguous()
        self.bins = width + 1
        self.base = (torch.arange(nq, device=device) * self.bins).unsqueeze(1)
        self.hist = torch.zeros(nq * self.bins, dtype=torch.long, device=device)

    def database_positions(self, db_pos):
        return db_pos.gather(1, self.ids)                                      # nq x W

    def add(self, sims):
        """sims: nq x rows scores of distractors (all after every wanted id in index order)."""
        # bucket b = #wanted scores < s: a distractor at bucket b beats the wanted ids in sorted
        # slots 0..b-1 (strictly); equal scores do not count (the distractor's index is higher)
        bucket = torch.searchsorted(self.sorted_scores, sims)                  # nq x rows
        bucket += self.base
        self.hist += torch.bincount(bucket.view(-1), minlength=self.hist.numel())

    def greater(self):
        hist = self.hist.view(-1, self.bins)
        above = hist.flip(1).cumsum(1).flip(1)[:, 1:]                          # slot k: buckets > k
        return torch.empty_like(above).scatter_(1, self.perm, above)


# --------------------------------------------------------------------------- evaluation helpers

def wanted_from_protocols(protos) -> list:
    """Per query, the sorted union of the ok and junk ids of the E, M and H protocols
    (= easy + hard + junk): the ids whose positions revisitop's mAP needs."""
    names = ("E", "M", "H")
    nq = len(protos["E"])
    return [np.unique(np.concatenate([np.asarray(protos[p][j][k], dtype=np.int64).reshape(-1)
                                      for p in names for k in ("ok", "junk")]))
            for j in range(nq)]


def evaluate_from_search(result: SearchResult, protocols, reranked_top=None, kappas=(1, 5, 10)) -> dict:
    """Exact revisitop mAP / mP@k for E, M, H from the positions of a search.

    ``protocols``: ``test.data.gnd.protocols(gnd)``. ``reranked_top``: the top block after reranking
    (m x nq, m <= keep, each column a permutation of ``result.top[:m]``); positions inside the
    top m are then taken from it, positions from m on are unchanged. Same return value as
    :func:`test.retrieval.evaluate.evaluate_revisitop`, and equal to it on the full ranking (all N + N1
    items, stable order) with the top block replaced.
    """
    from test.retrieval.evaluate import PROTOCOLS, compute_map_from_positions

    nq = result.top.shape[1]
    moved = _reranked_positions(result, reranked_top) if reranked_top is not None else None
    results = {}
    for name in PROTOCOLS:
        if len(protocols[name]) != nq:
            raise ValueError(f"protocols['{name}'] has {len(protocols[name])} queries, the search {nq}")
        pos_list, junk_list, nres = [], [], []
        for j, entry in enumerate(protocols[name]):
            ok = np.asarray(entry["ok"], dtype=np.int64).reshape(-1)
            junk = np.asarray(entry.get("junk", []), dtype=np.int64).reshape(-1)
            pos_list.append(_final_positions(result, j, np.unique(ok), moved))
            junk_list.append(_final_positions(result, j, np.unique(junk), moved))
            nres.append(len(ok))
        m, aps, mpr, prs = compute_map_from_positions(pos_list, junk_list, nres, kappas)
        results[name] = {"map": m, "aps": aps, "mpr": mpr, "prs": prs}
    return results


def _reranked_positions(result, reranked_top):
    """Per query, (ids sorted, their positions in the reranked block)."""
    block = torch.as_tensor(reranked_top).cpu().long()
    if block.dim() != 2 or block.shape[1] != result.top.shape[1] or block.shape[0] > result.top.shape[0]:
        raise ValueError(f"reranked_top must be m x nq with m <= keep={result.top.shape[0]}, "
                         f"nq={result.top.shape[1]}; got {tuple(block.shape)}")
    m = block.shape[0]
    if not torch.equal(torch.sort(block, dim=0).values, torch.sort(result.top[:m], dim=0).values):
        raise ValueError("each column of reranked_top must be a permutation of the search's top m")
    ids, where = torch.sort(block, dim=0)
    return m, ids.T.numpy(), where.T.numpy()


def _final_positions(result, j, ids, moved):
    pos = result.positions_of(j, ids)
    if moved is not None and pos.size:
        m, ids_sorted, where = moved
        inside = pos < m
        if inside.any():
            pos = pos.copy()
            pos[inside] = where[j][np.searchsorted(ids_sorted[j], ids[inside])]
    return pos


def top_ranks(result: SearchResult, reranked_top=None) -> np.ndarray:
    """The ranks test.py saves with TEST.SAVE_FEATURES under onemeval: keep x nq int64, column j =
    the best ``keep`` combined indices of query j (distractor i is N + i), with the first m rows
    replaced by ``reranked_top`` when given. TOP ONLY: positions from ``keep`` on are not stored
    (the full ranking would be (N + N1) x nq)."""
    top = result.top.clone()
    if reranked_top is not None:
        block = torch.as_tensor(reranked_top).cpu().long()
        top[:block.shape[0]] = block
    return top.numpy()


def gather_rows(X, distractors, ids) -> torch.Tensor:
    """float32 descriptors (on X's device) of combined ids (1-D, sorted ascending)."""
    ids = torch.as_tensor(ids).cpu().long()
    n_db = X.shape[0]
    split = int(torch.searchsorted(ids, torch.tensor(n_db)))
    db_part = X.index_select(0, ids[:split].to(X.device)).to(torch.float32)
    dis_ids = ids[split:] - n_db
    if isinstance(distractors, torch.Tensor):
        dis_part = distractors.index_select(0, dis_ids.to(distractors.device))
    else:
        dis_part = torch.from_numpy(np.asarray(distractors[dis_ids.numpy()]))
    return torch.cat([db_part, dis_part.to(device=X.device, dtype=torch.float32)])


def rerank_top(Q, X, distractors, result: SearchResult, M=400, K=9, beta=0.15, query_chunk=None):
    """SuperGlobal reranking (``modules.reranking.rerank``) of the top min(M, keep) of a search.

    Gathers the descriptors of each group of queries' top items (database rows from X, distractor
    rows from the matrix) and reranks with local indices. Returns the reranked top block
    (m x nq int64, CPU, combined indices), for :func:`evaluate_from_search` / :func:`top_ranks`.
    Identical to reranking the full ranking over the concatenated matrix (rows m.. are unchanged).
    """
    from modules.reranking import rerank

    top = result.top
    nq = top.shape[1]
    m = min(int(M), top.shape[0])
    if m < min(int(M), result.n_total):
        raise ValueError(f"the search kept {top.shape[0]} positions per query but reranking needs the top "
                         f"M={M}: search with keep >= M")
    if query_chunk is None:
        budget = CPU_RERANK_BYTES if Q.device.type == "cpu" else DEVICE_RERANK_BYTES
        query_chunk = max(1, budget // max(1, m * Q.shape[1] * 4))
    out = torch.empty(m, nq, dtype=torch.long)
    for start in range(0, nq, query_chunk):
        block = top[:m, start:start + query_chunk]                             # m x g
        ids, local = torch.unique(block, sorted=True, return_inverse=True)
        rows = gather_rows(X, distractors, ids).to(Q.device)
        new_local = rerank(Q[start:start + query_chunk], rows, local.to(Q.device), M=m, K=K, beta=beta,
                           columns_are_queries=True)
        out[:, start:start + query_chunk] = ids[new_local.cpu()]
    return out


# --------------------------------------------------------------------------- argument checks

def _check_inputs(Q, X, keep, chunk_rows):
    for name, t in (("Q", Q), ("X", X)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor (rows = descriptors)")
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f"Q and X must have the same dimension, got {Q.shape[1]} and {X.shape[1]}")
    if not is_int(keep) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    if chunk_rows is not None and (not is_int(chunk_rows) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be None or an integer >= 1, got {chunk_rows!r}")


def _check_wanted(wanted, nq, n_db):
    if len(wanted) != nq:
        raise ValueError(f"wanted must have one id array per query: {len(wanted)} for {nq} queries")
    out = []
    for j, w in enumerate(wanted):
        a = np.asarray(w if w is not None else [])
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(f"wanted[{j}] must hold integer ids, got dtype {a.dtype}")
        a = a.astype(np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= n_db):
            raise ValueError(f"wanted[{j}] must hold database ids in [0, {n_db})")
        out.append(a)
    return out
