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

Speed: d is linear in the neighbour weights, so q . d_i = sum_j w_ij (q . x_{n_i(j)}): S1 and S2
need only X_T q and X_T q' (c x m) instead of every d_i (c x m x D); d is only formed for the k
best items that make q'. The cost is one (m x m) Gram matrix per query, done in chunks of
queries with preallocated buffers (fresh large CPU allocations pay page faults every chunk).
"""
import math
import numbers

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 64 * 2 ** 20      # small chunks stay in cache on CPU
DEVICE_CHUNK_BYTES = 256 * 2 ** 20


def rerank(Q, X, ranks, M=400, K=9, beta=0.15, chunk_size=None):
    """Rerank the top M of each column of ``ranks`` (N' x nq) for queries Q (nq x D) over X (N x D).

    Returns the new ranks (N' x nq, int64) on the device of Q and X.
    """
    check_arguments(Q, X, ranks, M, K, beta, chunk_size)
    ranks = ranks.to(device=X.device, dtype=torch.long)
    new_ranks = ranks.clone()
    nq, m = ranks.shape[1], min(M, ranks.shape[0])
    if nq == 0 or m == 0:
        return new_ranks
    top_all = ranks[:m].T.contiguous()                                    # nq x m
    for start, top, q, x_top, neighbours, weights in augmented_chunks(Q, X, top_all, K, beta, chunk_size):
        s1 = augmented_scores(x_top, q, neighbours, weights)
        s1_sorted, order = torch.sort(s1, dim=1, descending=True, stable=True)
        best = order[:, :neighbours.shape[-1]]
        q_mda = mda_query(augment(x_top, neighbours, weights, rows=best))
        s2 = augmented_scores(x_top, q_mda, neighbours, weights).gather(1, order)
        final_order = mda_order(s1_sorted, s2)
        new_ranks[:m, start:start + len(top)] = top.gather(1, order).gather(1, final_order).T
    return new_ranks


def augmented_chunks(Q, X, top_all, K, beta, chunk_size=None):
    """Stage 1 over chunks of queries. top_all: nq x m database indices.

    Yields (start, top, q, x_top, neighbours, weights) per chunk of c queries: top (c x m),
    q (c x D), x_top = X[top] (c x m x D, a reused buffer: valid until the next chunk) and the
    augmentation neighbours / normalised weights (c x m x k). Computes in float32 or wider.
    """
    nq, m = top_all.shape
    if m == 0:
        return
    dtype = compute_dtype(Q, X)
    chunk = chunk_size or auto_chunk_size(m, X.shape[1], K, dtype, X.device)
    buffers = ChunkBuffers(min(chunk, nq), m, X.shape[1], dtype, X.device)
    for start in range(0, nq, chunk):
        top = top_all[start:start + chunk]
        x_top = buffers.gather(X, top)
        neighbours, weights = augmentation_neighbours(x_top, K, beta, buffers.gram(len(top)))
        yield start, top, Q[start:start + chunk].to(dtype), x_top, neighbours, weights


def augmentation_neighbours(x_top, K, beta, gram_out=None):
    """Stage 1a. x_top (c x m x D) -> neighbours (c x m x k positions in the top) and their
    normalised weights w / sum(w) (c x m x k), k = min(K+1, m)."""
    m = x_top.shape[1]
    k = min(K + 1, m)
    gram = torch.bmm(x_top, x_top.transpose(1, 2), out=gram_out)
    values, neighbours = top_entries(gram, k)
    weights = values * beta
    weights[..., 0] = 1.0
    return neighbours, weights / weights.sum(-1, keepdim=True)


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
    raw = torch.bmm(x_top, v.unsqueeze(-1)).squeeze(-1)                   # c x m
    c, m, k = neighbours.shape
    return (raw.gather(1, neighbours.reshape(c, m * k)).view(c, m, k) * weights).sum(-1)


def mda_query(best_descriptors):
    """Stage 2a. q' = element-wise max over the augmented descriptors of the best items (c x D)."""
    return best_descriptors.max(1).values


def mda_order(s1_sorted, s2):
    """Stage 2b. Final order of the top block: positions into P sorted by (S1 + S2) / 2."""
    return torch.sort((s1_sorted + s2) / 2, dim=1, descending=True, stable=True).indices


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


def check_arguments(Q, X, ranks, M, K, beta, chunk_size):
    for name, t in (('Q', Q), ('X', X)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f'{name} must be a 2-D floating-point tensor (rows = descriptors)')
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f'Q and X must have the same descriptor size, got {Q.shape[1]} and {X.shape[1]}')
    if Q.device != X.device:
        raise ValueError(f'Q and X must be on the same device, got {Q.device} and {X.device}')
    if (not isinstance(ranks, torch.Tensor) or ranks.dim() != 2
            or ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool):
        raise ValueError('ranks must be a 2-D integer tensor (N\' x nq)')
    if ranks.shape[1] != Q.shape[0]:
        raise ValueError(f'ranks must have one column per query: {ranks.shape[1]} columns, {Q.shape[0]} queries')
    if ranks.shape[0] > X.shape[0]:
        raise ValueError(f'ranks has {ranks.shape[0]} rows but X only {X.shape[0]} descriptors')
    if not _is_int(M) or M < 1:
        raise ValueError(f'M must be an integer >= 1, got {M!r}')
    if not _is_int(K) or K < 0:
        raise ValueError(f'K must be an integer >= 0, got {K!r}')
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f'beta must be a finite number >= 0, got {beta!r}')
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f'chunk_size must be None or an integer >= 1, got {chunk_size!r}')
    top = ranks[:M]
    if top.numel() and (top.min() < 0 or top.max() >= X.shape[0]):
        raise ValueError(f'ranks must hold database indices in [0, {X.shape[0]})')


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
