"""diffinv: diffusion inversion methods over one model protocol (replication of arXiv 2512.08547)."""

from .api import InversionResult, guided_eps, invert, reconstruct
from .methods import METHODS, get_method
from .schedule import Schedule

__all__ = ["invert", "reconstruct", "InversionResult", "guided_eps", "METHODS", "get_method", "Schedule"]
__version__ = "0.1.0"
