"""``mlpolar evaluate MODEL DATA...``: the issue's metrics and parity plots of a model on label
stores. MODEL is a training checkpoint (its EMA weights are used) or a file written by
``mlpolar.model.save_model``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .baseline import baseline_interaction_energies
from .dataset import check_mm_reach, load_store
from .metrics import compute_metrics, parity_plots
from .predict import predict


def evaluate_configs(model, configs, *, reference: Optional[Dict[str, torch.Tensor]] = None,
                     default_head: Optional[str] = None, baseline: bool = True,
                     plots_dir=None, prefix: str = "", title: str = "") -> dict:
    """Predictions of ``model`` on ``configs`` -> metrics dict (kcal/mol, kcal/mol/Å). The
    fixed-charge baseline is computed when the QM region is the openmmtools ligand."""
    pred = {k: [] for k in ("energy", "qm_forces", "mm_forces", "interaction_energy", "charges",
                            "dipole")}
    ref = {k: [] for k in ("energy", "qm_forces", "mm_forces", "interaction_energy", "charges",
                           "dipole", "qm_positions", "mm_positions")}
    for c in configs:
        head = c.head or default_head
        r = reference.get(head) if reference else None
        p = predict(model, c, head, reference=r, interaction=True)
        for k in pred:
            if k in p:
                pred[k].append(p[k].cpu().double().numpy())
        ref["energy"].append(float(c.energy))
        ref["interaction_energy"].append(float(c.energy - c.energy_vacuum))
        for k, v in (("qm_forces", c.qm_forces), ("mm_forces", c.mm_forces),
                     ("charges", c.charges), ("dipole", c.dipole),
                     ("qm_positions", c.positions), ("mm_positions", c.mm_positions)):
            ref[k].append(v.cpu().double().numpy())
    pred = {k: v for k, v in pred.items() if len(v) == len(configs)}
    base = None
    if baseline:
        try:
            base, _ = baseline_interaction_energies(configs)
        except ValueError:
            base = None   # not the openmmtools ligand: no AM1-BCC charges to compare with
    m = compute_metrics(pred, ref, base)
    if plots_dir is not None:
        m["plots"] = [str(p) for p in parity_plots(pred, ref, plots_dir, prefix, title, base)]
    return m


def load_for_evaluation(path, device="cpu", dtype=torch.float64):
    """(model, reference per head or None, default head) from a checkpoint, a saved model or a
    shipped model's name ("default")."""
    from ..models import DEFAULT_NAME, _is_torchscript, available, model_path
    if str(path) == DEFAULT_NAME or str(path) in available():
        path = model_path(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist (shipped models: {available()})")
    obj = None
    if not _is_torchscript(path):  # a shipped model is TorchScript: not a checkpoint
        try:
            obj = torch.load(path, map_location=device, weights_only=False)
        except Exception:  # noqa: BLE001 - not a torch.save pickle: try the model's own format
            obj = None
    if isinstance(obj, dict) and obj.get("format") == "mlpolar-train-checkpoint":
        from .trainer import model_from_checkpoint
        return model_from_checkpoint(obj, device=device, dtype=dtype)
    try:
        from ..model import load_model
    except ImportError as e:
        raise ValueError(f"{path} is not a training checkpoint and mlpolar.model (load_model) is "
                         "not available to read it") from e
    model = load_model(str(path), map_location=device).to(dtype=dtype)
    return model, None, model.heads[0]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", help="training checkpoint (.pt from 'mlpolar train'), saved model, or "
                    "a shipped model's name ('default')")
    ap.add_argument("data", nargs="*", help="label store(s) (HDF5, docs/data.md); with --split: "
                    "only these of the split's stores (default: all of them)")
    ap.add_argument("--indices", help="frames to evaluate, 'start:stop[:step]' (default: all)")
    ap.add_argument("--split", help="a training run's split.json (or a model's .split.json): "
                    "evaluate each store's --part of it, store by store")
    ap.add_argument("--part", default="test", help="with --split: train, val, test, or several "
                    "joined by '+' (e.g. val+test); stores held out whole count as test")
    ap.add_argument("--head", help="model head (default: the checkpoint's / the first)")
    ap.add_argument("--out", default="evaluation", help="folder for parity plots and metrics.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))


def split_selection(split_path, part: str, data: Sequence[str] = ()) -> list:
    """[(store path, indices)] of ``part`` ('test', 'val+test', ...) of a split.json, for the stores
    in ``data`` (matched by file name) or all of them. Paths in the split are absolute or relative
    to the working folder; a store held out whole ("test_file") counts as test."""
    parts = [p for p in str(part).split("+") if p]
    if not parts or any(p not in ("train", "val", "test") for p in parts):
        raise ValueError(f"--part {part!r}: use train, val, test or several joined by '+'")
    split_path = Path(split_path)
    if not split_path.is_file():
        raise FileNotFoundError(f"--split {split_path} does not exist; give a run's split.json")
    try:
        stores = json.loads(split_path.read_text())["stores"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--split {split_path} is not a split.json written by 'mlpolar train' "
                         f"({e})") from None
    wanted = {Path(d).name for d in data}
    out = []
    for st in stores:
        if wanted and Path(st["path"]).name not in wanted:
            continue
        if "test_file" in st:
            idx = sorted(st["test_file"]) if "test" in parts else []
        else:
            idx = sorted(i for p in parts for i in st.get(p, []))
        if idx:
            out.append((st["path"], idx))
    missing = wanted - {Path(p).name for p, _ in out}
    if missing:
        raise ValueError(f"--split {split_path} has no {part} configurations of {sorted(missing)}")
    return out


def command(a: argparse.Namespace) -> int:
    from ..data.store import LabelStore
    from .config import select_indices
    if a.split and a.indices:
        raise ValueError("--split and --indices both given: the split chooses the configurations")
    if not a.split and not a.data:
        raise ValueError("give label store(s) to evaluate, or --split SPLIT.json")
    selection = split_selection(a.split, a.part, a.data) if a.split else None
    dtype = getattr(torch, a.dtype)
    model, reference, head = load_for_evaluation(a.model, a.device, dtype)
    head = a.head or head
    if head not in list(model.heads):
        raise ValueError(f"--head {head!r} is not one of the model's heads {list(model.heads)}")
    out = Path(a.out)
    results = {}
    if selection is None:
        selection = []
        for path in a.data:
            with LabelStore(path, mode="r") as s:
                idx = select_indices(a.indices, s.done_indices())
            if not idx:
                raise ValueError(f"no configurations of {path} selected by --indices {a.indices!r}")
            selection.append((path, idx))
    for path, idx in selection:
        configs = [c.to(a.device, dtype) for c in load_store(path, idx, head=head)]
        check_mm_reach(model, configs, warn=True)   # figures of such a model are still wanted
        name = Path(path).stem
        m = evaluate_configs(model, configs, reference=reference, default_head=head,
                             plots_dir=out, prefix=f"{name}_", title=name)
        key = str(path) if str(path) not in results else f"{path} [{len(results) + 1}]"
        results[key] = m   # a store listed twice (split part and held out) keeps both entries
        print(f"{name}: {m['n_configurations']} configurations")
        for k, v in m.items():
            if k not in ("plots", "n_configurations"):
                print(f"  {k:36s} {v:.4g}" if isinstance(v, float) else f"  {k:36s} {v}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=1))
    print(f"metrics and parity plots in {out}")
    return 0
