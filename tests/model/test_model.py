"""MLPolar model: symmetry, conservation, forces, smoothness, locality, boundaries, export.

Small random models (16 channels) on real molecules: p-xylene from the first real labels (tests/train/data/pxylene_water_8.h5),
water and the OH radical built by hand. float64 unless stated.
"""
import json
import math
import zipfile
from pathlib import Path

import h5py
import pytest
import torch

from mlpolar.model import FORMAT_VERSION, MLPolar, MLPolarConfig, energy_and_forces, load_model, save_model

ROOT = Path(__file__).resolve().parents[2]
# a fixed copy of the first real labels (the live store may be locked by a running generator)
FIXTURE = ROOT / "tests" / "train" / "data" / "pxylene_water_8.h5"
DT = torch.float64
VARIANTS = [("equivariant", False), ("equivariant", True), ("fast", False)]
IDS = ["equivariant", "equivariant+quadrupoles", "fast"]


def pxylene():
    with h5py.File(FIXTURE, "r") as f:
        g = f["configs/00000000"]
        species = torch.tensor(g["qm_atomic_numbers"][:]).long()
        pos = torch.tensor(g["qm_positions"][:], dtype=DT)
    return species, pos - pos.mean(0)


WATER = (torch.tensor([8, 1, 1]), torch.tensor([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.0240, 0.0927, 0.0]], dtype=DT))
HYDROXYL = (torch.tensor([8, 1]), torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0970]], dtype=DT))  # radical, M = 2


def small(variant="equivariant", quadrupoles=False, **kw):
    torch.manual_seed(0)
    cfg = MLPolarConfig(elements=[1, 6, 8], variant=variant, quadrupoles=quadrupoles, channels=16,
                        contraction_channels=4, **kw)
    return MLPolar(cfg).double()


def run(model, species, pos, Q=0.0, M=1, **kw):
    return model(species, pos, torch.tensor([Q], dtype=pos.dtype), torch.tensor([M]), **kw)


def rotation(seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DT))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def assert_directional_derivatives(energy, x, grad, n_dirs=3, h=1e-5, tol=1e-6):
    """Fourth-order central differences of `energy` along random directions against grad·v (float64)."""
    g = torch.Generator().manual_seed(5)
    for _ in range(n_dirs):
        v = torch.randn(x.shape, generator=g, dtype=x.dtype)
        with torch.no_grad():
            fd = (8 * (energy(x + h * v) - energy(x - h * v)) - (energy(x + 2 * h * v) - energy(x - 2 * h * v))) / (12 * h)
        exact = (grad * v).sum()
        assert abs(float(fd - exact)) < tol * max(1.0, abs(float(exact))), (float(fd), float(exact))


def two_fragments():
    """water (neutral singlet) and the OH radical (neutral doublet), 0.35 nm apart."""
    species = torch.cat([WATER[0], HYDROXYL[0]])
    pos = torch.cat([WATER[1], HYDROXYL[1] + torch.tensor([0.35, 0.05, 0.0], dtype=DT)])
    frags = torch.tensor([0, 0, 0, 1, 1])
    return species, pos, frags


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_invariance_and_covariance(variant, quad):
    model = small(variant, quad)
    species, pos = pxylene()
    field = torch.tensor([30.0, -20.0, 10.0], dtype=DT)
    ref = run(model, species, pos, external_field=field)
    R, t = rotation(1), torch.tensor([0.3, -1.2, 2.0], dtype=DT)
    perm = torch.randperm(len(species), generator=torch.Generator().manual_seed(2))
    out = run(model, species[perm], pos[perm] @ R.T + t, external_field=field @ R.T)
    # a uniform field couples to the origin through q·r; the molecule is neutral, so translation
    # leaves the energy unchanged
    assert torch.allclose(out["energy"], ref["energy"], rtol=1e-10, atol=1e-9)
    for key in ("energy_electrostatic", "energy_local", "energy_nonlocal", "energy_external"):
        assert torch.allclose(out[key], ref[key], rtol=1e-9, atol=1e-9), key
    assert torch.allclose(out["charges"], ref["charges"][perm], atol=1e-12)
    assert torch.allclose(out["spin_charges"], ref["spin_charges"][perm], atol=1e-12)
    assert torch.allclose(out["dipoles"], ref["dipoles"][perm] @ R.T, atol=1e-12)
    if quad:
        assert torch.allclose(out["quadrupoles"], R @ ref["quadrupoles"][perm] @ R.T, atol=1e-13)
    if variant == "equivariant":
        assert float(ref["dipoles"].abs().max()) > 1e-4   # the covariance check is not vacuous


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_charge_and_spin_conservation(variant, quad, dtype, tol):
    model = small(variant, quad).to(dtype)
    sp, pos = pxylene()
    species = torch.cat([sp, WATER[0], HYDROXYL[0]])
    pos = torch.cat([pos, WATER[1] + 0.6, HYDROXYL[1] - 0.6]).to(dtype)
    frags = torch.tensor([0] * len(sp) + [1, 1, 1, 2, 2])
    Q = torch.tensor([1.0, 0.0, -1.0], dtype=dtype)     # p-xylene cation (doublet), water, hydroxide
    M = torch.tensor([2, 1, 1])
    out = model(species, pos, Q, M, frags)
    s = torch.zeros(3, 2, dtype=torch.float64).index_add(0, frags, out["spin_charges"].double())
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-0.5, -0.5]], dtype=torch.float64)
    assert torch.allclose(s, target, atol=tol, rtol=0)
    assert torch.allclose(out["charges"].double(), out["spin_charges"].double().sum(1), atol=tol)


