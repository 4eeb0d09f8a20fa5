"""Shipped models and how to load them.

    mlpolar.models.available()          # names of the model files shipped in mlpolar/models/shipped/
    mlpolar.load_model("name")          # one of those
    mlpolar.load_model("default")       # the only shipped model, or the one named "default"
    mlpolar.load_model("path/to/model.pt")

A shipped model is one file ``shipped/<name>.pt`` written by ``mlpolar.model.save_model``
(TorchScript archives written by ``torch.jit.save`` load too). The trained polarisable models
are added there by training (issue 6); until then the list may be empty.
:class:`~mlpolar.models.fixed_charge.FixedChargeModel` is not a file: it is built from an MM
System with ``FixedChargeModel.from_system``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import List, Optional, Union

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
_SUFFIX = ".pt"
DEFAULT_NAME = "default"


def available() -> List[str]:
    """Names of the shipped models (files ``shipped/<name>.pt``), sorted."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name[:-len(_SUFFIX)] for p in SHIPPED_DIR.iterdir() if p.name.endswith(_SUFFIX) and p.is_file())


def default_name() -> str:
    """The shipped model meant by "default": the one named so, else the only one shipped; a clear
    error while none (or several, none named "default") is shipped."""
    names = available()
    if DEFAULT_NAME in names:
        return DEFAULT_NAME
    if len(names) == 1:
        return names[0]
    if not names:
        raise FileNotFoundError(
            f"no shipped mlpolar model: {SHIPPED_DIR} holds no <name>.pt yet (the trained model "
            "is added there by training). Pass a file written by mlpolar.model.save_model (on "
            "the command line --model PATH), or the MM charges as a model (--model "
            "fixed-charge), or --mm-only")
    raise ValueError(f"several shipped models {names} and none named {DEFAULT_NAME!r}; choose "
                     "one by name (on the command line --model NAME)")


def model_path(name_or_path: Union[str, os.PathLike]) -> Path:
    """The file of a shipped model name ("default" included), or the given path if it is a
    file."""
    s = str(name_or_path)
    if s == DEFAULT_NAME and not Path(s).is_file():
        s = default_name()
    if s in available():
        return SHIPPED_DIR / (s + _SUFFIX)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    names = ", ".join(available()) or "none shipped yet"
    raise ValueError(f"model {s!r} is neither a shipped model name ({names}) nor an existing file; "
                     "pass a path written by mlpolar.model.save_model")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                   for n in z.namelist())


def load_model(name_or_path: Union[str, os.PathLike], map_location: Optional[str] = None):
    """Load a shipped model by name or a model file by path (mlpolar.model.load_model's format, or
    a TorchScript archive)."""
    path = model_path(name_or_path)
    try:
        from ..model import load_model as _load
    except ImportError as e:
        _load, why = None, e
    if _load is not None:
        try:
            return _load(str(path), map_location=map_location)
        except (ValueError, RuntimeError):
            if not _is_torchscript(path):
                raise
    elif not _is_torchscript(path):
        raise RuntimeError(f"loading {path} needs mlpolar.model (the MLPolar model package), which could not be "
                           f"imported: {why}")
    import torch
    return torch.jit.load(str(path), map_location=map_location)


__all__ = ["available", "default_name", "load_model", "model_path", "DEFAULT_NAME", "SHIPPED_DIR"]
