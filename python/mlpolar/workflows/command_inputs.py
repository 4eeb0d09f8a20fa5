"""Command-line options shared by ``mlpolar md`` and ``mlpolar fe``: where the system comes from,
which atoms are ML, which model."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

from .inputs import SimulationInput, load_input, select_ml_atoms
from .ml_region import FIXED_CHARGE

DEFAULT_SYSTEM = "t4l99a_pxylene_water"
LIGAND_RESNAME = "TMP"


class UsageError(ValueError):
    """A wrong combination of command-line options (exit status 2)."""


def run_reporting_errors(name: str, run, args: argparse.Namespace) -> int:
    """Exit status of run(args); bad input (2) and run-time failures (1) become one-line messages."""
    try:
        return run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"mlpolar {name}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. a model file whose package is missing
        print(f"mlpolar {name}: error: {exc}", file=sys.stderr)
        return 1


def add_input_arguments(ap: argparse.ArgumentParser, *, prepared_default: Optional[str]) -> None:
    g = ap.add_argument_group("system (one kind; default: the shipped example)")
    g.add_argument("--system", metavar="NAME",
                   help="a prepared example system: t4l99a_pxylene_water or pxylene_water "
                        f"(default when no other input is given: {prepared_default})")
    g.add_argument("--prmtop", help="Amber topology (with --inpcrd)")
    g.add_argument("--inpcrd", help="Amber coordinates (with --prmtop)")
    g.add_argument("--system-xml", help="serialised OpenMM System (with --pdb)")
    g.add_argument("--pdb", help="PDB: topology and coordinates (with --system-xml or "
                                 "--forcefield)")
    g.add_argument("--forcefield", action="append", metavar="XML",
                   help="ForceField file for the PDB, repeatable (e.g. amber14-all.xml "
                        "amber14/tip3p.xml)")
    g.add_argument("--cache-dir", help="prepared-system cache (default data/systems)")
    m = ap.add_argument_group("ML region and model")
    m.add_argument("--ml-resname", help=f"residue name (default {LIGAND_RESNAME} for the "
                                        "example systems)")
    m.add_argument("--ml-indices", help="atom indices, e.g. 0-17,40,41 (0-based)")
    m.add_argument("--ml-selection", help="MDTraj selection string, e.g. \"resname TMP\"")
    m.add_argument("--charge", type=int, default=0, help="total charge of the ML region (e)")
    m.add_argument("--multiplicity", type=int, default=1, help="spin multiplicity 2S+1")
    m.add_argument("--model", help="shipped model name, model file, or 'fixed-charge' "
                                   "(MM charges as the model); default: the shipped model")
    m.add_argument("--ml-constraints", choices=("keep", "remove"), default="keep",
                   help="constraints between ML atoms (H-bond lengths): keep them (default; the "
                        "shipped models were trained on constrained MD) or remove them")


def parse_indices(spec: str) -> list:
    out = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError as exc:
        raise UsageError(f"--ml-indices {spec!r}: use comma-separated indices and ranges, "
                         "e.g. 0-17,40") from exc
    return out


def input_kind(a) -> str:
    given = [k for k in ("system", "prmtop", "inpcrd", "system_xml", "pdb", "forcefield")
             if getattr(a, k, None)]
    if "system" in given and len(given) > 1:
        raise UsageError("--system cannot be combined with --prmtop/--inpcrd/--system-xml/--pdb")
    return "prepared" if not given or "system" in given else "files"


def load_from_args(a, prepared_default: str) -> tuple[SimulationInput, Optional[np.ndarray], str]:
    """(input, ML atom indices or None, label) from the parsed options."""
    if input_kind(a) == "prepared":
        from mlpolar.data.systems import prepare_system
        name = a.system or prepared_default
        from mlpolar.data.systems import add_constrained_bond_terms
        prep = prepare_system(name, a.cache_dir)
        add_constrained_bond_terms(prep.system, prep.ligand_indices)   # see inputs._create_kwargs
        inp = SimulationInput(prep.topology, prep.system, prep.positions, prep.box_vectors)
        label = name
    else:
        inp = load_input(prmtop=a.prmtop, inpcrd=a.inpcrd, system_xml=a.system_xml, pdb=a.pdb,
                         forcefields=a.forcefield)
        label = "input"
    ml = ml_atoms_from_args(a, inp, default_resname=LIGAND_RESNAME
                            if input_kind(a) == "prepared" else None)
    return inp, ml, label


def ml_atoms_from_args(a, inp: SimulationInput, default_resname: Optional[str]):
    kw = dict(resname=a.ml_resname, selection=a.ml_selection,
              indices=parse_indices(a.ml_indices) if a.ml_indices else None)
    if all(v is None for v in kw.values()):
        if default_resname is None:
            return None
        kw["resname"] = default_resname
    return select_ml_atoms(inp.topology, **kw)


def check_model_early(a) -> None:
    """Fail before any long preparation if the model cannot be found."""
    from .ml_region import resolve_model
    if a.model != FIXED_CHARGE:
        resolve_model(a.model, check_only=True)
