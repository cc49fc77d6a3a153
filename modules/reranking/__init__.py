"""SuperGlobal reranking (MDescAug + RerankwMDA), vectorised over queries (torch only)."""
from .MDescAug import MDescAug
from .rerank import ranks_from_topk, rerank, rerank_topk
from .RerankwMDA import RerankwMDA

__all__ = ['rerank', 'rerank_topk', 'ranks_from_topk', 'MDescAug', 'RerankwMDA']
