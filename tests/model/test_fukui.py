"""Fukui equilibration: the compiled operator against the float64 torch reference, exact charge
conservation, first and second derivatives, symmetry, argument errors and TorchScript."""
from typing import Optional

import pytest
import torch

from mlpolar.model.fukui import fukui_equilibrate, fukui_equilibrate_reference, spin_channel_targets

op = torch.ops.mlpolar.fukui_equilibrate


def random_system(n_fragments, max_size, dtype, device, generator=None, shuffle=True):
    """Fragments of random sizes 1..max_size, atoms interleaved at random; integer charges with
    multiplicities of the right parity for a random electron count."""
    sizes = torch.randint(1, max_size + 1, (n_fragments,), generator=generator)
    fragments = torch.repeat_interleave(torch.arange(n_fragments), sizes)
    if shuffle:
        fragments = fragments[torch.randperm(len(fragments), generator=generator)]
    n = len(fragments)
    charges = 0.4 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    logits = 2.0 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    n_electrons = 6 * sizes + torch.randint(0, 3, (n_fragments,), generator=generator)
    total_charge = torch.randint(-2, 3, (n_fragments,), generator=generator)
    electrons = n_electrons - total_charge
    multiplicity = 1 + electrons % 2 + 2 * torch.randint(0, 2, (n_fragments,), generator=generator)
    as_ = dict(dtype=dtype, device=device)
    return (charges.to(**as_), logits.to(**as_), total_charge.to(**as_), multiplicity.to(device),
            fragments.to(device), n_electrons.to(device))


def fragment_sums(out, fragments, n_fragments):
    return torch.zeros(n_fragments, 2, dtype=torch.float64, device=out.device).index_add(
        0, fragments, out.to(torch.float64))


