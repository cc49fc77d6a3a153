"""Reference implementations of SuperGlobal reranking (MDescAug + RerankwMDA).

``rerank_loop``: a plain per-query loop over the five steps, written independently of
``modules.reranking``; the reference for tests and the speed baseline.
``rerank_official``: a transcription of the official SuperGlobal code (gathers
nq x M x (K+1) x D neighbour descriptors at once: the memory-heavy baseline).

Both take Q (nq x D), X (N x D) with L2-normalised rows and ranks (N' x nq, column j = database
indices for query j, best first) and return new ranks (N' x nq, int64).
"""
import torch


def _compute_dtype(*tensors):
    dtype = torch.promote_types(tensors[0].dtype, tensors[1].dtype)
    return torch.promote_types(dtype, torch.float32)


def rerank_loop(Q, X, ranks, M=400, K=9, beta=0.15, return_scores=False):
    """With ``return_scores``: (ranks, scores), scores (m x nq) = the sorted (S1 + S2) / 2."""
    dtype = _compute_dtype(Q, X)
    Q, X = Q.to(dtype), X.to(dtype)
    new_ranks = ranks.clone().long()
    m = min(M, ranks.shape[0])
    scores = torch.empty(m, ranks.shape[1], dtype=dtype)
    for j in range(ranks.shape[1]):
        q = Q[j]
        top = ranks[:m, j].long()
        x_top = X[top]                                             # m x D

        # 1-2. descriptor of each top item = weighted mean of its K+1 nearest items in the top m
        gram = x_top @ x_top.T                                     # m x m
        k = min(K + 1, m)
        values, neighbours = torch.sort(gram, dim=1, descending=True, stable=True)
        weights = beta * values[:, :k]                             # m x k
        weights[:, 0] = 1.0
        aug = (weights[:, :, None] * x_top[neighbours[:, :k]]).sum(1) / weights.sum(1, keepdim=True)

        # 3. first score: query against the augmented descriptors
        s1 = aug @ q
        s1_sorted, order = torch.sort(s1, descending=True, stable=True)

        # 4. second score: max of the top augmented descriptors against all of them
        q_aug = aug[order[:k]].max(0).values
        s2 = aug[order] @ q_aug

        # 5. average, re-sort the top block, keep the rest
        final = (s1_sorted + s2) / 2
        scores[:, j], final_order = torch.sort(final, descending=True, stable=True)
        new_ranks[:m, j] = top[order][final_order]
    return (new_ranks, scores) if return_scores else new_ranks


def rerank_official(Q, X, ranks, M=400, K=9, beta=0.15):
    """The official MDescAug + RerankwMDA, vectorised the official way.

    Only deviations: argsort is stable (so results are deterministic) and m = min(M, N').
    """
    dtype = _compute_dtype(Q, X)
    Q, X = Q.to(dtype), X.to(dtype)
    M = min(M, ranks.shape[0])
    K = min(K + 1, M)  # including oneself

    # MDescAug
    ranks_trans_1000 = torch.transpose(ranks.long(), 1, 0)[:, :M]                 # nq M
    X_tensor1 = X[ranks_trans_1000]                                                # nq M D
    res_ie = torch.einsum('abc,adc->abd', X_tensor1, X_tensor1)                    # nq M M
    res_ie_ranks = torch.unsqueeze(torch.argsort(-res_ie, axis=-1, stable=True)[:, :, :K], -1)
    res_ie_ranks_value = torch.unsqueeze(-torch.sort(-res_ie, axis=-1, stable=True)[0][:, :, :K], -1)
    res_ie_ranks_value[:, :, 1:, :] *= beta
    res_ie_ranks_value[:, :, 0:1, :] = 1.
    res_ie_ranks = torch.squeeze(res_ie_ranks, -1)                                 # nq M K
    x_dba = torch.stack([j[i] for i, j in zip(res_ie_ranks, X_tensor1)], 0)        # nq M K D
    x_dba = torch.sum(x_dba * res_ie_ranks_value, 2) / torch.sum(res_ie_ranks_value, 2)
    res_top1000_dba = torch.einsum('ac,adc->ad', Q, x_dba)                         # nq M
    ranks_trans_1000_pre = torch.argsort(-res_top1000_dba, dim=-1, stable=True)        # nq M
    rerank_dba_final = [ranks_trans_1000[i][ranks_trans_1000_pre[i]]
                        for i in range(ranks_trans_1000_pre.shape[0])]

    # RerankwMDA
    ranks_trans_1000 = torch.stack(rerank_dba_final, 0)                            # nq M
    ranks_value_trans_1000 = -torch.sort(-res_top1000_dba, dim=-1, stable=True)[0]     # nq M
    ranks_trans = torch.unsqueeze(ranks_trans_1000_pre[:, :K], -1)                 # nq K 1
    X1 = torch.take_along_dim(x_dba, ranks_trans, 1)                               # nq K D
    X2 = torch.take_along_dim(x_dba, torch.unsqueeze(ranks_trans_1000_pre, -1), 1) # nq M D
    X1 = torch.max(X1, 1, True)[0]                                                 # nq 1 D
    res_rerank = torch.sum(torch.einsum('abc,adc->abd', X1, X2), 1)                # nq M
    res_rerank = (ranks_value_trans_1000 + res_rerank) / 2.
    res_rerank_ranks = torch.argsort(-res_rerank, axis=-1, stable=True)
    ranks_transpose = torch.transpose(ranks.long(), 1, 0)[:, M:]
    rerank_qe_final = [torch.concat([ranks_trans_1000[i][res_rerank_ranks[i]], ranks_transpose[i]], 0)
                       for i in range(res_rerank_ranks.shape[0])]
    return torch.transpose(torch.stack(rerank_qe_final, 0), 1, 0)
