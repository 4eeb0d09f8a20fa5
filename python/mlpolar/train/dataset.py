"""Label stores (docs/data.md) read into per-configuration tensors, seeded splits, batches.

A configuration keeps its own MM environment (the label's selection of whole residues within
the store's radius, imaged around the QM region), so configurations differ in MM count and a
batch is simply a list of them. Units as in the store: nm, kJ/mol, kJ/mol/nm, e, e nm.

The labels are QM/MM energies of the QM region in the *non-periodic* field of the selected point
charges (PySCF ``mm_charge``), so the box is kept for reference only and the model is evaluated
with ``box=None`` on exactly those charges (see :mod:`mlpolar.train.predict`).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..data.store import LabelStore


@dataclass
class Configuration:
    """One labelled QM/MM configuration (tensors on one device, float dtype of the caller)."""
    species: torch.Tensor          # [n] int64 atomic numbers
    positions: torch.Tensor        # [n, 3] nm
    mm_positions: torch.Tensor     # [m, 3] nm
    mm_charges: torch.Tensor       # [m] e
    box: torch.Tensor              # [3, 3] nm (of the MD cell; not used by the labels)
    energy: torch.Tensor           # [] kJ/mol, QM/MM total energy without MM-MM
    energy_vacuum: torch.Tensor    # [] kJ/mol, same geometry without MM charges
    qm_forces: torch.Tensor        # [n, 3] kJ/mol/nm
    mm_forces: torch.Tensor        # [m, 3] kJ/mol/nm
    charges: torch.Tensor          # [n] e, Hirshfeld
    dipole: torch.Tensor           # [3] e nm, origin = centroid of the QM positions
    total_charge: float = 0.0      # e of the QM region
    multiplicity: int = 1          # 2S+1
    qm_indices: Optional[np.ndarray] = None   # atom indices in the prepared system
    source: str = ""               # store path
    index: int = -1                # frame index in the store
    head: Optional[str] = None     # level-of-theory head this configuration trains

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])

    @property
    def key(self) -> str:
        return f"{self.source}:{self.index}"

    def to(self, device=None, dtype=None) -> "Configuration":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype and v.is_floating_point()) else None)
            kw[f.name] = v
        return Configuration(**kw)


def load_store(path: str | os.PathLike, indices: Optional[Sequence[int]] = None, *,
               dtype: torch.dtype = torch.float64, head: Optional[str] = None) -> List[Configuration]:
    """Read configurations of one label store (all finished ones, or ``indices``), sorted by
    index. The file is opened read-only without the HDF5 lock: read a *copy* of a store that a
    live run is appending to."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label store {path} does not exist; pass the path of an HDF5 "
                                "file written by mlpolar.data (docs/data.md)")
    with LabelStore(path, mode="r") as s:
        done = sorted(s.done_indices())
        if indices is None:
            indices = done
        missing = sorted(set(int(i) for i in indices) - set(done))
        if missing:
            raise ValueError(f"indices {missing[:10]} are not finished configurations of {path}; "
                             f"it holds {len(done)} (indices {done[:3]}...)")
        qm_charge = float(s.attrs.get("qm_charge", 0))
        mult = int(s.attrs.get("qm_spin", 0)) + 1
        out = []
        for i in sorted(int(i) for i in indices):
            r = s.read(i)
            t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
            out.append(Configuration(
                species=torch.as_tensor(r["qm_atomic_numbers"].astype(np.int64)),
                positions=t(r["qm_positions"]), mm_positions=t(r["mm_positions"]),
                mm_charges=t(r["mm_charges"]), box=t(r["box"]),
                energy=t(r["energy"]), energy_vacuum=t(r["energy_vacuum"]),
                qm_forces=t(r["qm_forces"]), mm_forces=t(r["mm_forces"]),
                charges=t(r["hirshfeld_charges"]), dipole=t(r["dipole"]),
                total_charge=qm_charge, multiplicity=mult,
                qm_indices=np.asarray(r.get("qm_indices")) if "qm_indices" in r else None,
                source=str(path), index=i, head=head))
    return out


def store_info(path: str | os.PathLike) -> dict:
    """Level of theory, system and size of a label store (for run records and model cards)."""
    with LabelStore(path, mode="r") as s:
        return {"path": str(path), "system": s.attrs.get("system"), "level": s.level(),
                "level_description": s.attrs.get("level_description"),
                "n_configurations": len(s.done_indices())}


