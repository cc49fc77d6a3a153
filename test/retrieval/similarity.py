"""Similarity search: cosine similarity of L2-normalised descriptors, ranks in revisitop orientation."""

import torch


def rank_by_similarity(X, Q):
    """Database X (N x D), queries Q (nq x D) -> ranks (N x nq): column j lists database indices for
    query j by descending X Q^T similarity; ties keep the lower index first (stable sort)."""
    return _sort_descending(X @ Q.T)


def top_by_similarity(X, Q, keep, query_chunk=64):
    """The best `keep` database indices per query (keep x nq), by descending X Q^T, ties to the lower
    index: the first `keep` rows of rank_by_similarity, without an N x nq sort (for large indexes)."""
    keep = min(keep, X.shape[0])
    top = torch.empty(keep, Q.shape[0], dtype=torch.long, device=X.device)
    for start in range(0, Q.shape[0], query_chunk):
        similarity = X @ Q[start:start + query_chunk].T
        top[:, start:start + query_chunk] = _stable_top(similarity, keep)
    return top


def _stable_top(similarity, keep):
    """topk, made to agree with a stable descending sort; columns whose keep-th value ties with the
    next one (topk picks arbitrary members of the tie) are fully sorted instead."""
    extra = min(keep + 1, similarity.shape[0])
    values, indices = torch.topk(similarity, extra, dim=0)
    indices, by_index = torch.sort(indices, dim=0)
    order = torch.sort(values.gather(0, by_index), dim=0, descending=True, stable=True).indices
    top = indices.gather(0, order)[:keep]
    if extra > keep:
        tied = values[keep - 1] == values[keep]
        if tied.any():
            top[:, tied] = _sort_descending(similarity[:, tied])[:keep]
    return top


def _sort_descending(similarity):
    return torch.sort(similarity, dim=0, descending=True, stable=True).indices
