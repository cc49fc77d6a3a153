"""SuperGlobal reranking: top-M descriptor augmentation (MDescAug) + reranking with maximum
descriptor aggregation (RerankwMDA), vectorised over queries.

For query q with current top m = min(M, N') database items T (descriptors x_i, i in T):

    A = X_T X_T^T                                                         (m x m)
    n_i(0..k-1) = the k = min(K+1, m) largest entries of row i of A       (normally i first)
    w_i = [1, beta * a_{i,1}, ..., beta * a_{i,k-1}]
    d_i = sum_j w_ij x_{n_i(j)} / sum_j w_ij                              (not re-normalised)
    S1_i = q . d_i ;  P = T sorted by S1, descending
    q' = max over the first k items i of P of d_i (element-wise) ;  S2_i = q' . d_i
    score_r = (S1_{P_r} + S2_{P_r}) / 2 ;  new top m = P sorted by score, descending

Rows m.. of the ranking are left as they were. Sorts are stable, so ties keep the current order.

Orientation: ``ranks`` is N' x nq (revisitop's): column j is query j's ranking of the database,
best first. faiss' ``index.search`` returns I as nq x k: convert it with :func:`ranks_from_topk`, or
call :func:`rerank_topk`, which takes and returns the faiss orientation and also accepts the
candidates' own vectors (nq x k x D) when the whole database X is not at hand.

Length: the top m = min(M, N) is reranked, N = the database size. ``ranks`` with fewer rows than
that (a top-k search with k < M) is refused rather than reranking fewer items than asked: search
with k >= M, or pass M = k to rerank the top k.

Speed: d is linear in the neighbour weights, so q . d_i = sum_j w_ij (q . x_{n_i(j)}): S1 and S2
need only X_T q and X_T q' (c x m) instead of every d_i (c x m x D); d is only formed for the k
best items that make q'. The cost is one (m x m) Gram matrix per query, done in chunks of
queries with preallocated buffers (fresh large CPU allocations pay page faults every chunk).
"""
import math
import numbers
import sys

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 64 * 2 ** 20      # small chunks stay in cache on CPU
DEVICE_CHUNK_BYTES = 256 * 2 ** 20


def rerank(Q, X, ranks, M=400, K=9, beta=0.15, chunk_size=None, return_scores=False,
           columns_are_queries=False):
    """Rerank the top M of each column of ``ranks`` (N' x nq) for queries Q (nq x D) over X (N x D).

    Q, X and ranks are all torch tensors or all numpy arrays; the result is of the same kind (numpy
    on the CPU; torch on the device of Q and X). ``ranks`` column j is query j's ranking (database
    indices, best first); an nq x k array from faiss must first go through :func:`ranks_from_topk`.
    A square ``ranks`` (N' == nq > 1) could be either, so it is refused unless
    ``columns_are_queries=True`` states that it is already N' x nq.

    Returns the new ranks (N' x nq, int64); with ``return_scores=True``, ``(ranks, scores)`` where
    scores (m x nq, m = min(M, N'), float32 or wider) are the (S1 + S2) / 2 values the new top m
    is sorted by, in the new order (non-increasing down each column).
    """
    as_numpy, (Q, X, ranks) = as_tensors(Q, X, ranks)
    check_arguments(Q, X, ranks, M, K, beta, chunk_size, columns_are_queries)
    ranks = ranks.to(device=X.device, dtype=torch.long)
    new_ranks = ranks.clone()
    nq, m = ranks.shape[1], min(M, ranks.shape[0])
    scores = torch.empty(m, nq, dtype=compute_dtype(Q, X), device=X.device) if return_scores else None
    top_all = ranks[:m].T.contiguous()                                    # nq x m
    finite = FiniteScores()
    for start, top, q, x_top, neighbours, weights in augmented_chunks(Q, X, top_all, K, beta, chunk_size):
        new_top, top_scores = rerank_block(top, q, x_top, neighbours, weights)
        finite.add(top_scores)
        new_ranks[:m, start:start + len(top)] = new_top.T
        if return_scores:
            scores[:, start:start + len(top)] = top_scores.T
    finite.require(nq, beta)
    outputs = (new_ranks, scores) if return_scores else (new_ranks,)
    if as_numpy:
        outputs = tuple(t.numpy() for t in outputs)
    return outputs if return_scores else outputs[0]


