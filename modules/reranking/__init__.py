"""SuperGlobal reranking (MDescAug + RerankwMDA), vectorised over queries (torch only)."""
from .rerank import rerank, rerank_topk, ranks_from_topk
from .MDescAug import MDescAug
from .RerankwMDA import RerankwMDA

__all__ = ['rerank', 'rerank_topk', 'ranks_from_topk', 'MDescAug', 'RerankwMDA']
