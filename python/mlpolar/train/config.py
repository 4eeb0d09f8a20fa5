"""Training configuration: a YAML file, merged over :data:`DEFAULTS` and validated before any
work starts. Documented in docs/training.md."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

DEFAULTS = {
    "run_dir": None,            # checkpoints, log, split, plots (relative: to the config file)
    "seed": 0,
    "device": "cpu",            # "cpu", "cuda", "cuda:1"
    "dtype": "float64",         # float32 | float64
    "model": {
        "factory": "mlpolar.train.models:mlpolar",   # "module:callable"; called with **kwargs
        "kwargs": {},           # 'elements' and 'heads' are filled in from the data if absent
        "init": None,           # a training checkpoint, a model file or a shipped model name
                                # ("default"): a new run starts from its architecture, (EMA)
                                # weights and reference energies (fine-tuning)
        "override": {},         # with init: settings of the init's architecture to change that
                                # own no parameters (OVERRIDABLE), e.g. {mm_cutoff: 3.0}
    },
    "data": {
        "train": [],            # [{path, head, indices (list or 'a:b'), repeat}] (all but path optional)
        "test": [],             # separate held-out stores, same form (e.g. the pocket test set)
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},   # of the 'train' stores' configs
        "split_seed": None,     # default: seed
    },
    "training": {
        "epochs": 10,
        "batch_size": 4,        # configurations per optimiser step
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "min_lr": 1e-5},
        "ema_decay": 0.99,      # 0 disables the EMA
        "max_grad_norm": 10.0,  # None disables clipping
        # loss = Σ w_k · MSE_k; energy per atom (kJ/mol)², forces per component (kJ/mol/nm)²,
        # charges e², dipole (e nm)², interaction energy (embedded − vacuum) per atom (kJ/mol)²
        "loss_weights": {"energy": 1.0, "qm_forces": 0.01, "mm_forces": 0.01,
                         "charges": 0.0, "dipole": 0.0, "interaction": 0.0},
        "plots": True,          # parity plots of the final model on val and test
    },
}

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "exponential", "plateau")
LOSS_TERMS = ("energy", "qm_forces", "mm_forces", "charges", "dipole", "interaction")
# MLPolar settings a fine-tune may change: lengths of the MM embedding, which own no parameters
OVERRIDABLE = ("mm_cutoff", "mm_switch_width", "mm_ewald_cutoff")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise ValueError(f"unknown config key {where}{k!r}; allowed: {sorted(base)}")
        if isinstance(base[k], dict) and k not in ("kwargs", "override", "split", "optimizer",
                                                        "scheduler"):
            if not isinstance(v, dict):
                raise TypeError(f"config key {where}{k!r} must be a mapping, got {type(v).__name__}")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def load_config(path_or_dict) -> dict:
    """Read (YAML path or dict), merge over the defaults, validate, resolve relative paths."""
    base_dir = Path.cwd()
    if isinstance(path_or_dict, (str, os.PathLike)):
        p = Path(path_or_dict)
        if not p.exists():
            raise FileNotFoundError(f"training config {p} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
        base_dir = p.resolve().parent
    else:
        raw = path_or_dict
    if not isinstance(raw, dict):
        raise TypeError("the training config must be a mapping (YAML dictionary)")
    cfg = _merge(DEFAULTS, raw, "")
    validate(cfg)

    def res(x):
        return str(x) if Path(x).is_absolute() else str((base_dir / x).resolve())
    cfg["run_dir"] = res(cfg["run_dir"])
    init = cfg["model"]["init"]
    # a path relative to the config file, else a shipped model's name ("default") as it is
    if init is not None and (Path(init).is_absolute() or (base_dir / init).exists()
                             or not _is_shipped_name(init)):
        cfg["model"]["init"] = res(init)
    for part in ("train", "test"):
        cfg["data"][part] = [{**d, "path": res(d["path"])} for d in cfg["data"][part]]
    return cfg


def _is_shipped_name(name) -> bool:
    from ..models import DEFAULT_NAME, available
    return isinstance(name, str) and (name == DEFAULT_NAME or name in available())


def validate(cfg: dict) -> None:
    if not cfg["run_dir"]:
        raise ValueError("config needs 'run_dir' (where checkpoints, log and plots go)")
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype={cfg['dtype']!r}: use 'float32' or 'float64'")
    if not str(cfg["device"]).startswith(("cpu", "cuda")):
        raise ValueError(f"device={cfg['device']!r}: use 'cpu' or 'cuda[:N]'")
    if ":" not in str(cfg["model"]["factory"]):
        raise ValueError(f"model.factory={cfg['model']['factory']!r} must be 'module:callable'")
    init = cfg["model"]["init"]
    if init is not None:
        if not isinstance(init, (str, os.PathLike)):
            raise ValueError(f"model.init={init!r} must be the path of a training checkpoint or "
                             "model file, or a shipped model's name")
        if cfg["model"]["kwargs"]:
            raise ValueError("model.init and model.kwargs are both given: a run started from a "
                             "checkpoint has that checkpoint's architecture; remove model.kwargs")
    override = cfg["model"]["override"] or {}
    if not isinstance(override, dict):
        raise TypeError(f"model.override must be a mapping, got {type(override).__name__}")
    if override and init is None:
        raise ValueError("model.override changes a model.init checkpoint's settings; without "
                         "model.init put them in model.kwargs")
    for k, v in override.items():
        if k not in OVERRIDABLE:
            raise ValueError(f"model.override.{k}: only {list(OVERRIDABLE)} can change in a "
                             "fine-tune (they own no parameters); train a new model for others")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"model.override.{k}={v!r} must be a positive length in nm")
    d = cfg["data"]
    if not d["train"]:
        raise ValueError("data.train is empty: list the label stores to train on, e.g. "
                         "[{path: data/labels/pxylene_water.h5}]")
    for part in ("train", "test"):
        for e in d[part]:
            if not isinstance(e, dict) or "path" not in e:
                raise ValueError(f"each data.{part} entry must be a mapping with 'path' "
                                 f"(and optional 'head', 'indices'), got {e!r}")
            allowed = {"path", "head", "indices"} | ({"repeat"} if part == "train" else set())
            extra = set(e) - allowed
            if extra:
                raise ValueError(f"data.{part} entry {e['path']}: unknown keys {sorted(extra)} "
                                 f"(allowed: {sorted(allowed)})")
            rep = e.get("repeat", 1)
            if isinstance(rep, bool) or not isinstance(rep, int) or rep < 1:
                raise ValueError(f"data.train entry {e['path']}: repeat={rep!r} must be an "
                                 "integer >= 1 (how many times its training configurations "
                                 "appear per epoch)")
    sp = d["split"]
    if set(sp) - {"train", "val", "test"} or "train" not in sp or "val" not in sp:
        raise ValueError(f"data.split={sp}: give fractions for 'train', 'val' (and 'test')")
    if abs(sum(sp.values()) - 1) > 1e-9 or min(sp.values()) < 0:
        raise ValueError(f"data.split fractions {sp} must be >= 0 and sum to 1")
    t = cfg["training"]
    if int(t["epochs"]) < 1 or int(t["batch_size"]) < 1:
        raise ValueError("training.epochs and training.batch_size must be >= 1")
    if t["optimizer"].get("name") not in OPTIMIZERS:
        raise ValueError(f"training.optimizer.name must be one of {OPTIMIZERS}")
    if not float(t["optimizer"].get("lr", 0)) > 0:
        raise ValueError("training.optimizer.lr must be > 0")
    if t["scheduler"].get("name") not in SCHEDULERS:
        raise ValueError(f"training.scheduler.name must be one of {SCHEDULERS}")
    if not 0 <= float(t["ema_decay"]) < 1:
        raise ValueError(f"training.ema_decay={t['ema_decay']} must be in [0, 1)")
    w = t["loss_weights"]
    bad = set(w) - set(LOSS_TERMS)
    if bad:
        raise ValueError(f"training.loss_weights has unknown terms {sorted(bad)}; allowed "
                         f"{LOSS_TERMS}")
    if any(float(v) < 0 for v in w.values()) or not any(float(v) > 0 for v in w.values()):
        raise ValueError("training.loss_weights must be >= 0 with at least one > 0")


def select_indices(spec, done):
    """The finished indices ``done`` selected by ``spec``: None (all), a list of ints, or
    'start:stop[:step]' (a range of frame indices, open ends allowed)."""
    done = sorted(int(i) for i in done)
    if spec is None:
        return done
    if isinstance(spec, (list, tuple)):
        return sorted(int(i) for i in spec)
    if isinstance(spec, str) and spec.count(":") in (1, 2):
        parts = [int(p) if p.strip() else None for p in spec.split(":")]
        start, stop = parts[0] or 0, parts[1] if parts[1] is not None else float("inf")
        step = parts[2] if len(parts) == 3 and parts[2] else 1
        return [i for i in done if start <= i < stop and (i - start) % step == 0]
    raise ValueError(f"indices={spec!r}: give a list of ints or 'start:stop[:step]'")