def ranks_from_topk(I):
    """faiss-style top-k indices I (nq x k, row j = query j's results, best first) -> ranks in the
    orientation :func:`rerank` takes (k x nq, contiguous). Same kind (numpy / torch) as given."""
    if _is_numpy(I):
        kind_ok, shape = I.dtype.kind in 'iu', I.shape
    elif isinstance(I, torch.Tensor):
        kind_ok, shape = not (I.is_floating_point() or I.is_complex() or I.dtype == torch.bool), I.shape
    else:
        raise ValueError(f'I must be a 2-D integer torch tensor or numpy array (nq x k), got {type(I).__name__}')
    if not kind_ok or len(shape) != 2:
        raise ValueError(f'I must be a 2-D integer torch tensor or numpy array (nq x k), got shape {tuple(shape)}')
    if (I < 0).any():
        raise ValueError('I holds negative indices (faiss writes -1 when it found fewer than k results): '
                         'search with a smaller k or drop those columns')
    return I.T.copy() if _is_numpy(I) else I.T.contiguous()


def rerank_topk(Q, I, vectors, K=9, beta=0.15, chunk_size=None):
    """Rerank every query's k candidates, in faiss' orientation: (ids, scores), both nq x k.

    Q: queries (nq x D). I: candidate database ids (nq x k, row j = query j's top k, best first, as
    faiss' ``index.search(Q, k)`` returns them; every id >= 0). ``vectors``: the candidates' own
    descriptors, nq x k x D (``vectors[j, i]`` belongs to ``I[j, i]``; faiss:
    ``index.search_and_reconstruct(Q, k)``), or an N x D table that ``I`` indexes (the database X).
    All k candidates are reranked, so M = k: search with k = M (400 in the paper).

    Returns ids (nq x k, int64: I's ids in the new order) and scores (nq x k, float32 or wider: the
    (S1 + S2) / 2 values that order is sorted by, non-increasing along each row). With the table X,
    ids equal ``rerank(Q, X, ranks_from_topk(I), M=k).T``. Same kind (numpy / torch) as given.
    """
    as_numpy, (Q, vectors, I) = as_tensors(Q, vectors, I, names=('Q', 'vectors', 'I'))
    ranks_from_topk(I)  # checks I: 2-D, integer, no -1 padding
    if isinstance(vectors, torch.Tensor) and vectors.dim() == 2:
        new, scores = rerank(Q, vectors, ranks_from_topk(I), M=max(I.shape[1], 1), K=K, beta=beta,
                             chunk_size=chunk_size, return_scores=True, columns_are_queries=True)
        outputs = (new.T.contiguous(), scores.T.contiguous())
    else:
        outputs = rerank_own_vectors(Q, I, vectors, K, beta, chunk_size)
    return tuple(t.numpy() for t in outputs) if as_numpy else outputs


def rerank_own_vectors(Q, I, vectors, K, beta, chunk_size):
    """:func:`rerank_topk` with the candidates' vectors (nq x k x D): the same stages as
    :func:`rerank`, on each query's own x_top instead of rows gathered from X."""
    check_candidates(Q, I, vectors)
    nq, k = I.shape
    check_settings(max(k, 1), K, beta, chunk_size)
    I = I.to(device=vectors.device, dtype=torch.long)
    dtype = compute_dtype(Q, vectors)
    ids, scores = torch.empty_like(I), torch.empty(nq, k, dtype=dtype, device=vectors.device)
    if k == 0:
        return ids, scores
    chunk = chunk_size or auto_chunk_size(k, vectors.shape[2], K, dtype, vectors.device)
    grams = torch.empty(min(chunk, nq), k, k, dtype=dtype, device=vectors.device)
    for start in range(0, nq, chunk):
        x_top = vectors[start:start + chunk].to(dtype).contiguous()
        neighbours, weights = augmentation_neighbours(x_top, K, beta, grams[:len(x_top)])
        q = Q[start:start + chunk].to(dtype)
        ids[start:start + chunk], scores[start:start + chunk] = rerank_block(
            I[start:start + chunk], q, x_top, neighbours, weights)
    return ids, scores


