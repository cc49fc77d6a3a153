"""SuperGlobal reranking (MDescAug + RerankwMDA), vectorised over queries (torch only)."""
from .rerank import rerank
from .MDescAug import MDescAug
from .RerankwMDA import RerankwMDA

__all__ = ['rerank', 'MDescAug', 'RerankwMDA']
