"""Similarity search: cosine similarity of L2-normalised descriptors, ranks in revisitop orientation."""

import torch


def rank_by_similarity(X, Q):
    """Database X (N x D), queries Q (nq x D) -> ranks (N x nq): column j lists database indices for
    query j by descending X Q^T similarity; ties keep the lower index first (stable sort)."""
    similarity = X @ Q.T
    return torch.sort(similarity, dim=0, descending=True, stable=True).indices