def check_candidates(Q, I, vectors):
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 3 or not vectors.is_floating_point():
        raise ValueError('vectors must be a floating-point torch tensor or numpy array: nq x k x D (each '
                         "candidate's descriptor) or N x D (the database that I indexes)")
    if tuple(vectors.shape[:2]) != tuple(I.shape):
        raise ValueError(f'vectors ({tuple(vectors.shape)}) must be nq x k x D with I ({tuple(I.shape)}) = nq x k')
    if not isinstance(Q, torch.Tensor) or Q.dim() != 2 or not Q.is_floating_point():
        raise ValueError('Q must be a 2-D floating-point torch tensor or numpy array (rows = descriptors)')
    if Q.shape[0] != I.shape[0]:
        raise ValueError(f'I must have one row per query: {I.shape[0]} rows for {Q.shape[0]} queries')
    if Q.shape[1] != vectors.shape[2]:
        raise ValueError(f'Q and vectors must have the same descriptor size, got {Q.shape[1]} and {vectors.shape[2]}')
    if Q.device != vectors.device:
        raise ValueError(f'Q and vectors must be on the same device, got {Q.device} and {vectors.device}')


def rerank_block(top, q, x_top, neighbours, weights, q_raw=None):
    """Stages 1c-2b for one chunk of c queries: returns (new top (c x m database indices), their
    scores (S1 + S2) / 2 in that order (c x m)). ``q_raw`` = :func:`similarities` (x_top, q) when
    the caller already has it (the sweep reuses it across settings)."""
    s1 = weighted_sums(similarities(x_top, q) if q_raw is None else q_raw, neighbours, weights)
    s1_sorted, order = torch.sort(s1, dim=1, descending=True, stable=True)
    best = order[:, :neighbours.shape[-1]]
    q_mda = mda_query(augment(x_top, neighbours, weights, rows=best))
    s2 = augmented_scores(x_top, q_mda, neighbours, weights).gather(1, order)
    scores, final_order = mda_order(s1_sorted, s2)
    return top.gather(1, order).gather(1, final_order), scores


def augmented_chunks(Q, X, top_all, K, beta, chunk_size=None):
    """Stage 1 over chunks of queries. top_all: nq x m database indices.

    Yields (start, top, q, x_top, neighbours, weights) per chunk of c queries: top (c x m),
    q (c x D), x_top = X[top] (c x m x D, a reused buffer: valid until the next chunk) and the
    augmentation neighbours / normalised weights (c x m x k). Computes in float32 or wider.
    """
    nq, m = top_all.shape
    if m == 0:
        return
    chunk = chunk_size or auto_chunk_size(m, X.shape[1], K, compute_dtype(Q, X), X.device)
    for start, top, q, x_top, gram_out in gathered_chunks(Q, X, top_all, chunk):
        neighbours, weights = augmentation_neighbours(x_top, K, beta, gram_out)
        yield start, top, q, x_top, neighbours, weights


def gathered_chunks(Q, X, top_all, chunk):
    """Per chunk of ``chunk`` queries: (start, top (c x m), q (c x D), x_top = X[top] (c x m x D),
    a c x m x m buffer for the Gram matrices), in the compute dtype. x_top and the buffer are
    reused: valid until the next chunk."""
    nq, m = top_all.shape
    buffers = ChunkBuffers(min(chunk, nq), m, X.shape[1], compute_dtype(Q, X), X.device)
    for start in range(0, nq, chunk):
        top = top_all[start:start + chunk]
        x_top = buffers.gather(X, top)
        yield start, top, Q[start:start + chunk].to(x_top.dtype), x_top, buffers.gram(len(top))


def augmentation_neighbours(x_top, K, beta, gram_out=None):
    """Stage 1a. x_top (c x m x D) -> neighbours (c x m x k positions in the top) and their
    normalised weights w / sum(w) (c x m x k), k = min(K+1, m)."""
    m = x_top.shape[1]
    values, neighbours = top_entries(gram_matrices(x_top, gram_out), min(K + 1, m))
    return neighbours, neighbour_weights(values, beta)


def gram_matrices(x_top, out=None):
    """A = X_T X_T^T per query (c x m x m)."""
    return torch.bmm(x_top, x_top.transpose(1, 2), out=out)


def neighbour_weights(values, beta):
    """Normalised augmentation weights (c x m x k) from the neighbours' similarities: the item
    itself 1, its neighbours beta * similarity."""
    weights = values * beta
    weights[..., 0] = 1.0
    return weights / weights.sum(-1, keepdim=True)


def top_entries(scores, k):
    """The k largest entries of each row, in the order of a stable descending sort (c x m x k)."""
    if k >= scores.shape[-1]:
        values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
        return values[..., :k], indices[..., :k]
    # topk is much faster than a full sort but does not define the order of equal values: one
    # extra entry shows ties inside the k or across its boundary; only those rows are sorted.
    values, indices = torch.topk(scores, k + 1, dim=-1)
    tied = (values[..., 1:] == values[..., :-1]).any(-1)
    if tied.any():
        tied_values, tied_indices = torch.sort(scores[tied], dim=-1, descending=True, stable=True)
        values[tied], indices[tied] = tied_values[..., :k + 1], tied_indices[..., :k + 1]
    return values[..., :k], indices[..., :k]


