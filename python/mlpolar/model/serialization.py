"""One-file save/load of MLPolar models (eager or scripted).

The file is a TorchScript archive of the scripted model with an extra entry "mlpolar.json" that holds
the format version, the configuration (hyperparameters, elements, heads), the units and the eager
state dict's parameter names. Loading returns the scripted module; `load_model(..., eager=True)` rebuilds
the Python model from the configuration and the archive's weights (for training).
"""
import json
from pathlib import Path
from typing import Optional, Union

import torch

from .config import MLPolarConfig

FORMAT_VERSION = 1
UNITS = {"length": "nm", "energy": "kJ/mol", "charge": "e", "dipole": "e nm", "field": "kJ/mol/nm/e"}
_EXTRA = "mlpolar.json"


def save_model(model, path: Union[str, Path]) -> None:
    """Writes `model` (an MLPolar or its torch.jit.script) to one file at `path`."""
    from .mlpolar import MLPolar
    if isinstance(model, MLPolar):
        scripted = torch.jit.script(model)
    elif isinstance(model, torch.jit.ScriptModule) and hasattr(model, "config_json"):
        scripted = model
    else:
        raise TypeError(f"model must be an MLPolar or a scripted MLPolar, got {type(model).__name__}")
    meta = {"format": "mlpolar-model", "format_version": FORMAT_VERSION, "config": json.loads(scripted.config_json),
            "units": UNITS, "elements": list(scripted.elements), "heads": list(scripted.heads)}
    torch.jit.save(scripted, str(path), _extra_files={_EXTRA: json.dumps(meta)})


def read_metadata(path: Union[str, Path]) -> dict:
    """The JSON header of a model file (format version, config, units), without building the model."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no model file at {path}")
    extra = {_EXTRA: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:  # torch raises RuntimeError subclasses for damaged archives
        raise ValueError(f"{path} is not a readable MLPolar model file (corrupted or not a TorchScript archive): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return _parse_meta(path, extra[_EXTRA])


def _parse_meta(path: Path, text) -> dict:
    if isinstance(text, bytes):
        text = text.decode()
    if not text:
        raise ValueError(f"{path} has no {_EXTRA} header: it was not written by mlpolar.model.save_model")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the {_EXTRA} header is corrupted ({err})") from None
    if meta.get("format") != "mlpolar-model":
        raise ValueError(f"{path} is not an MLPolar model file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {meta.get('format_version')}, this mlpolar reads version "
                         f"{FORMAT_VERSION}; re-export it with the mlpolar version that wrote it")
    return meta


def load_model(path: Union[str, Path], map_location: Optional[Union[str, torch.device]] = None,
               eager: bool = False):
    """Loads a model file: the scripted module (default) or, with eager=True, an MLPolar with its weights."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no model file at {path}")
    extra = {_EXTRA: ""}
    try:
        scripted = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as err:
        raise ValueError(f"{path} is not a readable MLPolar model file (corrupted or not a TorchScript archive): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    meta = _parse_meta(path, extra[_EXTRA])
    if not eager:
        return scripted
    from .mlpolar import MLPolar
    model = MLPolar(MLPolarConfig(**meta["config"]))
    model.load_state_dict(scripted.state_dict())
    dtype = scripted.reference_energy.dtype
    return model.to(dtype=dtype, device=scripted.reference_energy.device)