def test_impossible_charge_and_multiplicity_rejected():
    model = small()
    species, pos = HYDROXYL
    with pytest.raises(ValueError, match="multiplicity"):
        run(model, species, pos, Q=0.0, M=1)   # 9 electrons cannot be a singlet
    with pytest.raises(ValueError, match="multiplicity"):
        run(model, species, pos, Q=0.0, M=0)
    run(model, species, pos, Q=0.0, M=2)


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_forces_match_finite_differences(variant, quad):
    model = small(variant, quad)
    species, pos, frags = two_fragments()
    Q, M = torch.tensor([0.0, 0.0], dtype=DT), torch.tensor([1, 2])
    field = torch.tensor([50.0, 0.0, -20.0], dtype=DT)

    e, f, f_mm = energy_and_forces(model, species, pos, Q, M, frags, external_field=field)
    assert_directional_derivatives(lambda x: model(species, x, Q, M, frags, external_field=field)["energy"], pos, -f)
    F = field.clone().requires_grad_()
    gF, = torch.autograd.grad(model(species, pos, Q, M, frags, external_field=F)["energy"], F)
    assert_directional_derivatives(lambda y: model(species, pos, Q, M, frags, external_field=y)["energy"],
                                   field, gF, h=1e-3)
    if variant == "fast":   # second order through autograd (force training differentiates forces)
        x = WATER[1].clone().requires_grad_()
        assert torch.autograd.gradgradcheck(lambda y: run(model, WATER[0], y)["energy"], (x,),
                                            eps=1e-6, atol=1e-4, rtol=1e-4)
    assert f_mm.shape == (0, 3)


def test_forces_match_finite_differences_periodic():
    model = small()
    species, pos, frags = two_fragments()
    box = torch.tensor([[2.0, 0, 0], [0.3, 2.1, 0], [-0.2, 0.4, 1.9]], dtype=DT)
    Q, M = torch.tensor([0.0, 0.0], dtype=DT), torch.tensor([1, 2])
    e, f, _ = energy_and_forces(model, species, pos, Q, M, frags, box=box)
    assert_directional_derivatives(lambda x: model(species, x, Q, M, frags, box=box)["energy"], pos, -f, n_dirs=2)


@pytest.mark.parametrize("variant", ["equivariant", "fast"])
def test_smooth_across_the_local_cutoff(variant):
    """An O···H pair (OH radical stretched) crossing rc: energy and force continuous. Without the
    envelope on the learned radial weights, the energy would jump by O(0.1) kJ/mol here."""
    model = small(variant)
    rc = model.cutoff
    species = HYDROXYL[0]
    es, fs = [], []
    delta = 1e-6
    for k in (-3, -1, 1, 3):
        pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, rc + k * delta]], dtype=DT)
        e, f, _ = energy_and_forces(model, species, pos, torch.tensor([0.0], dtype=DT), torch.tensor([2]))
        es.append(float(e))
        fs.append(f)

    def jump(v):   # step across rc beyond what the neighbouring steps predict: O(δ²) when smooth
        return (v[2] - v[1]) - 0.5 * ((v[1] - v[0]) + (v[3] - v[2]))
    assert abs(jump(es)) < 1e-10
    assert float(jump(fs).abs().max()) < 1e-7
    # and the local part actually acts inside the cutoff: E differs from the non-interacting limit
    near = run(model, species, torch.tensor([[0.0, 0, 0], [0, 0, 0.5 * rc]], dtype=DT), M=2)
    far = run(model, species, torch.tensor([[0.0, 0, 0], [0, 0, 0.999 * rc]], dtype=DT), M=2)
    assert abs(float(near["energy_local"] - far["energy_local"])) > 1e-5


