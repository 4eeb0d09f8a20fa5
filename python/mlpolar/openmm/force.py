"""MLPolarForce: an mlpolar model as an OpenMM Force.

The model (docs/interfaces.md) gets the ML atoms' species and positions, the MM atoms' positions
and force-field charges and the periodic box, and returns the ML energy including *all*
electrostatics involving the ML atoms (ML-ML and ML-MM, with periodic images). Forces on ML and
MM atoms are minus the autograd gradient. The System must therefore not count those interactions
again: build it with :func:`mlpolar.openmm.create_mixed_system`.

Backends:
- "python" (default): ``openmm.PythonForce``; the model runs in torch on its own device (CPU, or
  the GPU when the model is on CUDA), whatever platform the Context uses.
- "torch": ``openmmtorch.TorchForce`` around a TorchScript export; needs an openmm-torch built
  against this torch, detected at run time (:func:`torchforce_status`).
"""
from __future__ import annotations

import inspect
import io
import math
from numbers import Real
from typing import Optional

import numpy as np
import openmm
import openmm.unit as u
import torch

from . import checks


def torchforce_status():
    """(usable, message): whether openmm-torch can be imported with this torch and OpenMM."""
    try:
        import openmmtorch  # noqa: F401
    except ImportError as e:
        return False, (f"openmm-torch is not importable ({e}). The PyPI wheel openmmtorch 1.5 is built against an "
                       f"older torch and does not load with torch {torch.__version__}; build openmm-torch from source "
                       "against this torch (or use the conda-forge package matching it), or use backend='python'")
    except OSError as e:
        return False, (f"openmm-torch failed to load its library ({e}); it was built against a different torch or "
                       f"OpenMM than torch {torch.__version__} / OpenMM {openmm.__version__}: rebuild it, or use "
                       "backend='python'")
    return True, "openmm-torch " + getattr(openmmtorch, "__version__", "?")


def _model_device_dtype(model):
    tensors = list(model.parameters()) + list(model.buffers())
    floats = [t for t in tensors if t.is_floating_point()]
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"model has tensors on several devices {sorted(map(str, devices))}; move it with "
                         "model.to(device)")
    device = next(iter(devices)) if devices else torch.device("cpu")
    dtype = floats[0].dtype if floats else torch.float32
    return device, dtype