def test_spin_channel_targets_follow_mace_polar():
    Q = torch.tensor([0.0, -1.0, 1.0, 0.0])
    M = torch.tensor([1, 2, 3, 2])
    t = spin_channel_targets(Q, M)
    # (Q + M - 1)/2 and (Q - M + 1)/2, as in mace-torch's PolarMACE
    expected = torch.tensor([[0.0, 0.0], [0.0, -1.0], [1.5, -0.5], [0.5, -0.5]])
    assert torch.equal(t, expected)
    assert torch.equal(t.sum(1), Q) and torch.equal(t[:, 0] - t[:, 1], (M - 1).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_matches_reference(dtype, device):
    g = torch.Generator().manual_seed(1)
    q, l, Q, M, frag, _ = random_system(40, 12, dtype, device, g)
    targets = spin_channel_targets(Q, M).to(dtype)
    got = op(q, l, targets, frag)
    want = fukui_equilibrate_reference(q, l, targets, frag)
    assert got.dtype == dtype and got.shape == q.shape
    # both compute in float64 and round once, so they agree to the last bit or one ulp
    tol = 1e-13 if dtype == torch.float64 else 2e-7
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    # brute force per fragment with plain Python loops
    q64, l64, t64 = q.double().cpu(), l.double().cpu(), targets.double().cpu()
    for f in range(len(Q)):
        idx = (frag.cpu() == f).nonzero()[:, 0]
        w = torch.softmax(l64[idx], dim=0)
        brute = q64[idx] + w * (t64[f] - q64[idx].sum(0))
        torch.testing.assert_close(got.cpu()[idx].double(), brute, rtol=0, atol=1e-12 if dtype == torch.float64
                                   else 1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conservation_many_fragments(dtype, tol, seed, device):
    g = torch.Generator().manual_seed(seed)
    n_fragments = int(torch.randint(1, 300, (1,), generator=g))
    q, l, Q, M, frag, ne = random_system(n_fragments, 40, dtype, device, g)
    q = q * 10  # far from the targets: the correction does all the work
    out = fukui_equilibrate(q, l, Q, M, frag, n_electrons=ne)
    sums = fragment_sums(out, frag, n_fragments)
    targets = spin_channel_targets(Q.double(), M)
    assert (sums - targets).abs().max().item() < tol
    assert (sums.sum(1) - Q.double()).abs().max().item() < tol  # total charge
    assert (sums[:, 0] - sums[:, 1] - (M - 1).double()).abs().max().item() < tol  # total spin


def test_one_large_fragment_float32_and_large_logits(device):
    # float32 outputs are rounded once each, so their float64 sum drifts like sqrt(n) |q| 3e-8:
    # about 3e-6 here for 100k atoms with charges of 0.3 e, inside the 1e-5 target
    n = 100_000
    q = 0.3 * torch.randn(n, 2, dtype=torch.float32, device=device)
    l = 80.0 * torch.randn(n, 2, dtype=torch.float32, device=device)  # exp would overflow unshifted
    out = fukui_equilibrate(q, l, torch.tensor([1], device=device), torch.tensor([2], device=device))
    assert torch.isfinite(out).all()
    sums = fragment_sums(out, torch.zeros(n, dtype=torch.long, device=device), 1)
    assert (sums - torch.tensor([[1.0, 0.0]], dtype=torch.float64, device=device)).abs().max().item() < 1e-5


def test_invariances(device):
    g = torch.Generator().manual_seed(3)
    q, l, Q, M, frag, _ = random_system(8, 10, torch.float64, device, g)
    out = fukui_equilibrate(q, l, Q, M, frag)
    # a constant added to a fragment's logits does not change its softmax
    shift = torch.randn(8, 2, generator=g, dtype=torch.float64).to(device)
    torch.testing.assert_close(fukui_equilibrate(q, l + 5 * shift[frag], Q, M, frag), out, rtol=0, atol=1e-13)
    # charges that already meet the targets are left alone
    torch.testing.assert_close(fukui_equilibrate(out, torch.randn_like(l), Q, M, frag), out, rtol=0, atol=1e-13)


def test_permutation_equivariance(device):
    g = torch.Generator().manual_seed(4)
    q, l, Q, M, frag, _ = random_system(12, 9, torch.float64, device, g)
    out = fukui_equilibrate(q, l, Q, M, frag)
    atoms = torch.randperm(len(frag), generator=g).to(device)
    torch.testing.assert_close(fukui_equilibrate(q[atoms], l[atoms], Q, M, frag[atoms]), out[atoms], rtol=0,
                               atol=1e-13)
    # relabelling the fragments (new id = relabel[old id]) permutes only the per-fragment inputs
    relabel = torch.randperm(12, generator=g).to(device)
    inverse = torch.argsort(relabel)
    torch.testing.assert_close(fukui_equilibrate(q, l, Q[inverse], M[inverse], relabel[frag]), out, rtol=0,
                               atol=1e-13)


def test_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(5)
    q, l, Q, M, frag, _ = random_system(3, 4, torch.float64, "cpu", g)
    q.requires_grad_()
    l.requires_grad_()
    Q = Q.clone().requires_grad_()  # a floating total charge is differentiable too

    def f(q, l, Q):
        return fukui_equilibrate(q, l, Q, M, frag)

    assert torch.autograd.gradcheck(f, (q, l, Q))
    assert torch.autograd.gradgradcheck(f, (q, l, Q))
    # the backward operator is itself differentiable (its analytic backward)
    t = spin_channel_targets(Q.detach(), M).requires_grad_()
    grad_out = torch.randn(q.shape, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: torch.ops.mlpolar.fukui_equilibrate_backward(*a, frag),
                                    (grad_out, q, l, t))


def test_derivatives_match_reference_autograd(device):
    """First derivatives and the force-training pattern (create_graph=True, then backward)."""
    g = torch.Generator().manual_seed(6)
    q0, l0, Q, M, frag, _ = random_system(30, 15, torch.float64, device, g)
    t0 = spin_channel_targets(Q, M)
    weights = torch.randn(q0.shape, generator=g, dtype=torch.float64).to(device)
    results = []
    for fn in (op, fukui_equilibrate_reference):
        q, l, t = (x.clone().requires_grad_() for x in (q0, l0, t0))
        energy = (weights * fn(q, l, t, frag) ** 2).sum()
        dq, dl, dt = torch.autograd.grad(energy, (q, l, t), create_graph=True)
        loss = (dq ** 2).sum() + (dl ** 3).sum() + (dt * t).sum()
        second = torch.autograd.grad(loss, (q, l, t))
        results.append((dq, dl, dt) + second)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_gradients_match_reference():
    g = torch.Generator().manual_seed(7)
    q0, l0, Q, M, frag, _ = random_system(20, 10, torch.float32, "cpu", g)
    t0 = spin_channel_targets(Q, M)
    grads = []
    for fn in (op, fukui_equilibrate_reference):
        q, l = q0.clone().requires_grad_(), l0.clone().requires_grad_()
        fn(q, l, t0, frag).pow(2).sum().backward()
        grads.append((q.grad, l.grad))
    for got, want in zip(*grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_torchscript_gives_the_same_result():
    @torch.jit.script
    def scripted(q: torch.Tensor, l: torch.Tensor, Q: torch.Tensor, M: torch.Tensor,
                 frag: Optional[torch.Tensor]) -> torch.Tensor:
        return fukui_equilibrate(q, l, Q, M, frag) * 2.0

    g = torch.Generator().manual_seed(8)
    q, l, Q, M, frag, _ = random_system(5, 6, torch.float64, "cpu", g)
    q.requires_grad_()
    got = scripted(q, l, Q, M, frag)
    want = fukui_equilibrate(q, l, Q, M, frag) * 2.0
    assert torch.equal(got, want)
    (gq,) = torch.autograd.grad(got.sum(), q)
    (wq,) = torch.autograd.grad(want.sum(), q)
    assert torch.equal(gq, wq)
    one = scripted(q[:4], l[:4], Q[:1], M[:1], None)
    assert torch.equal(one, fukui_equilibrate(q[:4], l[:4], Q[:1], M[:1]) * 2.0)


def test_opcheck_schema_autograd_and_fake_tensor():
    g = torch.Generator().manual_seed(9)
    q, l, Q, M, frag, _ = random_system(4, 5, torch.float64, "cpu", g)
    t = spin_channel_targets(Q, M)
    torch.library.opcheck(op, (q.requires_grad_(), l.requires_grad_(), t, frag),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# errors: raised before any work, naming the argument


def _good(n=5, F=2):
    q = torch.zeros(n, 2, dtype=torch.float64)
    frag = torch.tensor([0, 0, 1, 1, 1][:n])
    return q, torch.zeros(n, 2, dtype=torch.float64), torch.zeros(F), torch.ones(F, dtype=torch.long), frag


@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.update(charges=a["charges"].half()), TypeError, "charges must be float32 or float64"),
    (lambda a: a.update(charges=torch.zeros(5, 3, dtype=torch.float64)), ValueError,
     r"charges must have shape \[n, 2\]"),
    (lambda a: a.update(fukui_logits=a["fukui_logits"].float()), TypeError, "fukui_logits must have the dtype"),
    (lambda a: a.update(fukui_logits=torch.zeros(4, 2, dtype=torch.float64)), ValueError,
     "fukui_logits must have the shape"),
    (lambda a: a.update(fukui_logits=torch.zeros(5, 2, dtype=torch.float64, device="meta")), ValueError,
     "fukui_logits is on meta"),
    (lambda a: a.update(total_charge=torch.zeros(2, 1)), ValueError, r"total_charge must have shape \[F\]"),
    (lambda a: a.update(multiplicity=torch.ones(3, dtype=torch.long)), ValueError, "multiplicity must have shape"),
    (lambda a: a.update(multiplicity=torch.ones(2)), TypeError, "multiplicity must be an integer tensor"),
    (lambda a: a.update(multiplicity=torch.tensor([1, 0])), ValueError, "multiplicity must be >= 1.*fragment 1"),
    (lambda a: a.update(fragments=a["fragments"].int()), TypeError, "fragments must be an int64 tensor"),
    (lambda a: a.update(fragments=torch.tensor([0, 0, 1, 1])), ValueError, r"fragments must have shape \[n\] = \[5\]"),
    (lambda a: a.update(fragments=torch.tensor([0, 0, 1, 2, 1])), ValueError,
     "ids in 0..F-1 = 0..1, found ids from 0 to 2"),
    (lambda a: a.update(fragments=torch.tensor([0, -1, 1, 1, 1])), ValueError, "found ids from -1"),
    (lambda a: a.update(fragments=torch.zeros(5, dtype=torch.long)), ValueError, "fragment 1 has no atoms"),
    (lambda a: a.update(fragments=None), ValueError, "fragments is None .* total_charge has 2 entries"),
    (lambda a: a.update(n_electrons=torch.tensor([8, 9])), ValueError,
     "fragment 1: charge 0 and multiplicity 1 are impossible"),
    (lambda a: a.update(n_electrons=torch.tensor([8, 9]), multiplicity=torch.tensor([1, 3])), ValueError,
     "fragment 1: charge 0 and multiplicity 3"),
    (lambda a: a.update(n_electrons=torch.tensor([2, 2]), multiplicity=torch.tensor([5, 1])), ValueError,
     "fragment 0: .* multiplicity 5"),
    (lambda a: a.update(n_electrons=torch.tensor([2, 2]), total_charge=torch.tensor([3.0, 0.0]),
                        multiplicity=torch.tensor([2, 1])), ValueError, "fragment 0"),
    (lambda a: a.update(n_electrons=torch.tensor([8, 8]), total_charge=torch.tensor([0.5, 0.0])), ValueError,
     "total charge must be an integer"),
    (lambda a: a.update(n_electrons=torch.tensor([8.0, 8.0])), TypeError, "n_electrons must be an integer tensor"),
])
def test_bad_arguments_are_rejected(change, error, match):
    q, l, Q, M, frag = _good()
    args = dict(charges=q, fukui_logits=l, total_charge=Q, multiplicity=M, fragments=frag)
    change(args)
    with pytest.raises(error, match=match):
        fukui_equilibrate(**args)


def test_valid_charge_multiplicity_pairs_pass():
    q, l, _, _, frag = _good()
    # water (10 electrons) neutral singlet; OH radical (9 electrons) doublet; cation of 9 electrons: 8, triplet
    out = fukui_equilibrate(q, l, torch.tensor([0, 1]), torch.tensor([1, 3]), frag,  # integer charges are fine
                            n_electrons=torch.tensor([10, 9]))
    torch.testing.assert_close(fragment_sums(out, frag, 2), torch.tensor([[0.0, 0.0], [1.5, -0.5]],
                                                                         dtype=torch.float64))


def test_operator_checks_fragment_ids_itself():
    q, l, _, _, _ = _good()
    with pytest.raises(RuntimeError, match="fragment id 2 of atom 4 is outside 0..F-1"):
        op(q, l, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(RuntimeError, match="targets must have the dtype of charges|logits and targets must have"):
        op(q, l, torch.zeros(2, 2), torch.tensor([0, 0, 1, 1, 1]))


def test_kernels_registered_for_every_dispatch_key():
    import shutil
    from pathlib import Path
    keys = ["CPU", "Meta", "Autograd"]
    has_nvcc = any(Path(p).exists() for p in ("/usr/local/cuda-13.0/bin/nvcc", "/usr/local/cuda/bin/nvcc")) or \
        shutil.which("nvcc") is not None
    if torch.version.cuda and has_nvcc:
        keys.append("CUDA")  # compiled (not run) without a GPU
    for name in ("fukui_equilibrate", "fukui_equilibrate_backward"):
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mlpolar::{name}", key), (name, key)
