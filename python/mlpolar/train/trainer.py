"""The training loop: losses, EMA, learning-rate schedule, validation, checkpoints, log.

One run lives in ``run_dir``:

* ``checkpoint.pt`` — written atomically after every epoch: model, EMA, optimiser, scheduler,
  RNG states (python, numpy, torch, CUDA), epoch, best validation loss, the split, the reference
  energies, the model spec and the config. A run started again in the same ``run_dir`` resumes
  from it and continues exactly as an uninterrupted run would (the batch order depends only on
  seed + epoch). The split and references come from the checkpoint, not from the stores, which
  may have grown since.
* ``best.pt`` — the checkpoint of the lowest validation loss (EMA weights).
* ``split.json``, ``log.csv`` (one row per epoch), ``metrics.json`` and ``plots/`` (parity
  plots of the final EMA model on the validation and test sets), ``model.pt`` when
  ``mlpolar.model.save_model`` is available.

Loss, averaged over the configurations of a batch:
    w_E ((E − E_ref)/n)² + w_F ⟨|F_QM − F_QM,ref|²⟩ + w_M ⟨|F_MM − F_MM,ref|²⟩
    + w_q ⟨(q − q_Hirshfeld)²⟩ + w_μ |μ − μ_ref|²
(⟨⟩: mean over atoms and components; units kJ/mol, kJ/mol/nm, e, e nm).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.store import LabelStore
from .config import DEFAULTS, LOSS_TERMS, load_config, select_indices
from .dataset import (batches, check_mm_reach, covering_mm_cutoff, load_store, save_split,
                      split_indices, store_info)
from .models import build_model
from .predict import predict
from .reference import fit_reference, install_reference

CHECKPOINT_FORMAT = "mlpolar-train-checkpoint"
REFERENCE_NAMES = ("reference_energy", "energy_ref")
LOG_FIELDS = (["epoch", "lr", "train_loss"] + [f"train_{k}" for k in LOSS_TERMS] +
              ["val_loss", "val_energy_mae_kcal", "val_qm_force_mae_kcal_A",
               "val_mm_force_mae_kcal_A", "val_interaction_mae_kcal", "wall_s"])


def head_name(level: Optional[dict]) -> str:
    """Default head of a store: its level of theory, e.g. 'b3lyp-d3bj/def2-svp'."""
    if not level:
        return "default"
    d = f"-{level['disp']}" if level.get("disp") else ""
    return f"{level['method']}{d}/{level['basis']}".lower()


def loss_terms(p: Dict[str, torch.Tensor], c) -> Dict[str, torch.Tensor]:
    t = {"energy": ((p["energy"] - c.energy) / c.n_atoms) ** 2,
         "qm_forces": ((p["qm_forces"] - c.qm_forces) ** 2).mean(),
         "mm_forces": ((p["mm_forces"] - c.mm_forces) ** 2).mean()}
    if "charges" in p:
        t["charges"] = ((p["charges"] - c.charges) ** 2).mean()
        t["dipole"] = ((p["dipole"] - c.dipole) ** 2).sum()
    if "interaction_energy" in p:
        # the ML-MM coupling on its own: the energy term alone leaves it to per-configuration
        # offsets (2026-11-23 preliminary run: interaction MAE 2.5x the fixed-charge baseline's)
        t["interaction"] = ((p["interaction_energy"] - (c.energy - c.energy_vacuum)) / c.n_atoms) ** 2
    return t


def _rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(),
         "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"].cpu())
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([x.cpu() for x in s["cuda"]])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_from_checkpoint(ckpt: dict, device="cpu", dtype=torch.float64, ema: bool = True):
    """(model with the checkpoint's (EMA) weights, reference per head or None, default head)."""
    model = build_model(ckpt["model_spec"]).to(device=device, dtype=dtype)
    state = ckpt["ema_model"] if (ema and ckpt.get("ema_model") is not None) else ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    ref = None
    if not ckpt["reference_in_model"]:
        ref = {h: torch.as_tensor(v, dtype=dtype, device=device)
               for h, v in ckpt["reference"].items()}
    return model, ref, ckpt["default_head"]


def _init_from_model_file(path) -> dict:
    """model.init from a save_model file: the architecture is its MLPolar configuration, the
    weights and the per-head reference energies (the energy zero) are its parameters."""
    from ..model.serialization import load_model, read_metadata
    meta = read_metadata(path)
    model = load_model(path, eager=True)
    ref = model.reference_energy.detach().to(torch.float64)
    return {"model_spec": {"factory": "mlpolar.train.models:mlpolar",
                           "kwargs": dict(meta["config"])},
            "model": model.state_dict(), "ema_model": None,
            "reference": {h: ref[k].tolist() for k, h in enumerate(model.heads)}}


class Trainer:
    """``Trainer(config).train()``; ``config``: a YAML path or dict (see :mod:`.config`)."""

    def __init__(self, config, *, epochs: Optional[int] = None):
        self.cfg = load_config(config)
        if epochs is not None:
            self.cfg["training"]["epochs"] = int(epochs)
        c, t = self.cfg, self.cfg["training"]
        self.run_dir = Path(c["run_dir"])
        self.device = torch.device(c["device"])
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={c['device']!r} but CUDA is not available here; use 'cpu'")
        self.dtype = getattr(torch, c["dtype"])
        ckpt_path = self.run_dir / "checkpoint.pt"
        ckpt = (torch.load(ckpt_path, map_location="cpu", weights_only=False)
                if ckpt_path.exists() else None)
        init = None if ckpt else self._read_init(c["model"]["init"])
        self.run_dir.mkdir(parents=True, exist_ok=True)

        self.split = ckpt["split"] if ckpt else self._make_split()
        self.data = self._load_data()
        self.default_head = self.data["train"][0].head
        if self.cfg["training"]["loss_weights"].get("charges", 0) or \
                self.cfg["training"]["loss_weights"].get("dipole", 0):
            self._needs_charges = True
        else:
            self._needs_charges = False

        torch.manual_seed(c["seed"])
        np.random.seed(c["seed"])
        random.seed(c["seed"])
        if ckpt:
            self.model_spec = ckpt["model_spec"]
        elif init:
            self.model_spec = copy.deepcopy(init["model_spec"])
            self.model_spec["kwargs"].update(c["model"]["override"] or {})
        else:
            kw = dict(c["model"]["kwargs"])
            kw.setdefault("elements", sorted({z for p in self.data.values() for x in p
                                              for z in x.species.tolist()}))
            kw.setdefault("heads", sorted({x.head for x in self.data["train"]}))
            if c["model"]["factory"] == DEFAULTS["model"]["factory"] and "mm_cutoff" not in kw:
                # the open-boundary MM cutoff that keeps every charge of every label at full weight
                from ..model import MLPolarConfig
                kw["mm_cutoff"] = covering_mm_cutoff(
                    [x for p in self.data.values() for x in p],
                    kw.get("mm_switch_width", MLPolarConfig.mm_switch_width))
            self.model_spec = {"factory": c["model"]["factory"], "kwargs": kw}
        self.model = build_model(self.model_spec).to(device=self.device, dtype=self.dtype)
        missing_heads = {x.head for x in self.data["train"]} - set(self.model.heads)
        if missing_heads:
            raise ValueError(f"heads {sorted(missing_heads)} of the data are not heads of the "
                             f"model {list(self.model.heads)}; add them to model.kwargs.heads")
        # before any work: a model that drops MM charges the labels hold cannot learn them
        check_mm_reach(self.model, [x for p in self.data.values() for x in p])
        if init:
            missing_z = {z for p in self.data.values() for x in p for z in x.species.tolist()} \
                - set(self.model.elements)
            if missing_z:
                raise ValueError(f"elements {sorted(missing_z)} of the data are not elements of "
                                 f"the model.init checkpoint ({list(self.model.elements)}); train "
                                 "a new model instead")
            self.model.load_state_dict(init["ema_model"] if init.get("ema_model") is not None
                                       else init["model"])

        # per-element reference energies, one fit per head on the training set
        if ckpt:
            self.reference = ckpt["reference"]
        else:
            # fine-tuning keeps the init's energy zero; a head it lacks is fitted
            self.reference = dict(init["reference"]) if init else {}
            for h in sorted({x.head for x in self.data["train"]} - set(self.reference)):
                self.reference[h] = fit_reference([x for x in self.data["train"] if x.head == h],
                                                  self.model.elements).tolist()
        self.reference_in_model = all(install_reference(self.model, h, v)
                                      for h, v in self.reference.items())
        self._ref_t = None if self.reference_in_model else {
            h: torch.as_tensor(v, dtype=self.dtype, device=self.device)
            for h, v in self.reference.items()}

        o = dict(t["optimizer"])
        name = o.pop("name")
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "sgd": torch.optim.SGD}[name]
        # no weight decay on the per-element reference energies (~1e4 kJ/mol, fitted above)
        ref_p = [p for n, p in self.model.named_parameters() if n.split(".")[-1] in REFERENCE_NAMES]
        rest = [p for n, p in self.model.named_parameters()
                if n.split(".")[-1] not in REFERENCE_NAMES]
        groups = [{"params": rest}] + ([{"params": ref_p, "weight_decay": 0.0}] if ref_p else [])
        self.optimizer = opt_cls(groups, **o)
        self.scheduler = self._make_scheduler(t["scheduler"], int(t["epochs"]))
        decay = float(t["ema_decay"])
        # EMA of the parameters; buffers (reference energies, lookup tables) are copied as they
        # are, since they need not be floating point
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                  use_buffers=False) if decay > 0 else None)
        self.epoch = 0
        self.best_val = math.inf
        if ckpt:
            self._restore(ckpt)
        else:
            save_split(self.run_dir / "split.json", self.split)
            self._truncate_log()

    @staticmethod
    def _read_init(path) -> Optional[dict]:
        """What model.init names, as a checkpoint dict (read for a new run only; a resumed run
        has its weights in its own checkpoint): a training checkpoint (checkpoint.pt, best.pt),
        or a model file written by save_model / a shipped model's name, whose architecture,
        weights and reference energies are all in the file."""
        if path is None:
            return None
        from ..models import DEFAULT_NAME, available, model_path
        if str(path) == DEFAULT_NAME or str(path) in available():
            path = model_path(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.init={path} does not exist; give a checkpoint.pt or "
                                    "best.pt written by 'mlpolar train', a model file, or a "
                                    f"shipped model's name ({available()})")
        from ..models import _is_torchscript
        if _is_torchscript(Path(path)):
            try:
                return _init_from_model_file(path)
            except ValueError as e:
                raise ValueError(f"model.init={path}: {e}") from None
        try:
            init = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - an HDF5 store or another file
            raise ValueError(f"model.init={path} is not a training checkpoint or model file "
                             f"({e}); give a checkpoint.pt or best.pt written by 'mlpolar "
                             "train', or a model file written by save_model") from None
        if not isinstance(init, dict) or init.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"model.init={path} is not a training checkpoint or model file; give "
                             "a checkpoint.pt or best.pt written by 'mlpolar train', or a model "
                             "file written by save_model")
        return init

    # ------------------------------------------------------------------ data
    def _make_split(self) -> dict:
        d = self.cfg["data"]
        seed = d["split_seed"] if d["split_seed"] is not None else self.cfg["seed"]
        split = {"seed": seed, "fractions": d["split"], "stores": []}
        for e in d["train"]:
            info = store_info(e["path"])
            with LabelStore(e["path"], mode="r") as s:
                idx = select_indices(e.get("indices"), s.done_indices())
            parts = split_indices(idx, d["split"], seed)
            split["stores"].append({"path": e["path"],
                                    "head": e.get("head") or head_name(info["level"]),
                                    "level": info["level"], "system": info["system"],
                                    "repeat": int(e.get("repeat", 1)), **parts})
        for e in d["test"]:
            info = store_info(e["path"])
            with LabelStore(e["path"], mode="r") as s:
                idx = select_indices(e.get("indices"), s.done_indices())
            split["stores"].append({"path": e["path"],
                                    "head": e.get("head") or head_name(info["level"]),
                                    "level": info["level"], "system": info["system"],
                                    "test_file": idx})
        return split

    def _load_data(self) -> Dict[str, list]:
        data = {"train": [], "val": [], "test": [], "test_file": []}
        for s in self.split["stores"]:
            for part in data:
                if s.get(part):
                    xs = [x.to(self.device, self.dtype)
                          for x in load_store(s["path"], s[part], head=s["head"])]
                    # a small store of an under-represented environment (the pocket next to a
                    # large water set) is weighted by repeating its training configurations
                    data[part] += xs * (int(s.get("repeat", 1)) if part == "train" else 1)
        if not data["train"] or not data["val"]:
            raise ValueError(f"the split leaves {len(data['train'])} training and "
                             f"{len(data['val'])} validation configurations; both need at least "
                             "one (more data or other data.split fractions)")
        return data

    # ------------------------------------------------------------------ pieces
    def _make_scheduler(self, s: dict, epochs: int):
        s = dict(s)
        name = s.pop("name")
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=epochs, eta_min=float(s.get("min_lr", 0.0)))
        if name == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(self.optimizer,
                                                          gamma=float(s.get("gamma", 0.95)))
        if name == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=float(s.get("factor", 0.5)),
                patience=int(s.get("patience", 5)), min_lr=float(s.get("min_lr", 0.0)))
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: 1.0)

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def _ref(self, head):
        return None if self._ref_t is None else self._ref_t[head]

    def batch_loss(self, model, batch, create_graph: bool):
        w = self.cfg["training"]["loss_weights"]
        total, parts = 0.0, {k: 0.0 for k in LOSS_TERMS}
        want_int = float(w.get("interaction", 0)) > 0
        for c in batch:
            p = predict(model, c, c.head, reference=self._ref(c.head), create_graph=create_graph,
                        interaction=want_int)
            if self._needs_charges and "charges" not in p:
                raise ValueError("loss_weights on charges/dipole are > 0 but the model returns "
                                 "no 'charges'; set those weights to 0")
            terms = loss_terms(p, c)
            for k, v in terms.items():
                if float(w.get(k, 0)) > 0:
                    total = total + float(w[k]) * v / len(batch)
                parts[k] += float(v.detach()) / len(batch)
        return total, parts

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        t = self.cfg["training"]
        self.model.train()
        sums, n = {k: 0.0 for k in ["loss", *LOSS_TERMS]}, 0
        for batch in batches(self.data["train"], int(t["batch_size"]), shuffle=True,
                             seed=self.cfg["seed"] * 100003 + self.epoch):
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = self.batch_loss(self.model, batch, create_graph=True)
            loss.backward()
            if t["max_grad_norm"] is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t["max_grad_norm"]))
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
                with torch.no_grad():
                    for b_ema, b in zip(self.ema.module.buffers(), self.model.buffers()):
                        b_ema.copy_(b)
            sums["loss"] += float(loss.detach()) * len(batch)
            for k in LOSS_TERMS:
                sums[k] += parts[k] * len(batch)
            n += len(batch)
        return {k: v / n for k, v in sums.items()}

    def validate(self) -> dict:
        from .metrics import compute_metrics
        w = self.cfg["training"]["loss_weights"]
        model = self.eval_model
        model.eval()
        loss = 0.0
        pred = {"energy": [], "qm_forces": [], "mm_forces": [], "interaction_energy": []}
        ref = {"energy": [], "qm_forces": [], "mm_forces": [], "qm_positions": [],
               "mm_positions": [], "interaction_energy": []}
        for c in self.data["val"]:
            p = predict(model, c, c.head, reference=self._ref(c.head), interaction=True)
            terms = loss_terms(p, c)
            loss += sum(float(w[k]) * float(v) for k, v in terms.items()
                        if float(w.get(k, 0)) > 0) / len(self.data["val"])
            for k in pred:
                pred[k].append(p[k].cpu().double().numpy())
            ref["energy"].append(float(c.energy))
            ref["interaction_energy"].append(float(c.energy - c.energy_vacuum))
            for k, v in (("qm_forces", c.qm_forces), ("mm_forces", c.mm_forces),
                         ("qm_positions", c.positions), ("mm_positions", c.mm_positions)):
                ref[k].append(v.cpu().double().numpy())
        return {"loss": loss, **compute_metrics(pred, ref)}

    def train(self, stop_after: Optional[int] = None, on_epoch=None) -> List[dict]:
        """Run the remaining epochs, checkpointing after each; ``stop_after``: at most this many
        epochs in this call (a time-limited job; the next call resumes); ``on_epoch(row)`` is
        called with each epoch's log row once its checkpoint is written."""
        epochs = int(self.cfg["training"]["epochs"])
        history = []
        while self.epoch < epochs and (stop_after is None or len(history) < stop_after):
            t0 = time.time()
            lr = self.optimizer.param_groups[0]["lr"]
            tr = self.train_epoch()
            va = self.validate()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(va["loss"])
            else:
                self.scheduler.step()
            self.epoch += 1
            row = {"epoch": self.epoch, "lr": lr, "train_loss": tr["loss"],
                   **{f"train_{k}": tr[k] for k in LOSS_TERMS}, "val_loss": va["loss"],
                   "val_energy_mae_kcal": va["energy_mae_kcal"],
                   "val_qm_force_mae_kcal_A": va["qm_force_mae_kcal_A"],
                   "val_mm_force_mae_kcal_A": va["mm_force_mae_kcal_A"],
                   "val_interaction_mae_kcal": va["interaction_mae_kcal"],
                   "wall_s": time.time() - t0}
            self._append_log(row)
            history.append(row)
            improved = va["loss"] < self.best_val
            if improved:
                self.best_val = va["loss"]
            ckpt = self.checkpoint()
            _atomic_save(ckpt, self.run_dir / "checkpoint.pt")
            if improved:
                _atomic_save(ckpt, self.run_dir / "best.pt")
            if on_epoch is not None:
                on_epoch(row)
        return history

    def finish(self, plots: Optional[bool] = None) -> dict:
        """Metrics of the final EMA model on val, test and the separate test stores (with the
        fixed-charge baseline), parity plots, ``metrics.json`` and ``model.pt``."""
        from .evaluate import evaluate_configs
        plots = self.cfg["training"]["plots"] if plots is None else plots
        model = self.eval_model
        model.eval()
        out = {}
        for part in ("val", "test", "test_file"):
            if self.data[part]:
                out[part] = evaluate_configs(
                    model, self.data[part], reference=self._ref_t, default_head=self.default_head,
                    plots_dir=(self.run_dir / "plots") if plots else None, prefix=f"{part}_",
                    title=part)
        out["epoch"] = self.epoch
        (self.run_dir / "metrics.json").write_text(json.dumps(out, indent=1))
        try:
            from ..model import MLPolar, save_model
        except ImportError:   # a checkout without the model: the checkpoint is the model
            MLPolar = save_model = None
        if MLPolar is not None and isinstance(model, MLPolar) and self.reference_in_model:
            save_model(model, str(self.run_dir / "model.pt"))
        return out

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": 1, "epoch": self.epoch,
                "model_spec": self.model_spec, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "ema_model": self.eval_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                "best_val": self.best_val, "split": self.split, "reference": self.reference,
                "reference_in_model": self.reference_in_model,
                "default_head": self.default_head, "config": self.cfg}

    def _restore(self, ckpt: dict) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.run_dir / 'checkpoint.pt'} is not an mlpolar training "
                             "checkpoint; use another run_dir")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # training.epochs raised on resume: the cosine stretches over the new total
            self.scheduler.T_max = int(self.cfg["training"]["epochs"])
        _set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.best_val = float(ckpt["best_val"])
        self._truncate_log(self.epoch)

    def _truncate_log(self, keep_epochs: int = 0) -> None:
        """Drop log rows after the checkpoint (a run killed mid-epoch wrote none, but one killed
        between the log and the checkpoint may have)."""
        path = self.run_dir / "log.csv"
        rows = []
        if path.exists() and keep_epochs > 0:
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def _append_log(self, row: dict) -> None:
        with open(self.run_dir / "log.csv", "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
