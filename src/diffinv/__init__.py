"""diffinv: diffusion inversion methods over one model protocol (replication of arXiv 2512.08547).

The names below load on first use: they import torch (2 s), and most workflow jobs import a submodule
that needs none of it (``diffinv.workflow.notebooks``, ``diffinv.workflow.config``'s job descriptions unpickled by a job).
"""

__all__ = ["invert", "reconstruct", "Run", "InversionResult", "guided_eps", "METHODS", "get_method", "Schedule"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("invert", "reconstruct", "Run", "InversionResult", "guided_eps"):
        from . import api as module
    elif name in ("METHODS", "get_method"):
        from . import methods as module
    elif name == "Schedule":
        from . import schedule as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
