"""The function library agent code calls: typed values, the registry, and the functions themselves."""
from agent.functions.registry import LibraryFunction, Param, Registry
from agent.functions.types import Encoding, ImageValue, Mask, Quantity, Record, Scan


def default_registry() -> Registry:
    """The library (built once per process; it holds no state)."""
    global _REGISTRY
    if _REGISTRY is None:
        from agent.functions.library import build_registry

        _REGISTRY = build_registry()
    return _REGISTRY


_REGISTRY: Registry | None = None

__all__ = ["Encoding", "ImageValue", "LibraryFunction", "Mask", "Param", "Quantity", "Record", "Registry", "Scan",
           "default_registry"]
