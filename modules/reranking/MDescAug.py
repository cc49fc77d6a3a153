"""Top-M descriptor augmentation (official SuperGlobal ``MDescAug`` interface).

For each query, the top m = min(M, N') items T of ``ranks`` get augmented descriptors
d_i = sum_j w_ij x_{n_i(j)} / sum_j w_ij over their k = min(K+1, m) nearest items in T
(w = [1, beta * a_1, ..., beta * a_K]), scored S1_i = q . d_i (formulas in ``rerank.py``).

    rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba = MDescAug()(X, Q, ranks)

X (N x D), Q (nq x D), ranks (N' x nq) ->
    rerank_dba_final      list of nq tensors (m,): database indices of T sorted by S1 (P order)
    res_top1000_dba       nq x m: S1 in T order
    ranks_trans_1000_pre  nq x m: stable argsort of S1, descending (positions into T)
    x_dba                 nq x m x D: d in T order (materialised: it is the official interface;
                          ``rerank`` avoids it)
X, Q and ranks may also be numpy arrays (X is moved to Q's device), as in the official code.
"""
import torch
import torch.nn as nn

from .rerank import augment, augmented_chunks, augmented_scores, check_arguments, compute_dtype


class MDescAug(nn.Module):
    """Top-M descriptor augmentation, vectorised over chunks of queries."""

    def __init__(self, M=400, K=9, beta=0.15, chunk_size=None):
        super().__init__()
        self.M = M
        self.K = K
        self.beta = beta
        self.chunk_size = chunk_size

    def forward(self, X, Q, ranks):
        # The official test code passes X as a CPU numpy array next to a GPU Q.
        Q, ranks = torch.as_tensor(Q), torch.as_tensor(ranks)
        X = torch.as_tensor(X).to(Q.device)
        check_arguments(Q, X, ranks, self.M, self.K, self.beta, self.chunk_size)
        m, dim = min(self.M, ranks.shape[0]), X.shape[1]
        top_all = ranks[:m].to(device=X.device, dtype=torch.long).T.contiguous()   # nq x m
        scores, descriptors = [], []
        for _, _, q, x_top, neighbours, weights in augmented_chunks(
                Q, X, top_all, self.K, self.beta, self.chunk_size):
            scores.append(augmented_scores(x_top, q, neighbours, weights))
            descriptors.append(augment(x_top, neighbours, weights))
        if scores:
            res_top1000_dba, x_dba = torch.cat(scores), torch.cat(descriptors)
        else:  # no query or no ranked item
            dtype = compute_dtype(Q, X)
            res_top1000_dba = torch.empty(len(top_all), m, dtype=dtype, device=X.device)
            x_dba = torch.empty(len(top_all), m, dim, dtype=dtype, device=X.device)
        ranks_trans_1000_pre = torch.sort(res_top1000_dba, dim=1, descending=True, stable=True).indices
        rerank_dba_final = list(top_all.gather(1, ranks_trans_1000_pre).unbind(0))
        return rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba

    def extra_repr(self) -> str:
        return f'M={self.M}, K={self.K}, beta={self.beta}'