def split_indices(indices: Sequence[int], fractions: Dict[str, float], seed: int) -> Dict[str, List[int]]:
    """Split configuration indices at random (seeded) into named parts. ``fractions`` maps part
    name -> fraction; the fractions must sum to 1. Rounding goes to the first part, so every part
    with a positive fraction gets at least one configuration when there are enough."""
    idx = sorted(int(i) for i in indices)
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions {fractions} must be >= 0 and sum to 1")
    names = list(fractions)
    counts = {k: int(np.floor(fractions[k] * len(idx))) for k in names}
    for k in names[1:]:
        if fractions[k] > 0 and counts[k] == 0 and len(idx) > len(names):
            counts[k] = 1
    counts[names[0]] = len(idx) - sum(counts[k] for k in names[1:])
    if counts[names[0]] < 1:
        raise ValueError(f"{len(idx)} configurations are too few to split as {fractions}")
    perm = np.random.default_rng(seed).permutation(len(idx))
    out, start = {}, 0
    for k in names:
        out[k] = sorted(idx[j] for j in perm[start:start + counts[k]])
        start += counts[k]
    return out


def batches(configs: Sequence[Configuration], batch_size: int, *, shuffle: bool,
            seed: int = 0) -> Iterator[List[Configuration]]:
    """Lists of configurations. The shuffle depends only on ``seed`` (the trainer passes
    seed + epoch), so a resumed run sees the same order as an uninterrupted one."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    order = np.arange(len(configs))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(configs))
    for s in range(0, len(order), batch_size):
        yield [configs[j] for j in order[s:s + batch_size]]


def save_split(path: str | os.PathLike, split: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(split, indent=1))
    os.replace(tmp, path)


def mm_reach(c: Configuration) -> float:
    """Largest distance (nm) between a QM atom and an MM charge of the configuration."""
    if c.mm_positions.shape[0] == 0:
        return 0.0
    return float(torch.cdist(c.positions.double(), c.mm_positions.double()).max())


def _covering(reach: float, switch_width: float) -> float:
    # the next 0.1 nm step with the farthest charge at least 0.05 nm inside the switch
    return math.ceil((reach + float(switch_width) + 0.05) * 10.0 - 1e-9) / 10.0


def covering_mm_cutoff(configs: Sequence[Configuration], switch_width: float) -> float:
    """The smallest open-boundary MM cutoff, in steps of 0.1 nm, that keeps every MM charge of
    ``configs`` at full weight for every QM atom (at least 0.05 nm inside the switch)."""
    return _covering(max((mm_reach(c) for c in configs), default=0.0), switch_width)


def check_mm_reach(model, configs: Sequence[Configuration], *, warn: bool = False) -> None:
    """Refuse (or with ``warn``, warn about) labels whose MM charges reach beyond the model's
    open-boundary MM cutoff minus its switch, from any QM atom.

    The model switches the MM potential off pair by pair. A charge it drops for some QM atoms and
    not for others turns the uniform part of the potential of a distant charged residue, which a
    neutral molecule does not feel, into a spurious dipole term: in the T4L99A pocket labels
    (charges up to 2.58 nm from the ligand) a 2.5 nm cutoff moved the fixed-charge interaction
    energy by -0.44 +- 0.35 kcal/mol, more than the spread of the labels themselves. Models
    without ``mm_cutoff`` and ``mm_switch_width`` attributes (that cut nothing) pass."""
    cutoff = getattr(model, "mm_cutoff", None)
    switch = getattr(model, "mm_switch_width", None)
    if cutoff is None or switch is None:   # a model that does not cut the MM potential itself
        return
    full = float(cutoff) - float(switch)
    worst, where = 0.0, None
    for c in configs:
        r = mm_reach(c)
        if r > worst:
            worst, where = r, c
    if worst <= full:
        return
    msg = (f"configuration {where.index} of {where.source} has an MM charge {worst:.3f} nm from a "
           f"QM atom, beyond the model's mm_cutoff - mm_switch_width = {full:.3f} nm: the model "
           "drops charges the label holds. Use mm_cutoff >= "
           f"{_covering(worst, switch):.1f} nm (model.kwargs."
           "mm_cutoff, or leave it out there and the trainer picks one that covers the labels; "
           "model.override.mm_cutoff when fine-tuning from model.init)")
    if warn:
        warnings.warn(msg, stacklevel=2)
    else:
        raise ValueError(msg)
