"""Model factories named in training configs (``model.factory: "module:callable"``).

A factory is called with the config's ``model.kwargs`` (``elements`` and ``heads`` filled in from
the data when absent) and returns a model that follows docs/interfaces.md ("Model"). The spec
(factory + kwargs) is stored in every checkpoint, so a checkpoint rebuilds its own model.
"""
from __future__ import annotations

import importlib


def mlpolar(**kwargs):
    """The project's model: ``MLPolar(MLPolarConfig(**kwargs))``."""
    try:
        from ..model import MLPolar, MLPolarConfig
    except ImportError as e:
        raise ImportError("mlpolar.model is not available in this checkout (issue 4); "
                          "name another model.factory in the training config") from e
    return MLPolar(MLPolarConfig(**kwargs))


def resolve(factory: str):
    mod, _, name = factory.partition(":")
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise ImportError(f"model.factory={factory!r}: cannot import module {mod!r} ({e})") from e
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model.factory={factory!r}: {mod!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def build_model(spec: dict):
    """``spec = {"factory": "module:callable", "kwargs": {...}}`` -> model."""
    return resolve(spec["factory"])(**spec.get("kwargs", {}))