def _normalised_device(device) -> torch.device:
    """torch.device(device), with a bare 'cuda' made the current GPU ('cuda:0'): a model moved with
    model.to('cuda') has its tensors on 'cuda:0', and device='cuda' means that same GPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _ModelEvaluator:
    """The PythonForce computation: State -> (energy kJ/mol, forces [N, 3] kJ/mol/nm).

    A top-level class so that the force pickles (XmlSerializer, copy.deepcopy of a System)."""

    def __init__(self, model, n_particles, ml_atoms, mm_atoms, mm_charges, species, charge, multiplicity,
                 periodic, device, dtype, mm_tolerance=None):
        self.model = model
        self.mm_tolerance = None if mm_tolerance is None else float(mm_tolerance)
        self.n_particles = int(n_particles)
        self.ml_atoms = list(ml_atoms)
        self.mm_atoms = list(mm_atoms)
        self.mm_charges_list = [float(q) for q in mm_charges]
        self.species_list = [int(z) for z in species]
        self.charge = float(charge)
        self.multiplicity = int(multiplicity)
        self.periodic = bool(periodic)
        self.device = torch.device(device)
        self.dtype = dtype
        self._setup()

    def _setup(self):
        d, f = self.device, self.dtype
        self._ml = torch.tensor(self.ml_atoms, dtype=torch.int64, device=d)
        self._mm = torch.tensor(self.mm_atoms, dtype=torch.int64, device=d)
        self._ml_np = np.asarray(self.ml_atoms, dtype=np.int64)
        self._mm_np = np.asarray(self.mm_atoms, dtype=np.int64)
        self._species = torch.tensor(self.species_list, dtype=torch.int64, device=d)
        self._mm_q = torch.tensor(self.mm_charges_list, dtype=f, device=d)
        self._total_charge = torch.tensor([self.charge], dtype=f, device=d)
        self._mult = torch.tensor([self.multiplicity], dtype=torch.int64, device=d)

    def evaluate(self, positions: torch.Tensor, box: Optional[torch.Tensor]):
        """Energy and gradients for positions [N, 3] (nm) in the model's dtype on its device."""
        ml = positions[self._ml].detach().requires_grad_(True)
        mm = positions[self._mm].detach().requires_grad_(True) if len(self.mm_atoms) else None
        args = (self._species, ml, self._total_charge, self._mult, None, mm,
                self._mm_q if mm is not None else None, box, None, None)
        if self.mm_tolerance is not None and mm is not None:
            out = self.model(*args, mm_tolerance=self.mm_tolerance)
        else:
            out = self.model(*args)
        energy = out["energy"]
        grads = torch.autograd.grad(energy, [ml] if mm is None else [ml, mm])
        return energy.detach(), grads

    def __call__(self, state):
        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        x = torch.as_tensor(np.asarray(pos), dtype=self.dtype, device=self.device)
        box = None
        if self.periodic:
            b = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
            box = torch.as_tensor(np.asarray(b), dtype=self.dtype, device=self.device)
        energy, grads = self.evaluate(x, box)
        forces = np.zeros((self.n_particles, 3))
        forces[self._ml_np] = -grads[0].double().cpu().numpy()
        if len(grads) > 1:
            forces[self._mm_np] = -grads[1].double().cpu().numpy()
        return float(energy), forces

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "model"}
        buf = io.BytesIO()
        if isinstance(self.model, torch.jit.ScriptModule):
            torch.jit.save(self.model, buf)
            state["_scripted"] = True
        else:
            torch.save(self.model, buf)
            state["_scripted"] = False
        state["_model_bytes"] = buf.getvalue()
        state["device"] = str(self.device)
        return state

    def __setstate__(self, state):
        buf = io.BytesIO(state.pop("_model_bytes"))
        scripted = state.pop("_scripted")
        state.setdefault("mm_tolerance", None)   # forces pickled before the setting existed
        self.__dict__.update(state)
        self.device = torch.device(state["device"])
        self.model = torch.jit.load(buf, map_location=self.device) if scripted else \
            torch.load(buf, map_location=self.device, weights_only=False)
        self._setup()


