"""Hyperparameters of an MLPolar model: one JSON-serialisable dataclass.

Two variants share the pipeline (embedding → local blocks → Fukui → K polarisation
iterations → energy):
- "equivariant": Cartesian scalar/vector/rank-2 message passing, spin-resolved Gaussian charges
  and dipoles (and quadrupoles if `quadrupoles`), polarisation features up to the MM field's
  third derivative (MACE-POLAR-1 density, Lei–Yagi–Sugita contraction);
- "fast": invariant scalars only, charges only, charges re-equilibrated inside every block and
  charge-weighted radial features (MPNICE).
"""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import List

VARIANTS = ("equivariant", "fast")


@dataclass
class MLPolarConfig:
    elements: List[int]                       # atomic numbers the model knows
    heads: List[str] = field(default_factory=lambda: ["default"])  # levels of theory
    variant: str = "equivariant"
    cutoff: float = 0.5                       # nm, local message passing (smooth envelope)
    channels: int = 32                        # width of every feature block
    layers: int = 2                           # message-passing blocks
    radial_basis: int = 8                     # Bessel functions
    envelope_power: int = 5                   # polynomial cutoff, C2-smooth at `cutoff`
    avg_neighbours: float = 8.0               # message normalisation
    quadrupoles: bool = False                 # learn Gaussian quadrupoles too
    iterations: int = 2                       # non-self-consistent polarisation iterations K
    contraction_channels: int = 8             # learned multipoles contracted with the fields
    widths: str = "learned"                   # "learned" per species, or "fixed" (`width` for all)
    width: float = 0.06                       # nm, initial / fixed Gaussian width
    electrostatics_cutoff: float = 0.9        # nm, Ewald real-space cutoff under a box
    tolerance: float = 1e-5                   # Ewald/PME relative error tolerance
    mm_cutoff: float = 1.2                    # nm, MM embedding cutoff (open boundaries)
    mm_ewald_cutoff: float = 1.0              # nm, real-space cutoff of the ML–MM Ewald sum under a box
    mm_switch_width: float = 0.1              # nm, smooth switch of the MM embedding
    feature_length: float = 0.1               # nm, makes field features dimensionless
    energy_scale: float = 1.0                 # kJ/mol per unit of the learned energy heads

    def __post_init__(self) -> None:
        if not self.elements or any(int(z) < 1 or int(z) > 118 for z in self.elements):
            raise ValueError(f"elements must be a non-empty list of atomic numbers 1..118, got {self.elements}")
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f"elements contain duplicates: {self.elements}")
        if not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be a non-empty list of distinct names, got {self.heads}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.widths not in ("learned", "fixed"):
            raise ValueError(f"widths must be 'learned' or 'fixed', got {self.widths!r}")
        for name in ("cutoff", "width", "electrostatics_cutoff", "mm_cutoff", "mm_ewald_cutoff", "feature_length",
                     "avg_neighbours"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("channels", "layers", "radial_basis", "contraction_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.variant == "fast" and self.quadrupoles:
            raise ValueError("the fast variant carries charges only; set quadrupoles=False or variant='equivariant'")
        self.elements = [int(z) for z in self.elements]
        self.heads = [str(h) for h in self.heads]

    @property
    def receptive_field(self) -> float:
        """Reach (nm) of the local message passing; the electrostatic features are global."""
        return self.layers * self.cutoff

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MLPolarConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown MLPolarConfig fields {sorted(unknown)}; the file was written by another version")
        return cls(**data)