def test_dipole_is_minus_field_derivative():
    """Without polarisation iterations the multipoles do not see the field, and the energy's only
    field dependence is the explicit −F·(Σ q r + Σ μ): −∂E/∂F is exactly the model's dipole."""
    model = small(iterations=0)
    species, pos = pxylene()
    F = torch.zeros(3, dtype=DT, requires_grad=True)
    out = run(model, species, pos, external_field=F)
    g, = torch.autograd.grad(out["energy"], F)
    dipole = (out["charges"][:, None] * pos).sum(0) + out["dipoles"].sum(0)
    assert float(dipole.abs().max()) > 1e-4
    assert torch.allclose(-g, dipole.detach(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_far_fragments_are_additive(variant, quad):
    model = small(variant, quad)
    species, pos, frags = two_fragments()
    pos = pos.clone()
    pos[3:] += torch.tensor([1000.0, 0.0, 0.0], dtype=DT)
    both = model(species, pos, torch.tensor([0.0, 0.0], dtype=DT), torch.tensor([1, 2]), frags)
    a = run(model, species[:3], pos[:3], M=1)
    b = run(model, species[3:], pos[3:], M=2)
    for key in ("energy", "energy_local", "energy_electrostatic", "energy_nonlocal"):
        assert torch.allclose(both[key], a[key] + b[key], atol=1e-8), key
    assert torch.allclose(both["spin_charges"], torch.cat([a["spin_charges"], b["spin_charges"]]), atol=1e-10)


@pytest.mark.parametrize("variant", ["equivariant", "fast"])
def test_periodic_large_box_matches_open_and_wrapping(variant):
    model = small(variant)
    species, pos = pxylene()
    box = torch.eye(3, dtype=DT) * 4.0
    center = pos + 2.0
    open_ = energy_and_forces(model, species, center, torch.tensor([0.0], dtype=DT), torch.tensor([1]))
    per = energy_and_forces(model, species, center, torch.tensor([0.0], dtype=DT), torch.tensor([1]), box=box)
    # the images of a neutral molecule 4 nm away: dipole–dipole terms well below 1e-3 kJ/mol
    assert abs(float(open_[0] - per[0])) < 2e-3
    assert float((open_[1] - per[1]).abs().max()) < 2e-2
    # the molecule straddling the box corner, wrapped atom by atom: the same physics
    shifted = pos + 0.01
    wrapped = shifted - torch.floor(shifted / 4.0) * 4.0
    assert float(wrapped.min()) < 0.5 and float(wrapped.max()) > 3.5
    w = energy_and_forces(model, species, wrapped, torch.tensor([0.0], dtype=DT), torch.tensor([1]), box=box)
    assert abs(float(w[0] - per[0])) < 1e-4
    assert float((w[1] - per[1]).abs().max()) < 1e-2


def test_heads_share_the_body():
    model = small(heads=["b3lyp", "wb97x"])
    species, pos = pxylene()
    with torch.no_grad():
        model.reference_energy[1].fill_(-10.0)
    a = run(model, species, pos, head="b3lyp")
    b = run(model, species, pos, head="wb97x")
    assert torch.allclose(a["charges"], b["charges"]) and not torch.allclose(a["energy"], b["energy"])
    assert torch.allclose(b["energy_reference"], torch.tensor(-10.0 * len(species), dtype=DT))
    assert torch.allclose(run(model, species, pos)["energy"], a["energy"])
    with pytest.raises(ValueError, match="head"):
        run(model, species, pos, head="mp2")


@pytest.mark.parametrize("variant,quad", VARIANTS[1:], ids=IDS[1:])
def test_torchscript_equals_eager(variant, quad):
    model = small(variant, quad)
    scripted = torch.jit.script(model)
    species, pos, frags = two_fragments()
    args = (species, pos, torch.tensor([0.0, 0.0], dtype=DT), torch.tensor([1, 2]), frags)
    for kw in ({"external_field": torch.tensor([10.0, 0.0, 5.0], dtype=DT)}, {"box": torch.eye(3, dtype=DT) * 2.0}):
        a, b = model(*args, **kw), scripted(*args, **kw)
        assert set(a) == set(b)
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-12, atol=1e-12), key
        fa, fb = energy_and_forces(model, *args, **kw)[1], energy_and_forces(scripted, *args, **kw)[1]
        assert torch.allclose(fa, fb, rtol=1e-10, atol=1e-10)
    assert scripted.elements == [1, 6, 8] and scripted.heads == ["default"] and scripted.mm_cutoff == model.mm_cutoff


def test_save_load_roundtrip_and_bad_files(tmp_path):
    model = small(heads=["a", "b"])
    species, pos = pxylene()
    ref = run(model, species, pos, head="b")
    path = tmp_path / "model.pt"
    save_model(model, path)
    for loaded in (load_model(path), load_model(path, eager=True)):
        out = run(loaded, species, pos, head="b")
        for key in ref:
            assert torch.equal(out[key], ref[key]), key
    assert isinstance(load_model(path, eager=True), MLPolar)
    assert load_model(path, eager=True).config == model.config
    save_model(load_model(path), tmp_path / "again.pt")   # a scripted model saves too

    corrupt = tmp_path / "corrupt.pt"
    data = path.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        load_model(corrupt)
    with pytest.raises(ValueError, match="no model file"):
        load_model(tmp_path / "missing.pt")

    # the same archive with another format version in its header
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(other, "w") as zout:
        for item in zin.infolist():
            content = zin.read(item.filename)
            if item.filename.endswith("extra/mlpolar.json"):
                meta = json.loads(content)
                meta["format_version"] = FORMAT_VERSION + 1
                content = json.dumps(meta).encode()
            zout.writestr(item, content)
    with pytest.raises(ValueError, match="format version"):
        load_model(other)


def test_float32_runs_and_agrees():
    model = small()
    species, pos = pxylene()
    ref = run(model, species, pos)
    out = run(model.float(), species, pos.float())
    assert out["energy"].dtype == torch.float32
    assert abs(float(out["energy"]) - float(ref["energy"])) < 1e-3 * max(1.0, abs(float(ref["energy"])))


def test_torch_compile_runs():
    """torch.compile traces the model (dynamo, eager backend). AOTAutograd and inductor, every
    configuration: tests/model/test_compile.py."""
    model = small("fast")
    species, pos = WATER
    compiled = torch.compile(model, backend="eager")
    e, f, _ = energy_and_forces(compiled, species, pos, torch.tensor([0.0], dtype=DT), torch.tensor([1]))
    e2, f2, _ = energy_and_forces(model, species, pos, torch.tensor([0.0], dtype=DT), torch.tensor([1]))
    assert torch.allclose(e, e2) and torch.allclose(f, f2)


def test_bad_inputs_raise_clear_errors():
    model = small()
    species, pos = WATER
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    with pytest.raises(ValueError, match="element 7"):
        model(torch.tensor([7, 1, 1]), pos, Q, M)
    with pytest.raises(TypeError, match="dtype"):
        model(species, pos.float(), Q, M)
    with pytest.raises(ValueError, match="positions"):
        model(species, pos[:, :2], Q, M)
    with pytest.raises(ValueError, match="box is too small"):
        model(species, pos, Q, M, box=torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="fragments"):
        model(species, pos, Q, M, fragments=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mm_charges"):
        model(species, pos, Q, M, mm_positions=torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="elements"):
        MLPolarConfig(elements=[])
    with pytest.raises(ValueError, match="variant"):
        MLPolarConfig(elements=[1], variant="big")


def test_receptive_field_reported():
    cfg = MLPolarConfig(elements=[1, 8], layers=3, cutoff=0.45)
    assert abs(cfg.receptive_field - 1.35) < 1e-12 and MLPolar(cfg).receptive_field == pytest.approx(1.35)


# ---------------------------------------------------------------- MM environment (embedding operator)

def pxylene_in_water(radius=0.6):
    """p-xylene and the TIP3P waters whose oxygen lies within `radius` of it (whole molecules),
    shifted like pxylene(); also the full periodic box of that configuration."""
    with h5py.File(FIXTURE, "r") as f:
        g = f["configs/00000000"]
        ml = torch.tensor(g["qm_positions"][:], dtype=DT)
        mm = torch.tensor(g["mm_positions"][:], dtype=DT)
        q = torch.tensor(g["mm_charges"][:], dtype=DT)
        box = torch.tensor(g["box"][:], dtype=DT)
    shift = ml.mean(0)
    oxygens = torch.cdist(mm[0::3], ml).min(1).values < radius
    keep = oxygens.repeat_interleave(3)
    return mm[keep] - shift, q[keep], mm - shift, q, box


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_mm_forces_match_finite_differences(variant, quad):
    model = small(variant, quad)
    species, pos = pxylene()
    mm_pos, mm_q, *_ = pxylene_in_water(0.45)
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    e, f_ml, f_mm = energy_and_forces(model, species, pos, Q, M, mm_positions=mm_pos, mm_charges=mm_q)
    assert f_mm.shape == mm_pos.shape and float(f_mm.abs().max()) > 1e-2
    assert_directional_derivatives(lambda y: model(species, pos, Q, M, mm_positions=y, mm_charges=mm_q)["energy"],
                                   mm_pos, -f_mm)
    assert_directional_derivatives(lambda x: model(species, x, Q, M, mm_positions=mm_pos, mm_charges=mm_q)["energy"],
                                   pos, -f_ml, n_dirs=1)
    # Newton's third law for the whole system: ML and MM forces balance (no external field)
    assert torch.allclose(f_ml.sum(0) + f_mm.sum(0), torch.zeros(3, dtype=DT), atol=1e-8)


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_mm_invariance_and_far_mm_is_vacuum(variant, quad):
    model = small(variant, quad)
    species, pos = pxylene()
    mm_pos, mm_q, *_ = pxylene_in_water(0.45)
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    ref = model(species, pos, Q, M, mm_positions=mm_pos, mm_charges=mm_q)
    vac = model(species, pos, Q, M)
    assert abs(float(ref["energy"] - vac["energy"])) > 1.0 and abs(float(ref["energy_embedding"])) > 1.0
    R, t = rotation(3), torch.tensor([1.0, 2.0, -0.5], dtype=DT)
    perm = torch.randperm(len(mm_q), generator=torch.Generator().manual_seed(4))
    out = model(species, pos @ R.T + t, Q, M, mm_positions=mm_pos[perm] @ R.T + t, mm_charges=mm_q[perm])
    assert torch.allclose(out["energy"], ref["energy"], rtol=1e-10, atol=1e-9)
    assert torch.allclose(out["dipoles"], ref["dipoles"] @ R.T, atol=1e-12)
    # the same waters beyond the embedding cutoff: exactly the vacuum result
    far = model(species, pos, Q, M, mm_positions=mm_pos + torch.tensor([50.0, 0, 0], dtype=DT), mm_charges=mm_q)
    for key in ("energy", "charges", "dipoles"):
        assert torch.allclose(far[key], vac[key], atol=1e-12), key


def charged_shell(n, radius, total):
    """`n` equal MM charges (sum `total`, e) on a Fibonacci sphere: inside, a nearly uniform potential."""
    i = torch.arange(n, dtype=DT) + 0.5
    z = 1 - 2 * i / n
    r, ph = torch.sqrt(1 - z * z), math.pi * (1 + 5 ** 0.5) * i
    return radius * torch.stack([r * torch.cos(ph), r * torch.sin(ph), z], 1), torch.full((n,), total / n, dtype=DT)


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_uniform_mm_potential_changes_nothing_but_q_phi(variant, quad):
    """A charged shell around p-xylene shifts the potential inside by ~1400 kJ/mol/e, uniform to
    2e-3 (like the offset of a cut protein in the pocket labels): a neutral molecule's charges,
    dipoles and energy must not notice (the networks see the potential without its fragment mean)."""
    model = small(variant, quad, mm_cutoff=2.0)   # every shell charge within the cutoff of every atom
    species, pos = pxylene()
    shell_pos, shell_q = charged_shell(4000, 1.0, 10.0)
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    vac = model(species, pos, Q, M)
    out = model(species, pos, Q, M, mm_positions=shell_pos, mm_charges=shell_q)
    assert torch.allclose(out["charges"], vac["charges"], atol=1e-6)
    assert torch.allclose(out["dipoles"], vac["dipoles"], atol=1e-6)
    assert abs(float(out["energy"] - vac["energy"])) < 1e-2


def test_mm_periodic_scripted_equals_eager():
    model = small()
    species, pos = pxylene()
    _, _, mm_all, q_all, box = pxylene_in_water()
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    scripted = torch.jit.script(model)
    a = energy_and_forces(model, species, pos, Q, M, mm_positions=mm_all, mm_charges=q_all, box=box)
    b = energy_and_forces(scripted, species, pos, Q, M, mm_positions=mm_all, mm_charges=q_all, box=box)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-10)
    # all electrostatics of the ML region under PBC: the MM charges act on it (the waters are neutral)
    vac = model(species, pos, Q, M, box=box)
    assert abs(float(a[0] - vac["energy"])) > 1.0


def test_mm_ewald_cutoff_is_apart_from_the_open_cutoff():
    """Under a box the ML–MM potential is a full Ewald sum: its real-space cutoff (mm_ewald_cutoff)
    changes nothing beyond the tolerance, and a long open-boundary mm_cutoff (for cluster labels)
    does not forbid a small box."""
    species, pos = pxylene()
    _, _, mm_all, q_all, box = pxylene_in_water()       # 3.6 nm box
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    out = {}
    for rc in (0.8, 1.2):
        model = small(mm_cutoff=2.5, mm_ewald_cutoff=rc)
        out[rc] = energy_and_forces(model, species, pos, Q, M, mm_positions=mm_all, mm_charges=q_all, box=box)
    e08, e12 = float(out[0.8][0]), float(out[1.2][0])
    assert abs(e08 - e12) < 1e-3 * max(1.0, abs(e08)), (e08, e12)
    assert torch.allclose(out[0.8][2], out[1.2][2], atol=1e-2 * float(out[1.2][2].abs().max()))
    with pytest.raises(ValueError, match="mm_ewald_cutoff"):
        small(mm_cutoff=2.5, mm_ewald_cutoff=1.9)(species, pos, Q, M, mm_positions=mm_all, mm_charges=q_all, box=box)


@pytest.mark.parametrize("variant", ["equivariant", "fast"])
def test_smooth_across_the_mm_cutoff(variant):
    """One MM charge crossing the embedding cutoff (open boundaries, switched): energy and forces
    on both sides continuous; inside the switch the charge acts."""
    model = small(variant)
    species, pos = WATER
    rc = model.mm_cutoff
    q = torch.tensor([0.8], dtype=DT)
    Q, M = torch.tensor([0.0], dtype=DT), torch.tensor([1])
    es, fs, fm = [], [], []
    delta = 1e-6
    for k in (-3, -1, 1, 3):
        mm = torch.tensor([[rc + k * delta, 0.0, 0.0]], dtype=DT)   # distance to the oxygen at the origin
        e, f, f_mm = energy_and_forces(model, species, pos, Q, M, mm_positions=mm, mm_charges=q)
        es.append(float(e))
        fs.append(f)
        fm.append(f_mm)

    def jump(v):
        return (v[2] - v[1]) - 0.5 * ((v[1] - v[0]) + (v[3] - v[2]))
    assert abs(jump(es)) < 1e-9   # the charge alone would contribute ~10 kJ/mol at rc unswitched
    assert float(jump(fs).abs().max()) < 1e-7 and float(jump(fm).abs().max()) < 1e-7
    inside = run(model, species, pos, mm_positions=torch.tensor([[rc - 0.15, 0.0, 0.0]], dtype=DT), mm_charges=q)
    assert abs(float(inside["energy_embedding"])) > 1e-3


@pytest.mark.parametrize("variant,quad", VARIANTS, ids=IDS)
def test_isolated_atom_has_no_pairs_and_still_works(variant, quad):
    # an ion or a lone atom: no neighbour pairs, the charge is the fragment's, no local forces
    model = small(variant, quad)
    pos = torch.tensor([[0.3, -0.2, 0.1]], dtype=DT, requires_grad=True)
    out = run(model, torch.tensor([8]), pos, Q=-1.0, M=2)
    assert torch.isfinite(out["energy"])
    assert torch.allclose(out["charges"], torch.tensor([-1.0], dtype=DT), atol=1e-12)
    (g,) = torch.autograd.grad(out["energy"], pos)
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-10)
