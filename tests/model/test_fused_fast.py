"""The fast variant's fused inference operator (csrc/fast_model.cpp, torch.ops.mlpolar.fast_energy).

A frozen fast model without a box evaluates its energy and the energy's gradients in one operator
call; everything else (trainable weights, a box, torch.compile, TorchScript, second derivatives)
takes the composed path. The operator is held against that path (float64, every output), against
finite differences, and the switch between the two paths is checked.
"""
from pathlib import Path

import h5py
import pytest
import torch

from mlpolar.model import MLPolar, MLPolarConfig, energy_and_forces

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "train" / "data" / "pxylene_water_8.h5"
DT = torch.float64


def labelled(k=0):
    """p-xylene and its MM environment (nm, e) from a real label."""
    with h5py.File(FIXTURE, "r") as f:
        g = f[f"configs/{k:08d}"]
        species = torch.tensor(g["qm_atomic_numbers"][:]).long()
        pos = torch.tensor(g["qm_positions"][:], dtype=DT)
        mm_pos = torch.tensor(g["mm_positions"][:], dtype=DT)
        mm_q = torch.tensor(g["mm_charges"][:], dtype=DT)
    return species, pos, mm_pos, mm_q


def fast_model(seed=0, **kw):
    """A fast model with weights away from their initial scale (charges, potentials and every
    energy term of a realistic size), frozen."""
    torch.manual_seed(seed)
    model = MLPolar(MLPolarConfig(elements=[1, 6, 8], variant="fast", channels=16, contraction_channels=4, **kw))
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.requires_grad_(False)


def composed_copy(model):
    other = MLPolar(model.config).double()
    other.load_state_dict(model.state_dict())
    other.fused_inference = False
    return other.requires_grad_(False)


def cases():
    species, pos, mm_pos, mm_q = labelled()
    water = (torch.tensor([8, 1, 1, 8, 1]),
             torch.tensor([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0],
                           [0.35, 0.05, 0.0], [0.35, 0.05, 0.097]], dtype=DT))
    return {
        # p-xylene in its water shell, learned widths
        "pxylene+mm": dict(species=species, positions=pos, total_charge=torch.tensor([0.0], dtype=DT),
                           multiplicity=torch.tensor([1]), mm_positions=mm_pos, mm_charges=mm_q),
        # the cation doublet with the second head and an external field
        "cation+field+head": dict(species=species, positions=pos, total_charge=torch.tensor([1.0], dtype=DT),
                                  multiplicity=torch.tensor([2]), head="second",
                                  external_field=torch.tensor([30.0, -10.0, 5.0], dtype=DT)),
        # water and an OH radical: two fragments, MM charges from the label
        "fragments+mm": dict(species=water[0], positions=water[1], total_charge=torch.tensor([0.0, 0.0], dtype=DT),
                             multiplicity=torch.tensor([1, 2]), fragments=torch.tensor([0, 0, 0, 1, 1]),
                             mm_positions=mm_pos[:300], mm_charges=mm_q[:300]),
    }


@pytest.mark.parametrize("widths", ["learned", "fixed"])
@pytest.mark.parametrize("name", list(cases()))
def test_fused_equals_composed(name, widths):
    fused = fast_model(heads=["default", "second"], widths=widths)
    composed = composed_copy(fused)
    kw = cases()[name]
    assert fused_taken(fused, **kw) and not fused_taken(composed, **kw)
    a, b = fused(**kw), composed(**kw)
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-11, atol=1e-9), (key, a[key], b[key])
    assert abs(float(a["energy_nonlocal"])) > 1e-3 and abs(float(a["energy_electrostatic"])) > 1e-3
    ea, fa, ma = energy_and_forces(fused, **kw)
    eb, fb, mb = energy_and_forces(composed, **kw)
    assert torch.allclose(ea, eb, rtol=1e-12, atol=1e-9)
    scale = float(fb.abs().max())
    assert scale > 1.0
    assert torch.allclose(fa, fb, rtol=0, atol=1e-10 * scale), float((fa - fb).abs().max())
    assert torch.allclose(ma, mb, rtol=0, atol=1e-10 * scale), float((ma - mb).abs().max())


def test_fused_forces_match_finite_differences():
    model = fast_model()
    kw = cases()["pxylene+mm"]
    _, f_ml, f_mm = energy_and_forces(model, **kw)
    g = torch.Generator().manual_seed(3)

    def energy(pos, mm):   # no grad: the operator's forward-only branch
        with torch.no_grad():
            return model(**{**kw, "positions": pos, "mm_positions": mm})["energy"]

    h = 1e-5
    for _ in range(3):
        v, w = torch.randn(kw["positions"].shape, generator=g, dtype=DT), torch.randn(kw["mm_positions"].shape,
                                                                                        generator=g, dtype=DT)
        x, y = kw["positions"], kw["mm_positions"]
        fd = (8 * (energy(x + h * v, y + h * w) - energy(x - h * v, y - h * w))
              - (energy(x + 2 * h * v, y + 2 * h * w) - energy(x - 2 * h * v, y - 2 * h * w))) / (12 * h)
        exact = -(f_ml * v).sum() - (f_mm * w).sum()
        assert abs(float(fd - exact)) < 1e-6 * max(1.0, abs(float(exact))), (float(fd), float(exact))


def fused_taken(model, **kw):
    with torch.enable_grad():
        pos = kw["positions"].clone().requires_grad_(True)
        out = model(**{**kw, "positions": pos})
    return out["energy"].grad_fn is not None and type(out["energy"].grad_fn).__name__ == "_FastEnergyBackward"


