"""SuperGlobal reranking (MDescAug + RerankwMDA), vectorised over queries (torch only)."""
from .MDescAug import MDescAug
from .rerank import ranks_from_topk, rerank
from .RerankwMDA import RerankwMDA

__all__ = ['rerank', 'ranks_from_topk', 'MDescAug', 'RerankwMDA']
