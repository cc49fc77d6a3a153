"""SuperGlobal coarse-retrieval modules: GeM+, Regional-GeM, Scale-GeM and ReLU+ (torch only)."""
from .gemp import GeMPlus, gemp
from .relup import ReLUPlus, relup
from .rgem import RegionalGeM, rgem
from .sgem import ScaleGeM, sgem

__all__ = ['GeMPlus', 'RegionalGeM', 'ScaleGeM', 'ReLUPlus', 'gemp', 'rgem', 'sgem', 'relup']
