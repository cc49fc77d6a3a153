"""Reranking with maximum descriptor aggregation (official SuperGlobal ``RerankwMDA`` interface).

With P the top m items sorted by S1 (from ``MDescAug``) and k = min(K+1, m):
    q' = element-wise max of d over the first k items of P ;  S2_i = q' . d_i
    score_r = ((S1 sorted descending)_r + S2_{P_r}) / 2 ; new top m = P sorted by score (stable)
Rows m.. of ``ranks`` are kept.

    ranks = RerankwMDA()(ranks, rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba)

ranks (N' x nq); the other four as returned by ``MDescAug`` (rerank_dba_final: list of nq
tensors (m,) or an nq x m tensor; res_top1000_dba, ranks_trans_1000_pre: nq x m;
x_dba: nq x m x D). Returns new ranks, N' x nq, int64.
"""
import torch
import torch.nn as nn

from .rerank import mda_order, mda_query


class RerankwMDA(nn.Module):
    """Second stage of SuperGlobal reranking, vectorised over queries."""

    def __init__(self, M=400, K=9, beta=0.15):
        super().__init__()
        self.M = M
        self.K = K
        self.beta = beta  # unused, as in the official code: q' is an unweighted max

    def forward(self, ranks, rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba):
        if isinstance(rerank_dba_final, (list, tuple)):
            if not rerank_dba_final:
                return torch.as_tensor(ranks).long().clone()
            rerank_dba_final = torch.stack(list(rerank_dba_final), 0)
        order_by_s1 = rerank_dba_final.to(dtype=torch.long)                       # nq x m (P)
        m = order_by_s1.shape[1]
        if m == 0:
            return torch.as_tensor(ranks).long().clone()
        k = min(self.K + 1, m)
        s1_sorted = torch.sort(res_top1000_dba, dim=1, descending=True, stable=True).values
        best = ranks_trans_1000_pre[:, :k].unsqueeze(-1).expand(-1, -1, x_dba.shape[-1])
        q_mda = mda_query(x_dba.gather(1, best))                                   # nq x D
        s2 = torch.bmm(x_dba, q_mda.unsqueeze(-1)).squeeze(-1).gather(1, ranks_trans_1000_pre)
        final_order = mda_order(s1_sorted, s2).indices
        new_ranks = torch.as_tensor(ranks).to(device=order_by_s1.device, dtype=torch.long).clone()
        new_ranks[:m] = order_by_s1.gather(1, final_order).T
        return new_ranks

    def extra_repr(self) -> str:
        return f'M={self.M}, K={self.K}'