def accepts_mm_tolerance(model) -> bool:
    """Whether the model's forward takes ``mm_tolerance`` (MLPolar does; older exports and the
    fixed-charge model, which uses the NonbondedForce's tolerance itself, do not)."""
    forward = getattr(model, "forward", None)
    schema = getattr(forward, "schema", None)   # a TorchScript method
    if schema is not None:
        return any(a.name == "mm_tolerance" for a in schema.arguments)
    try:
        return "mm_tolerance" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def check_embedding_tolerance(value) -> Optional[float]:
    """None or a float in (0, 0.5); TypeError/ValueError naming `embedding_tolerance` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"embedding_tolerance must be a number (a relative error such as 5e-4) or None for the "
                        f"NonbondedForce's ewaldErrorTolerance, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value < 0.5):
        raise ValueError(f"embedding_tolerance must be a relative error in (0, 0.5), e.g. 5e-4 (OpenMM's default "
                         f"ewaldErrorTolerance) or 1e-5; got {value}. Leave it None to use the NonbondedForce's")
    return value


def model_cutoff(model, periodic: bool) -> Optional[float]:
    """The ML-MM cutoff (nm) the model applies under these boundary conditions: with a box the real-space
    cutoff of its ML-MM Ewald sum (``mm_ewald_cutoff``; older models: ``mm_cutoff``), without one the
    range of MM charges it embeds (``mm_cutoff``). None for a model that declares neither."""
    value = getattr(model, "mm_ewald_cutoff", None) if periodic else None
    if value is None:
        value = getattr(model, "mm_cutoff", None)
    return None if value is None else float(value)


def check_cutoff(cutoff, model, periodic: bool) -> Optional[float]:
    """`cutoff` (nm, or an OpenMM length) must be the model's own ML-MM cutoff, or None.

    The cutoff is a property of the model, not a runtime setting like ``embedding_tolerance``: the
    model's forward takes no cutoff (it sits in the model's MM-embedding module), and under open
    boundaries it is the range of MM charges the model was trained with. So the argument is a check
    that the model is the one the caller means, with the way to build another in the error."""
    if cutoff is None:
        return None
    if isinstance(cutoff, u.Quantity):
        if not cutoff.unit.is_compatible(u.nanometer):
            raise TypeError(f"cutoff must be a length (nm, or an OpenMM Quantity in length units), got {cutoff}")
        cutoff = cutoff.value_in_unit(u.nanometer)
    if isinstance(cutoff, bool) or not isinstance(cutoff, Real):
        raise TypeError(f"cutoff must be a length in nm (or an OpenMM length Quantity) or None for the model's own, "
                        f"got {type(cutoff).__name__}")
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff must be a positive length in nm, got {cutoff}; leave it None for the model's own")
    own = model_cutoff(model, periodic)
    if own is None:
        raise ValueError(f"cutoff={cutoff} nm was given but the model ({type(model).__name__}) declares no ML-MM "
                         "cutoff (no mm_cutoff attribute) to check it against; leave cutoff=None")
    if not math.isclose(cutoff, own, rel_tol=1e-9, abs_tol=1e-12):
        if periodic:
            name = "mm_ewald_cutoff" if getattr(model, "mm_ewald_cutoff", None) is not None else "mm_cutoff"
            how = ("under a box it only splits the ML-MM Ewald sum (the sum does not depend on it beyond the "
                   "tolerance), so the same weights serve: m = mlpolar.load_model(path, eager=True); "
                   f"other = mlpolar.model.MLPolar(dataclasses.replace(m.config, mm_ewald_cutoff={cutoff}))"
                   ".to(m.reference_energy.dtype); "
                   "other.load_state_dict(m.state_dict()), and pass `other`")
        else:
            name = "mm_cutoff"
            how = ("without a box it is the range of MM charges the model was trained with: train a model with "
                   f"MLPolarConfig(mm_cutoff={cutoff}, ...)")
        raise ValueError(f"cutoff={cutoff} nm differs from the model's ML-MM cutoff {name} = {own} nm for this "
                         f"{'periodic' if periodic else 'non-periodic'} System. The cutoff is part of the model (its "
                         f"forward takes no cutoff), so MLPolarForce cannot override it: leave cutoff=None (or pass "
                         f"{own}), or use a model built with cutoff {cutoff} nm; {how}")
    return own


def prepare_evaluator(model, ml_atoms, system, charge=0, multiplicity=1, topology=None, device=None, embed=True,
                      embedding_tolerance=None, cutoff=None):
    """Check the inputs and build the evaluator (shared by both backends and by tests)."""
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module following the mlpolar model interface, got "
                        f"{type(model).__name__}; load one with mlpolar.load_model")
    check_cutoff(cutoff, model, system.usesPeriodicBoundaryConditions())
    explicit_tolerance = check_embedding_tolerance(embedding_tolerance)
    if explicit_tolerance is not None and not accepts_mm_tolerance(model):
        raise ValueError(f"embedding_tolerance={explicit_tolerance} was given but the model's forward takes no "
                         f"mm_tolerance argument ({type(model).__name__}); leave embedding_tolerance=None, or use "
                         "an MLPolar model exported by this version of mlpolar")
    n = system.getNumParticles()
    atoms = checks.ml_atom_list(ml_atoms, n)
    checks.check_no_link_bonds(atoms, system, topology)
    species = checks.species_of(atoms, system, topology)
    checks.check_elements(species, atoms, model)
    checks.check_charge_multiplicity(species, charge, multiplicity)
    nb = checks.nonbonded_force(system, required=embed and len(atoms) < n,
                                why="to read the MM charges that polarise the ML region")
    mlset = set(atoms)
    mm_atoms, mm_q = [], []
    if nb is not None and embed:
        # The model gets the MM charges once, here; a charge offset (addParticleParameterOffset) on an MM
        # atom would change its charge with a global parameter in the NonbondedForce but not in the model.
        for k in range(nb.getNumParticleParameterOffsets()):
            parameter, a, q_scale = nb.getParticleParameterOffset(k)[:3]
            if a not in mlset and q_scale != 0.0:
                raise ValueError(f"NonbondedForce particle parameter offset {k} (global parameter {parameter!r}, "
                                 f"chargeScale {q_scale}) changes the charge of MM atom {a}, but the model sees "
                                 "the MM charges as fixed numbers read from the NonbondedForce; remove the offset "
                                 "or fold the charge you want into the particle's charge (setParticleParameters)")
        for i in range(n):
            if i in mlset:
                continue
            q = nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
            if q != 0.0:   # uncharged MM particles do not enter the embedding
                mm_atoms.append(i)
                mm_q.append(q)
    # Accuracy of the ML-MM long range (the model's Ewald/PME of all MM charges): by default the
    # force field's own ewaldErrorTolerance, the accuracy its PME gives MM-MM; the model's ML-ML
    # terms keep their own tolerance.
    mm_tolerance = None
    if embed and mm_atoms and accepts_mm_tolerance(model):
        mm_tolerance = explicit_tolerance if explicit_tolerance is not None else float(nb.getEwaldErrorTolerance())
    periodic = system.usesPeriodicBoundaryConditions()
    # under PBC the model's ML–MM Ewald real-space cutoff (older models: their mm_cutoff)
    cutoff = getattr(model, "mm_ewald_cutoff", getattr(model, "mm_cutoff", None))
    if periodic and cutoff is not None:
        checks.check_cutoff_box(float(cutoff), system, "the model's ML–MM Ewald cutoff (mm_ewald_cutoff)")
    model_device, dtype = _model_device_dtype(model)
    model_device = _normalised_device(model_device)
    if device is None:
        device = model_device
    device = _normalised_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"the model is on {device} but torch sees no CUDA device here; move it with "
                         "model.to('cpu') or run where a GPU is available")
    if device != model_device and model_device.type != "meta":
        raise ValueError(f"device={device} differs from the model's device {model_device}; move the model with "
                         f"model.to('{device}') first (or leave device=None)")
    return _ModelEvaluator(model, n, atoms, mm_atoms, mm_q, species, charge, multiplicity, periodic, device, dtype,
                           mm_tolerance)


class MLPolarForce(openmm.PythonForce):
    """An mlpolar model as an OpenMM Force, for ``system.addForce(...)``.

    Args:
        model: a model following docs/interfaces.md (``mlpolar.load_model(...)``, or
            :class:`mlpolar.models.fixed_charge.FixedChargeModel`).
        ml_atoms: indices of the ML atoms; the model's atom i is ``ml_atoms[i]``.
        system: the System the force goes into (its NonbondedForce gives the MM charges; its
            periodicity makes the force periodic).
        charge, multiplicity: total charge (e) and spin multiplicity 2S+1 of the ML region.
        topology: optional; elements and bonds from it (else elements from masses, bonds from the
            System's HarmonicBondForce and constraints).
        embed: pass the MM charges to the model (electrostatic embedding). False: the model sees
            the ML atoms only (mechanical embedding, openmm-ml's "mechanical").
        device: where the model runs; default the model's device.
        backend: "python" (openmm.PythonForce) or "torch" (openmmtorch.TorchForce, which needs a
            compatible openmm-torch; otherwise a RuntimeError saying why). With "torch" the
            returned object is a TorchForce.
        embedding_tolerance: relative error tolerance of the ML-MM long range (the model's PME of
            the MM charges, passed to it as ``mm_tolerance``). None: the System's NonbondedForce
            ewaldErrorTolerance, so that ML-MM electrostatics are as accurate as the force field's
            MM-MM. The model's ML-ML terms keep their own tolerance.
        cutoff: the ML-MM cutoff (nm or an OpenMM length), checked against the model's own (under a
            box its ``mm_ewald_cutoff``, else ``mm_cutoff``): the cutoff belongs to the model (its
            forward takes none), so a different value is refused with the way to build a model with
            that cutoff. None (default): the model's.

    The electrostatic embedding is complete only if the System no longer counts ML-involving
    electrostatics, ML-ML Lennard-Jones and intra-ML bonded terms: use create_mixed_system.
    """

    def __new__(cls, model, ml_atoms, system, charge=0, multiplicity=1, topology=None, device=None,
                backend="python", embed=True, embedding_tolerance=None, cutoff=None):
        if backend not in ("python", "torch"):
            raise ValueError(f"backend must be 'python' or 'torch', got {backend!r}")
        if backend == "torch":
            return _torch_force(model, ml_atoms, system, charge, multiplicity, topology, device, embed,
                                embedding_tolerance, cutoff)
        return super().__new__(cls)

    def __init__(self, model, ml_atoms, system, charge=0, multiplicity=1, topology=None, device=None,
                 backend="python", embed=True, embedding_tolerance=None, cutoff=None):
        evaluator = prepare_evaluator(model, ml_atoms, system, charge, multiplicity, topology, device, embed,
                                      embedding_tolerance, cutoff)
        super().__init__(evaluator, {})
        self.setUsesPeriodicBoundaryConditions(evaluator.periodic)
        self.setName("MLPolarForce")
        self.evaluator = evaluator
        self._cutoff = model_cutoff(model, evaluator.periodic)

    def getCutoff(self) -> Optional[float]:
        """The model's ML-MM cutoff in nm for this System (mm_ewald_cutoff under a box, mm_cutoff
        without one; None for a model that declares none)."""
        return self._cutoff

    def getEmbeddingTolerance(self) -> Optional[float]:
        """The tolerance the model's ML-MM long range runs at (None: the model's own default, for
        models without the setting or without MM charges)."""
        return self.evaluator.mm_tolerance


class _TorchForceModule(torch.nn.Module):
    """TorchForce wrapper: (positions [N,3] nm, box [3,3] nm) -> energy kJ/mol, for torch.jit.script."""

    def __init__(self, model, evaluator: _ModelEvaluator):
        super().__init__()
        self.model = model
        self.periodic = evaluator.periodic
        self.has_mm = len(evaluator.mm_atoms) > 0
        self.register_buffer("ml", evaluator._ml)
        self.register_buffer("mm", evaluator._mm)
        self.register_buffer("species", evaluator._species)
        self.register_buffer("mm_q", evaluator._mm_q)
        self.register_buffer("total_charge", evaluator._total_charge)
        self.register_buffer("mult", evaluator._mult)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = positions.to(self.mm_q.dtype)
        b: Optional[torch.Tensor] = None
        if self.periodic and box is not None:
            b = box.to(self.mm_q.dtype)
        mm_x: Optional[torch.Tensor] = None
        mm_q: Optional[torch.Tensor] = None
        if self.has_mm:
            mm_x = x[self.mm]
            mm_q = self.mm_q
        out = self.model(self.species, x[self.ml], self.total_charge, self.mult, None, mm_x, mm_q, b, None, None)
        return out["energy"]


class _TorchForceModuleTolerance(_TorchForceModule):
    """The same for models that take mm_tolerance (a separate class: TorchScript compiles every
    call it sees, and models without the argument must not see this one)."""

    def __init__(self, model, evaluator: _ModelEvaluator):
        super().__init__(model, evaluator)
        self.mm_tolerance = float(evaluator.mm_tolerance)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = positions.to(self.mm_q.dtype)
        b: Optional[torch.Tensor] = None
        if self.periodic and box is not None:
            b = box.to(self.mm_q.dtype)
        out = self.model(self.species, x[self.ml], self.total_charge, self.mult, None, x[self.mm], self.mm_q, b,
                         None, None, mm_tolerance=self.mm_tolerance)
        return out["energy"]


def torchforce_module(model, ml_atoms, system, charge=0, multiplicity=1, topology=None, device=None, embed=True,
                      embedding_tolerance=None, cutoff=None):
    """The TorchScript module that backend="torch" hands to openmmtorch.TorchForce (same checks as
    MLPolarForce); needs a TorchScript-able model."""
    evaluator = prepare_evaluator(model, ml_atoms, system, charge, multiplicity, topology, device, embed,
                                  embedding_tolerance, cutoff)
    wrapper = _TorchForceModule if evaluator.mm_tolerance is None else _TorchForceModuleTolerance
    try:
        return torch.jit.script(wrapper(model, evaluator)), evaluator
    except Exception as e:  # TorchScript reports many error types
        raise RuntimeError(f"backend='torch' needs a TorchScript-able model; scripting failed: {e}") from e


def _torch_force(model, ml_atoms, system, charge, multiplicity, topology, device, embed, embedding_tolerance,
                 cutoff=None):
    ok, message = torchforce_status()
    if not ok:
        raise RuntimeError("backend='torch' is not available: " + message)
    import openmmtorch
    module, evaluator = torchforce_module(model, ml_atoms, system, charge, multiplicity, topology, device, embed,
                                          embedding_tolerance, cutoff)
    force = openmmtorch.TorchForce(module)
    force.setUsesPeriodicBoundaryConditions(evaluator.periodic)
    force.setName("MLPolarForce")
    return force