def augment(x_top, neighbours, weights, rows=None):
    """Stage 1b. Augmented descriptors d (c x r x D) of the top items at positions ``rows``
    (c x r; default all m): the weighted mean of their neighbours."""
    if rows is not None:
        index = rows.unsqueeze(-1).expand(-1, -1, neighbours.shape[-1])
        neighbours, weights = neighbours.gather(1, index), weights.gather(1, index)
    c, m, dim = x_top.shape
    offsets = torch.arange(c, device=x_top.device).view(c, 1, 1) * m
    flat = F.embedding_bag((neighbours + offsets).flatten(0, 1), x_top.reshape(c * m, dim),
                           per_sample_weights=weights.flatten(0, 1), mode='sum')
    return flat.view(c, -1, dim)


def augmented_scores(x_top, v, neighbours, weights):
    """v_b . d_{b,i} for every top item (c x m), without forming d: d is linear in x."""
    return weighted_sums(similarities(x_top, v), neighbours, weights)


def similarities(x_top, v):
    """v_b . x_{b,i} for every top item (c x m)."""
    return torch.bmm(x_top, v.unsqueeze(-1)).squeeze(-1)


def weighted_sums(raw, neighbours, weights):
    """sum_j w_ij raw_{n_i(j)} (c x m): v . d_i from the raw similarities v . x."""
    c, m, k = neighbours.shape
    return (raw.gather(1, neighbours.reshape(c, m * k)).view(c, m, k) * weights).sum(-1)


def mda_query(best_descriptors):
    """Stage 2a. q' = element-wise max over the augmented descriptors of the best items (c x D)."""
    return best_descriptors.max(1).values


def mda_order(s1_sorted, s2):
    """Stage 2b. (sorted (S1 + S2) / 2, the final order of the top block as positions into P)."""
    return torch.sort((s1_sorted + s2) / 2, dim=1, descending=True, stable=True)


class FiniteScores:
    """Counts the queries whose reranking scores hold NaN or Inf, on the scores' device (no
    synchronisation per chunk). A non-finite score cannot be ordered: a stable sort would leave the
    block in its first-pass order and the result would look reranked. `require` raises
    FloatingPointError (entry points report it on one line, like a user error)."""

    def __init__(self):
        self.bad = None

    def add(self, scores):
        """scores: c x m, one row per query."""
        bad = (~torch.isfinite(scores)).any(-1).sum()
        self.bad = bad if self.bad is None else self.bad + bad

    def require(self, nq, beta):
        if self.bad is not None and int(self.bad):
            raise FloatingPointError(
                f"SuperGlobal reranking gave NaN or Inf scores for {int(self.bad)} of {nq} queries (beta={beta:g}): "
                "the neighbour weights 1 + beta * similarity overflowed or summed to zero; lower SupG.beta, or "
                "check that the features are finite and L2-normalised")


def compute_dtype(Q, X):
    return torch.promote_types(torch.promote_types(Q.dtype, X.dtype), torch.float32)


