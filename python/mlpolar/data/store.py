"""Append-only HDF5 store of labelled QM/MM configurations (schema in docs/data.md).

Layout::

    /                     attrs: schema_version, units, level (JSON), level_description,
                                 system, code_versions (JSON), hirshfeld_scheme, dipole_origin,
                                 energy_definition, created, plus user metadata
    /configs/<key>/       one group per finished configuration, key = f"{index:08d}"
                          (index = frame index in the source trajectory); the group's attr
                          ``complete`` = 1 is written last

Writing a configuration: the group is created under a temporary name ``/staging/<key>``,
filled, flushed, then moved to ``/configs/<key>`` (an HDF5 link move) and flushed again. On
open, any leftover ``/staging`` groups (a run killed mid-write) are deleted, so a finished
configuration is either fully present or absent. Only one process writes (the Dask driver
collects results and writes them itself).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import h5py
import numpy as np

SCHEMA_VERSION = 1
UNITS = {"positions": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm", "charges": "e",
         "dipole": "e nm", "box": "nm", "time": "s"}

# name -> (expected ndim, dtype) for validation of what gets written
ARRAYS = {
    "qm_indices": (1, "i8"), "qm_atomic_numbers": (1, "i4"), "qm_positions": (2, "f8"),
    "mm_indices": (1, "i8"), "mm_positions": (2, "f8"), "mm_charges": (1, "f8"),
    "qm_forces": (2, "f8"), "mm_forces": (2, "f8"), "hirshfeld_charges": (1, "f8"),
    "dipole": (1, "f8"), "dipole_vacuum": (1, "f8"), "box": (2, "f8"),
}
SCALARS = ("energy", "energy_vacuum", "energy_dispersion")
REQUIRED = ("qm_positions", "qm_atomic_numbers", "mm_positions", "mm_charges", "energy",
            "qm_forces", "mm_forces")


def code_versions() -> dict:
    import importlib.metadata as md
    v = {"python": platform.python_version()}
    for pkg in ("pyscf", "pyscf-dispersion", "openmm", "numpy", "h5py", "dask"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    try:
        import subprocess
        v["mlpolar_git"] = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - git missing is fine
        v["mlpolar_git"] = None
    return v


class LabelStore:
    """Append-only store. ``LabelStore(path, level=..., system=...)`` creates or opens; opening
    an existing file with a different level raises (one level of theory per file)."""

    def __init__(self, path: str | os.PathLike, *, level: dict | None = None,
                 system: str | None = None, metadata: dict | None = None, mode: str = "a"):
        if mode not in ("a", "r"):
            raise ValueError(f"mode={mode!r}: use 'a' (append) or 'r' (read-only)")
        self.path = Path(path)
        if mode == "r" and not self.path.exists():
            raise FileNotFoundError(f"no label store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # readers do not take the HDF5 lock, so a live run can be monitored (best effort:
            # the writer flushes after every configuration); writers do, one per file
            self._f = (h5py.File(self.path, "r", locking=False) if mode == "r"
                       else h5py.File(self.path, "a"))
        except BlockingIOError as e:
            raise RuntimeError(f"{self.path} is open for writing by another process (one writer "
                               "per store); wait for it, or open with mode='r' to read") from e
        self.readonly = mode == "r"
        if self.readonly:
            return
        f = self._f
        if "staging" in f:  # a killed writer: drop partial groups
            del f["staging"]
        if "configs" not in f:
            f.create_group("configs")
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["units"] = json.dumps(UNITS)
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["code_versions"] = json.dumps(code_versions())
            if level is not None:
                f.attrs["level"] = json.dumps(level, sort_keys=True)
            if system is not None:
                f.attrs["system"] = system
            for k, val in (metadata or {}).items():
                f.attrs[k] = val if isinstance(val, (str, int, float)) else json.dumps(val)
        else:
            if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                raise ValueError(f"{self.path} has schema_version "
                                 f"{f.attrs.get('schema_version')}, this code writes "
                                 f"{SCHEMA_VERSION}; write to a new file")
            if level is not None and "level" in f.attrs and \
                    json.loads(f.attrs["level"]) != json.loads(json.dumps(level)):
                raise ValueError(f"{self.path} was written at level {f.attrs['level']}, not "
                                 f"{json.dumps(level, sort_keys=True)}; one level of theory per "
                                 "file: use another path")
            if system is not None and f.attrs.get("system", system) != system:
                raise ValueError(f"{self.path} holds system {f.attrs['system']!r}, not "
                                 f"{system!r}; use another path")
        f.flush()

    # -- context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._f.id.valid:
            self._f.close()

    @staticmethod
    def key(index: int) -> str:
        return f"{int(index):08d}"

    @property
    def attrs(self):
        return self._f.attrs

    def done_indices(self) -> set[int]:
        g = self._f.get("configs")
        if g is None:
            return set()
        return {int(k) for k, v in g.items() if v.attrs.get("complete", 0) == 1}

    def __len__(self):
        return len(self.done_indices())

    def __contains__(self, index: int) -> bool:
        return self.key(index) in self._f["configs"]

    def write(self, index: int, result: dict, attrs: dict | None = None) -> None:
        """Write one finished configuration atomically. ``result``: arrays named in
        :data:`ARRAYS`, scalars in :data:`SCALARS` (mlpolar units); ``attrs``: extra scalars
        (e.g. wall time)."""
        if self.readonly:
            raise PermissionError("store opened read-only (mode='r')")
        missing = [k for k in REQUIRED if k not in result]
        if missing:
            raise ValueError(f"result for index {index} lacks {missing}")
        k = self.key(index)
        if k in self._f["configs"]:
            raise ValueError(f"configuration {index} is already stored; the store is append-only")
        stage = self._f.require_group("staging")
        if k in stage:
            del stage[k]
        g = stage.create_group(k)
        for name, (ndim, dt) in ARRAYS.items():
            if name in result:
                a = np.asarray(result[name], dtype=dt)
                if a.ndim != ndim:
                    raise ValueError(f"result[{name!r}] must have {ndim} dimensions, got "
                                     f"shape {a.shape}")
                g.create_dataset(name, data=a)
        for name in SCALARS:
            if name in result:
                g.attrs[name] = float(result[name])
        g.attrs["index"] = int(index)
        for an, av in (attrs or {}).items():
            g.attrs[an] = av
        n_qm, n_mm = g["qm_positions"].shape[0], g["mm_positions"].shape[0]
        if g["qm_forces"].shape != (n_qm, 3) or g["mm_forces"].shape != (n_mm, 3) \
                or g["mm_charges"].shape != (n_mm,):
            del stage[k]
            raise ValueError(f"result for index {index}: inconsistent shapes (qm_forces must be "
                             f"({n_qm}, 3), mm_forces ({n_mm}, 3), mm_charges ({n_mm},))")
        g.attrs["complete"] = 1
        self._f.flush()
        self._f.move(f"staging/{k}", f"configs/{k}")
        del self._f["staging"]
        self._f.flush()

    def read(self, index: int) -> dict:
        g = self._f["configs"][self.key(index)]
        out = {name: g[name][()] for name in g}
        out.update({a: g.attrs[a] for a in g.attrs})
        return out

    def level(self) -> dict | None:
        s = self._f.attrs.get("level")
        return json.loads(s) if s is not None else None
