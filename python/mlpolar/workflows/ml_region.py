"""From an MM System and an ML region to the ML/MM System the workflows run.

The model is chosen by name:

* a shipped model name (``mlpolar.models.available()``) or a model file path
  (``mlpolar.load_model``);
* ``"fixed-charge"``: the MM force field's own description of the ML region behind the model
  interface (:class:`mlpolar.models.fixed_charge.FixedChargeModel`); a mixed System with it
  reproduces the MM energy, so it is the baseline and the plumbing check of ML/MM runs;
* ``None`` or ``"default"``: the default shipped model (the one named ``default``, or the only
  one shipped).

The mixed System comes from :func:`mlpolar.openmm.create_mixed_system`; with
``interpolate=True`` it carries ``lambda_interpolate`` (0 = MM, 1 = ML/MM), which MD sets through
context parameters and the free-energy campaigns drive.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import openmm
import openmm.app as app

from mlpolar.models import DEFAULT_NAME

FIXED_CHARGE = "fixed-charge"
ML_CONSTRAINTS = ("keep", "remove")


def resolve_model(model: Optional[str], system: Optional[openmm.System] = None,
                  ml_atoms=None, *, check_only: bool = False):
    """The model object for ``model`` (see module doc). ``check_only``: only check that it can be
    found (cheap; used before long preparations), return None."""
    if model == FIXED_CHARGE:
        if check_only:
            return None
        from mlpolar.models.fixed_charge import FixedChargeModel
        return FixedChargeModel.from_system(system, ml_atoms)
    from mlpolar.models import model_path
    # "default" (or None) resolves to the shipped default; a clear error naming the shipped
    # models for anything else that is not a file
    path = model_path(DEFAULT_NAME if model is None else model)
    if check_only:
        return None
    import mlpolar
    return mlpolar.load_model(str(path))


def make_ml_system(topology: app.Topology, system: openmm.System, ml_atoms, model,
                   charge: int = 0, multiplicity: int = 1,
                   interpolate: bool = True, ml_constraints: str = "keep") -> openmm.System:
    """ML/MM System (``create_mixed_system``) with the model given as object or name.

    ``ml_constraints``: ``"keep"`` (default) keeps the MM System's constraints between ML atoms
    (its H-bond lengths), ``"remove"`` drops them (openmm-ml's default). Keep them for models
    trained on constrained MD (the shipped ones: their labels never stretch an X-H bond, so the
    model's X-H stretch is untrained); keeping them also makes lambda = 0 the MM System exactly,
    dynamics included."""
    if ml_constraints not in ML_CONSTRAINTS:
        raise ValueError(f"ml_constraints={ml_constraints!r}: use one of {ML_CONSTRAINTS}")
    ml = np.asarray(ml_atoms, dtype=np.int64)
    if isinstance(model, str) or model is None:
        model = resolve_model(model, system, ml)
    from mlpolar.openmm import create_mixed_system
    return create_mixed_system(topology, system, ml.tolist(), model, charge=int(charge),
                               multiplicity=int(multiplicity), interpolate=interpolate,
                               remove_constraints=ml_constraints == "remove")