def auto_chunk_size(m, dim, K, dtype, device):
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_query = (m * dim + m * m + 4 * m * (K + 1)) * itemsize
    budget = CPU_CHUNK_BYTES if torch.device(device).type == 'cpu' else DEVICE_CHUNK_BYTES
    return max(1, budget // max(per_query, 1))


class ChunkBuffers:
    """Reused per-chunk storage for the gathered top descriptors and their Gram matrix."""

    def __init__(self, chunk, m, dim, dtype, device):
        self.m = m
        self.x_top = torch.empty(chunk * m, dim, dtype=dtype, device=device)
        self.grams = torch.empty(chunk, m, m, dtype=dtype, device=device)

    def gather(self, X, top):
        c = top.shape[0]
        out = self.x_top[:c * self.m]
        if X.dtype == out.dtype:
            torch.index_select(X, 0, top.reshape(-1), out=out)
        else:
            out.copy_(X.index_select(0, top.reshape(-1)))
        return out.view(c, self.m, X.shape[1])

    def gram(self, c):
        return self.grams[:c]


def as_tensors(Q, X, ranks, names=('Q', 'X', 'ranks')):
    """(True when the inputs are numpy arrays, (Q, X, ranks) as tensors). numpy arrays are wrapped
    without a copy when they can be; each must be of the right kind to be converted at all.
    ``names``: the caller's names of the three arguments, for the messages."""
    kinds = [_is_numpy(a) for a in (Q, X, ranks)]
    if not any(kinds):
        return False, (Q, X, ranks)
    if not all(kinds):
        raise ValueError(f'{names[0]}, {names[1]} and {names[2]} must be all torch tensors or all numpy arrays, got '
                         + ', '.join(type(a).__name__ for a in (Q, X, ranks)))
    for name, a, wanted in zip(names, (Q, X, ranks), ('f', 'f', 'iu')):
        if a.dtype.kind not in wanted:
            what = 'floating-point' if wanted == 'f' else 'integer'
            raise ValueError(f'{name} must be a 2-D {what} torch tensor or numpy array, got dtype {a.dtype}')
    ranks = ranks if ranks.dtype.kind == 'i' else ranks.astype('int64')
    # from_numpy shares memory but refuses negative strides (a[::-1]) and warns on read-only
    # arrays (np.load's mmap): copy those
    return True, tuple(torch.from_numpy(a if a.flags.writeable and min(a.strides, default=0) >= 0 else a.copy())
                       for a in (Q, X, ranks))


def check_arguments(Q, X, ranks, M, K, beta, chunk_size, columns_are_queries=True):
    for name, t in (('Q', Q), ('X', X)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f'{name} must be a 2-D floating-point torch tensor or numpy array (rows = descriptors)')
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f'Q and X must have the same descriptor size, got {Q.shape[1]} and {X.shape[1]}')
    if Q.device != X.device:
        raise ValueError(f'Q and X must be on the same device, got {Q.device} and {X.device}')
    if (not isinstance(ranks, torch.Tensor) or ranks.dim() != 2
            or ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool):
        raise ValueError("ranks must be a 2-D integer torch tensor or numpy array (N' x nq)")
    check_orientation(tuple(ranks.shape), Q.shape[0], columns_are_queries)
    if ranks.shape[0] > X.shape[0]:
        raise ValueError(f'ranks has {ranks.shape[0]} rows but X only {X.shape[0]} descriptors')
    check_settings(M, K, beta, chunk_size)
    check_length(ranks.shape[0], M, X.shape[0])
    top = ranks[:M]
    if top.numel() and (top.min() < 0 or top.max() >= X.shape[0]):
        raise ValueError(f'ranks must hold database indices in [0, {X.shape[0]})')


def check_settings(M, K, beta, chunk_size):
    if not _is_int(M) or M < 1:
        raise ValueError(f'M must be an integer >= 1, got {M!r}')
    if not _is_int(K) or K < 0:
        raise ValueError(f'K must be an integer >= 0, got {K!r}')
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f'beta must be a finite number >= 0, got {beta!r}')
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f'chunk_size must be None or an integer >= 1, got {chunk_size!r}')


def check_length(rows, M, n_db):
    """The top min(M, N) must be ranked: fewer rows would silently rerank fewer items than M."""
    if rows < min(M, n_db):
        raise ValueError(f"ranks has {rows} rows (positions per query) but M={M} and the database has {n_db} "
                         "items: search with k >= M (faiss: index.search(Q, M))"
                         + (f", or pass M={rows} to rerank the top {rows} only" if rows else ""))


def check_orientation(shape, nq, columns_are_queries):
    """ranks must be N' x nq. An nq x k array (faiss' orientation) is refused: always when k != nq,
    and when square unless the caller states the orientation, since both readings then fit."""
    rows, columns = shape
    hint = "convert faiss-style nq x k indices with ranks_from_topk(I)"
    if columns != nq:
        looks_faiss = ' (it looks like nq x k, the faiss orientation)' if rows == nq else ''
        raise ValueError(f"ranks must be N' x nq with one column per query: {columns} columns for {nq} "
                         f"queries{looks_faiss}; {hint}")
    if rows == nq > 1 and not columns_are_queries:
        raise ValueError(f"ranks is square ({rows} x {columns}): it could be N' x nq or a faiss-style nq x k; "
                         f"{hint}, or pass columns_are_queries=True if column j already ranks the "
                         "database for query j")


def _is_numpy(value):
    """A numpy array, without importing numpy here (modules/ depends on torch only): if numpy was
    never imported, the caller cannot hold an array."""
    numpy = sys.modules.get('numpy')
    return numpy is not None and isinstance(value, numpy.ndarray)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
