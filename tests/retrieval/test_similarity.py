"""Ranking by similarity: full stable ranks, and the top-k shortcut used for large indexes."""

import torch

from test.retrieval.similarity import rank_by_similarity, top_by_similarity


def test_full_ranks_are_stable_descending():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ranks = rank_by_similarity(X, Q)
    assert ranks[:, 0].tolist() == [0, 2, 3, 1]  # tie 0/2 keeps the lower index first
    assert ranks[:, 1].tolist() == [1, 3, 0, 2]


def test_top_k_equals_the_head_of_the_full_ranking_with_ties():
    generator = torch.Generator().manual_seed(0)
    X = torch.randint(-2, 3, (300, 8), generator=generator).float()  # many exact ties
    Q = torch.randint(-2, 3, (37, 8), generator=generator).float()
    full = rank_by_similarity(X, Q)
    for keep, chunk in ((1, 64), (25, 5), (300, 16), (500, 64)):
        top = top_by_similarity(X, Q, keep, query_chunk=chunk)
        assert torch.equal(top, full[:keep])
