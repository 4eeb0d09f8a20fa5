"""Label configurations of an MD trajectory with QM/MM single points, in parallel through Dask,
into an append-only HDF5 store; finished configurations are skipped, failed ones retried.

    python -m mlpolar.data.generate --config CONFIG.json|yaml [--workers N]
        [--scheduler tcp://host:8786] [--max-new K] [--indices 0:100] [--n-frames N]

Config keys (JSON or YAML; paths relative to the working directory):

``system``        name for :func:`mlpolar.data.systems.prepare_system` (required)
``system_kwargs`` extra keyword arguments for it (e.g. ``{"box_edge_nm": 3.6}``)
``cache_dir``     prepared-system cache (default data/systems)
``trajectory``    HDF5 trajectory written by :func:`mlpolar.data.sampling.sample` (required)
``sample``        optional keyword arguments of :func:`mlpolar.data.sampling.sample` (``n_frames``,
                  ``stride``, ``seed``, ``equilibration_steps``, ``threads``, ``timestep_ps``,
                  ``hydrogen_mass_amu``, ``flexible_ligand``, ``restart``):
                  run / resume the MD first (resumable; with ``restart``, a portable restart
                  state to commit next to the store lets a new checkout continue the trajectory)
``output``        label store path (required)
``indices``       frames to label: list, "start:stop[:step]", or null = all frames
``radius_nm``     MM charge selection radius (default 1.2)
``level``         :class:`mlpolar.data.qmmm.Level` fields (default B3LYP-D3(BJ)/def2-SVP, DF)
``qm_charge``, ``qm_spin``  of the QM region (default 0, 0)
``workers``, ``threads_per_worker``, ``scheduler`` (address; default a LocalCluster),
``retries`` (default 2), ``max_new`` (stop after this many new configurations)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .qmmm import Level, label_configuration
from .sampling import first_frame, n_frames as traj_n_frames, read_frame, sample
from .store import LabelStore
from .systems import prepare_system

DEFAULTS = dict(cache_dir=None, system_kwargs={}, sample=None, indices=None, radius_nm=1.2,
                level=None, qm_charge=0, qm_spin=0, workers=1, threads_per_worker=1,
                scheduler=None, retries=2, max_new=None, progress=True)
REQUIRED_KEYS = ("system", "trajectory", "output")


def load_config(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        cfg = dict(path_or_dict)
    else:
        p = Path(path_or_dict)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml
            cfg = yaml.safe_load(text)
        elif p.suffix == ".json":
            cfg = json.loads(text)
        else:
            raise ValueError(f"config {p}: use a .json, .yaml or .yml file")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"config lacks required keys {missing} (need {list(REQUIRED_KEYS)})")
    unknown = set(cfg) - set(DEFAULTS) - set(REQUIRED_KEYS)
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}; allowed: "
                         f"{sorted(set(DEFAULTS) | set(REQUIRED_KEYS))}")
    out = {**DEFAULTS, **cfg}
    out["level"] = Level.from_dict(out["level"])
    return out


def parse_indices(spec, n: int) -> list[int]:
    if spec is None:
        return list(range(n))
    if isinstance(spec, str):
        parts = spec.split(":")
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"indices={spec!r}: use 'start:stop[:step]' or a list of ints")
        vals = [int(x) if x else None for x in parts]
        idx = list(range(n))[slice(*vals)] if len(parts) > 1 else [vals[0]]
    else:
        idx = [int(i) for i in spec]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"indices {bad[:5]} out of range: the trajectory has {n} frames")
    return idx


def _task(index, positions, box, charges, qm_indices, atomic_numbers, residue_of_atom,
          radius_nm, level_dict, qm_charge, qm_spin, threads):
    """Runs on a Dask worker: one configuration -> result dict (numpy arrays)."""
    from pyscf import lib
    lib.num_threads(int(threads))
    t0 = time.time()
    res = label_configuration(positions, box, charges, qm_indices, atomic_numbers,
                              residue_of_atom, radius_nm=radius_nm,
                              level=Level.from_dict(level_dict), qm_charge=qm_charge,
                              qm_spin=qm_spin)
    res["box"] = box
    res["host"] = os.uname().nodename
    res["task_wall_s"] = time.time() - t0
    return index, res


def run(config, *, client=None, log=print) -> dict:
    """Run (or resume) labelling per ``config`` (path or dict). Returns a summary dict:
    n_done_before, n_new, n_failed, failed (index -> error), seconds_per_config."""
    cfg = load_config(config)
    level: Level = cfg["level"]
    prep = prepare_system(cfg["system"], cfg["cache_dir"], **cfg["system_kwargs"])
    traj = Path(cfg["trajectory"])
    if cfg["sample"]:
        s = dict(cfg["sample"])
        sample(prep, traj, progress=cfg["progress"], **s)
    if not traj.exists():
        raise FileNotFoundError(f"trajectory {traj} does not exist; give a 'sample' section or "
                                "run mlpolar.data.sampling.sample first")
    nf = traj_n_frames(traj)
    wanted = parse_indices(cfg["indices"], nf)
    atoms = list(prep.topology.atoms())
    z = np.array([a.element.atomic_number for a in atoms], dtype=np.int64)
    resid = np.array([a.residue.index for a in atoms], dtype=np.int64)
    charges = prep.charges()
    meta = dict(level_description=level.describe(), radius_nm=float(cfg["radius_nm"]),
                trajectory=str(traj), qm_charge=int(cfg["qm_charge"]),
                qm_spin=int(cfg["qm_spin"]),
                hirshfeld_scheme="Hirshfeld; free atoms: spherically averaged fractional-"
                                 "occupation HF atoms in the same basis (pyscf atom_hf); "
                                 "embedded density; Becke grid level "
                                 f"{level.hirshfeld_grid_level}",
                dipole_origin="centroid of the QM atom positions",
                energy_definition="PySCF QM/MM total energy: QM energy with embedded density + "
                                  "QM nuclei-MM + electrons-MM; no MM-MM; dispersion (if any) "
                                  "QM-only. energy_vacuum: same geometry without MM charges",
                mm_selection="whole residues with any atom within radius_nm of a QM atom, "
                             "image nearest the QM centroid")
    summary = dict(n_done_before=0, n_new=0, n_failed=0, failed={}, seconds_per_config=None)
    with LabelStore(cfg["output"], level=level.to_dict(), system=prep.name,
                    metadata=meta) as store:
        done = store.done_indices()
        first = first_frame(traj)        # frames before it came from an earlier trajectory file
        lost = [i for i in wanted if i < first and i not in done]
        if lost:
            log(f"[mlpolar.data.generate] {len(lost)} unlabelled frames before frame {first} are "
                "gone with an earlier trajectory file (this one continues its restart state); skipped")
        todo = [i for i in wanted if i not in done and i >= first]
        if cfg["max_new"] is not None:
            todo = todo[:int(cfg["max_new"])]
        summary["n_done_before"] = len(set(wanted) & done)
        log(f"[mlpolar.data.generate] {prep.name} at {level.describe()}: {len(wanted)} wanted, "
            f"{summary['n_done_before']} already done, {len(todo)} to run -> {cfg['output']}")
        if not todo:
            return summary
        own_cluster = None
        if client is None:
            from dask.distributed import Client, LocalCluster
            if cfg["scheduler"]:
                client = Client(cfg["scheduler"])
            else:
                own_cluster = LocalCluster(n_workers=int(cfg["workers"]), threads_per_worker=1,
                                           processes=True, dashboard_address=":0")
                client = Client(own_cluster)
        try:
            summary.update(_drive(client, cfg, store, todo, traj, prep, z, resid, charges,
                                  level, log))
        finally:
            if own_cluster is not None:
                client.close()
                own_cluster.close()
    return summary


def _drive(client, cfg, store, todo, traj, prep, z, resid, charges, level, log) -> dict:
    from dask.distributed import as_completed
    from tqdm import tqdm
    shared = client.scatter([charges, prep.ligand_indices, z, resid], broadcast=True)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})) or int(cfg["workers"]))
    window = 2 * n_workers
    pending = list(todo)
    failed, walls = {}, []

    def submit(i):
        pos, box = read_frame(traj, i)
        return client.submit(_task, i, pos, box, *shared, float(cfg["radius_nm"]),
                             level.to_dict(), int(cfg["qm_charge"]), int(cfg["qm_spin"]),
                             int(cfg["threads_per_worker"]), key=f"label-{Path(cfg['output']).name}-{i}-{time.time_ns()}",
                             retries=int(cfg["retries"]), pure=False)

    first = [submit(pending.pop(0)) for _ in range(min(window, len(pending)))]
    ac = as_completed(first)
    bar = tqdm(total=len(todo), desc="QM/MM labels", disable=not cfg["progress"])
    t_start = time.time()
    n_new = 0
    for fut in ac:
        if fut.status == "error":
            exc = fut.exception()
            idx = int(fut.key.split("-")[-2])
            failed[idx] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log(f"[mlpolar.data.generate] configuration {idx} failed after "
                f"{cfg['retries']} retries: {failed[idx]}")
        else:
            idx, res = fut.result()
            store.write(idx, res, attrs=dict(wall_s=float(res["wall_s"]),
                                             task_wall_s=float(res["task_wall_s"]),
                                             host=str(res["host"]),
                                             scf_cycles=int(res.get("scf_cycles", -1))))
            walls.append(float(res["wall_s"]))
            n_new += 1
        bar.update(1)
        fut.release()
        if pending:
            ac.add(submit(pending.pop(0)))
    bar.close()
    elapsed = time.time() - t_start
    spc = float(np.mean(walls)) if walls else None
    log(f"[mlpolar.data.generate] {n_new} new, {len(failed)} failed, "
        f"{elapsed:.1f} s elapsed, {spc if spc is None else round(spc, 2)} s per configuration "
        "(single-point wall time)")
    return dict(n_new=n_new, n_failed=len(failed), failed=failed, seconds_per_config=spc,
                elapsed_s=elapsed)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of `mlpolar generate` (and `python -m mlpolar.data.generate`)."""
    ap.add_argument("--config", required=True, help="JSON or YAML config (see module doc)")
    ap.add_argument("--workers", type=int, help="LocalCluster workers (overrides config)")
    ap.add_argument("--threads-per-worker", type=int, help="PySCF threads per worker")
    ap.add_argument("--scheduler", help="Dask scheduler address (instead of a LocalCluster)")
    ap.add_argument("--max-new", type=int, help="stop after this many new configurations")
    ap.add_argument("--indices", help="frames to label, 'start:stop[:step]'")
    ap.add_argument("--n-frames", type=int,
                    help="override sample.n_frames (extends the MD, then labels the new frames)")
    ap.add_argument("--no-progress", action="store_true")


def command(a: argparse.Namespace) -> int:
    cfg = load_config(a.config)
    cfg["level"] = cfg["level"].to_dict()
    for k, v in (("workers", a.workers), ("threads_per_worker", a.threads_per_worker),
                 ("scheduler", a.scheduler), ("max_new", a.max_new), ("indices", a.indices)):
        if v is not None:
            cfg[k] = v
    if a.n_frames is not None:
        if not cfg["sample"]:
            raise ValueError("--n-frames needs a 'sample' section in the config")
        cfg["sample"] = {**cfg["sample"], "n_frames": a.n_frames}
    if a.no_progress:
        cfg["progress"] = False
    s = run(cfg)
    print(json.dumps({k: v for k, v in s.items()}, indent=1, default=str))
    return 1 if s["n_failed"] else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlpolar.data.generate",
                                 description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return command(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