def test_fused_path_only_for_frozen_eager_models_without_box():
    kw = cases()["pxylene+mm"]
    model = fast_model()
    assert fused_taken(model, **kw)
    # trainable weights: the composed path, and the weights get gradients
    model.charge_head.weight.requires_grad_(True)
    assert not fused_taken(model, **kw)
    model(**kw)["energy"].backward()
    assert model.charge_head.weight.grad is not None and model.charge_head.weight.grad.abs().sum() > 0
    model.requires_grad_(False)
    assert fused_taken(model, **kw)
    # switched off, under a box, scripted: composed
    model.fused_inference = False
    assert not fused_taken(model, **kw)
    model.fused_inference = True
    box = torch.eye(3, dtype=DT) * 3.0
    assert not fused_taken(model, **{**kw, "box": box, "mm_positions": None, "mm_charges": None})
    scripted = torch.jit.script(model)
    a, b = scripted(**kw), model(**kw)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-11, atol=1e-9), key
    # the equivariant variant has no fused path
    torch.manual_seed(0)
    eq = MLPolar(MLPolarConfig(elements=[1, 6, 8], channels=8)).double().requires_grad_(False)
    assert not fused_taken(eq, **kw)


def test_second_derivatives_use_the_composed_path():
    model = fast_model()
    kw = cases()["pxylene+mm"]
    e, f, fm = energy_and_forces(model, **kw, create_graph=True)
    assert f.requires_grad and model.fused_inference
    e0, f0, fm0 = energy_and_forces(model, **kw)
    assert torch.allclose(f.detach(), f0, rtol=0, atol=1e-10 * float(f0.abs().max()))
    assert f.grad_fn is not None and fm.grad_fn is not None   # differentiable again (force training, Hessians)
    pos = kw["positions"].clone().requires_grad_(True)
    out = model(**{**kw, "positions": pos})
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(out["energy"], pos, create_graph=True)


def test_checked_constants_are_reused_only_while_unchanged():
    model = fast_model()
    kw = cases()["pxylene+mm"]
    species = kw["species"].clone()
    model(**{**kw, "species": species})
    species[0] = 7                       # an element the model lacks, written in place
    with pytest.raises(ValueError, match="element 7"):
        model(**{**kw, "species": species})
    Q = torch.tensor([0.0], dtype=DT)
    model(**{**kw, "total_charge": Q})
    Q.fill_(1.0)                         # odd electron count with M = 1
    with pytest.raises(ValueError, match="impossible"):
        model(**{**kw, "total_charge": Q})
    with pytest.raises(ValueError, match="positions contain NaN"):
        model(**{**kw, "positions": kw["positions"] * float("nan")})
    bad = kw["mm_positions"].clone()
    bad[5, 1] = float("inf")
    with pytest.raises(ValueError, match="mm_positions contain NaN"):
        model(**{**kw, "mm_positions": bad})
    with torch.inference_mode():         # tensors without version counters are checked every call
        a = model(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()})
    assert torch.allclose(a["energy"], model(**kw)["energy"])


def test_float32_fused_agrees_with_float64():
    model = fast_model()
    kw = cases()["pxylene+mm"]
    e64, f64, m64 = energy_and_forces(model, **kw)
    model32 = model.float()
    kw32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    e32, f32, m32 = energy_and_forces(model32, **kw32)
    assert abs(float(e32) - float(e64)) < 1e-5 * abs(float(e64)) + 1e-2
    assert float((f32.double() - f64).abs().max()) < 1e-4 * float(f64.abs().max())
    assert float((m32.double() - m64).abs().max()) < 1e-4 * float(f64.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model = fast_model()
    kw = cases()["fragments+mm"]
    e, f, fm = energy_and_forces(model, **kw)
    cuda = model.to("cuda")
    kwc = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in kw.items()}
    assert fused_taken(cuda, **kwc)
    ec, fc, fmc = energy_and_forces(cuda, **kwc)
    assert torch.allclose(ec.cpu(), e, rtol=1e-12, atol=1e-9)
    assert torch.allclose(fc.cpu(), f, rtol=1e-10, atol=1e-9)
    assert torch.allclose(fmc.cpu(), fm, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_cpu_loops_equal_the_portable_aten_path(dtype, tol):
    """The operator's geometry runs as plain loops on the CPU and as ATen calls elsewhere (CUDA):
    both on the CPU give the same energy terms, charges and gradients."""
    from mlpolar.model.mlpolar import _validate_eagerly
    model = fast_model().to(dtype)
    kw = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
          for k, v in cases()["fragments+mm"].items()}
    pos, mm_pos, mm_q = kw["positions"], kw["mm_positions"], kw["mm_charges"]
    index, frag, targets, inv_count = _validate_eagerly(model, kw["species"], pos, kw["total_charge"],
                                                        kw["multiplicity"], kw["fragments"], mm_pos, mm_q, None, None)
    widths = model.widths_of(index)
    T0, T1, _, _ = model.mm(pos, widths, mm_pos, mm_q, None)
    args = (pos, widths, index, frag, targets, inv_count, T0, T1, torch.tensor([5.0, 0.0, -3.0], dtype=dtype),
            model._fused_weights(), len(model.charge_blocks), len(model.charge_updates), 0, model.coulomb,
            model.feature_length, model.cutoff, model.radial_basis, model.envelope_power, model.energy_scale,
            model.charge_blocks[0].norm, True)
    loops = torch.ops.mlpolar.fast_energy(*args, False)
    aten = torch.ops.mlpolar.fast_energy(*args, True)
    for a, b, name in zip(loops, aten, ["terms", "charges", "dE/dx", "dE/dT0", "dE/dT1"]):
        scale = max(1.0, float(b.abs().max()))
        assert a.dtype == b.dtype == dtype and a.shape == b.shape, name
        assert float((a - b).abs().max()) < tol * scale, (name, float((a - b).abs().max()), scale)
