"""Classic feature-only baselines to compare SuperGlobal reranking with: alpha-QE and alpha-DBA.

Both are from Radenović, Tolias, Chum, "Fine-tuning CNN image retrieval with no human annotation"
(TPAMI 2018, the cnnimageretrieval-pytorch paper). Descriptors are L2-normalised rows; similarities
are dot products; a neighbour's weight is ``max(sim, 0) ** alpha`` (negative similarities would
flip sign under odd powers and are given weight 0).

alpha-QE (query side), from the current ranking of query q (top n database items x_1..x_n):

    q' = normalise(q + sum_{i=1..n} max(q . x_i, 0)^alpha x_i)

alpha-DBA (database side), every database item x_i with its k nearest *other* database items
(by x_i . x_j, j != i, ties broken by the lower index):

    x_i' = normalise(x_i + sum_{j in NN_k(i)} max(x_i . x_j, 0)^alpha x_j)

The item itself takes part with weight 1 = (x . x)^alpha in both (``include_query=False`` /
``rerank_features.py --qe-exclude-query`` drops q from q': q' = normalise(sum over the top n only)).
Defaults: alpha = 3, n = 2 (QE),
k = 2 (DBA); all are parameters (``rerank_features.py --qe-n/--qe-alpha/--dba-k/--dba-alpha``).
After QE the whole database is searched again with q'; after DBA the queries search X'.
"DBA+QE" runs QE against the augmented database X'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modules.reranking.rerank import top_entries
from test.retrieval.similarity import rank_by_similarity

QE_N, QE_ALPHA = 2, 3.0
DBA_K, DBA_ALPHA = 2, 3.0


def _weights(similarity, alpha):
    return similarity.clamp(min=0).pow(alpha)


def _check(Q, X, n, alpha, what):
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{what}: the number of neighbours must be an integer >= 0, got {n!r}")
    if not (float(alpha) >= 0):
        raise ValueError(f"{what}: alpha must be a number >= 0, got {alpha!r}")
    for name, t in (("Q", Q), ("X", X)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point()):
            raise ValueError(f"{what}: {name} must be a 2-D floating-point tensor")


def alpha_qe(Q, X, ranks, n=QE_N, alpha=QE_ALPHA, include_query=True):
    """Expanded queries (nq x D): q' = normalise(q + sum over the top n of ``ranks`` (N' x nq)
    of max(q . x, 0)^alpha x); without the q term when ``include_query`` is False.
    n = 0 returns normalise(q)."""
    _check(Q, X, n, alpha, "alpha_qe")
    n = min(n, ranks.shape[0])
    top = ranks[:n].T.to(device=X.device, dtype=torch.long)               # nq x n
    neighbours = X[top]                                                   # nq x n x D
    similarity = torch.bmm(neighbours, Q.unsqueeze(-1)).squeeze(-1)       # nq x n
    expanded = (neighbours * _weights(similarity, alpha).unsqueeze(-1)).sum(1)
    if include_query or n == 0:
        expanded = Q + expanded
    return F.normalize(expanded, p=2, dim=1)


def alpha_dba(X, k=DBA_K, alpha=DBA_ALPHA, chunk_size=1024):
    """Augmented database (N x D): each x_i replaced by normalise(x_i + sum over its k nearest other
    items of max(x_i . x_j, 0)^alpha x_j). Rows are done in chunks, so memory is chunk x N."""
    _check(None, X, k, alpha, "alpha_dba")
    N = X.shape[0]
    k = min(k, N - 1)
    out = torch.empty_like(X)
    for start in range(0, N, chunk_size):
        rows = X[start:start + chunk_size]
        similarity = rows @ X.T
        idx = torch.arange(len(rows), device=X.device)
        similarity[idx, start + idx] = float("-inf")                     # not its own neighbour
        if k > 0:
            values, neighbours = top_entries(similarity.unsqueeze(0), k)
            values, neighbours = values[0], neighbours[0]
            agg = (X[neighbours] * _weights(values, alpha).unsqueeze(-1)).sum(1)
            out[start:start + len(rows)] = rows + agg
        else:
            out[start:start + len(rows)] = rows
    return F.normalize(out, p=2, dim=1)


def qe_ranks(Q, X, ranks=None, n=QE_N, alpha=QE_ALPHA, include_query=True):
    """Full ranking (N x nq) after alpha-QE; ``ranks`` defaults to the plain ranking of X by Q."""
    if ranks is None:
        ranks = rank_by_similarity(X, Q)
    return rank_by_similarity(X, alpha_qe(Q, X, ranks, n, alpha, include_query))


def dba_ranks(Q, X, k=DBA_K, alpha=DBA_ALPHA):
    """Full ranking (N x nq) of the alpha-DBA database by the original queries."""
    return rank_by_similarity(alpha_dba(X, k, alpha), Q)


def dba_qe_ranks(Q, X, k=DBA_K, dba_alpha=DBA_ALPHA, n=QE_N, qe_alpha=QE_ALPHA, include_query=True):
    """DBA, then alpha-QE against the augmented database (the usual "DBA+QE")."""
    Xd = alpha_dba(X, k, dba_alpha)
    return qe_ranks(Q, Xd, rank_by_similarity(Xd, Q), n, qe_alpha, include_query)
