"""Independent brute-force reference for Gaussian-smeared multipole electrostatics (tests only).

Plain torch float64, no code shared with mlpolar, written to be read rather than to be fast.
Everything is differentiable with autograd (positions, multipoles, widths, box), so the tests
take reference forces and parameter gradients from it with ``torch.autograd.grad``.

Conventions (docs/electrostatics_api.md): nm, e, kJ/mol, ``ONE_4PI_EPS0 = 138.93545764438198``.

* A site is the differential operator ``D = q + mu.grad + 1/3 Theta:grad grad`` acting on a
  pair kernel ``K(x)``, ``x = r_receiver - r_source``.  Applied to the *source* the gradient
  changes sign (``d/dr_j = -d/dx``), so the potential of source j is
  ``phi_j(x) = q_j K - mu_j.grad K + 1/3 Theta_j:grad grad K`` and the energy of receiver i in a
  potential is ``q_i phi + mu_i.grad phi + 1/3 Theta_i:grad grad phi``.
* The multipole derivatives are taken by autograd (``torch.autograd.grad(create_graph=True)``)
  of the *scalar* kernel with respect to the displacement: no multipole T-tensor is written out.
* Pair kernels: point sites ``1/r``; Gaussian sites ``erf(r / a_ij) / r`` with
  ``a_ij = sqrt(2 (s_i^2 + s_j^2))``.
* Open boundaries: ``E = 1/2 sum_{i != j, not excluded} D_i D_j' K(x_ij)``.
* Periodic (box rows a, b, c; any triclinic cell): classical Ewald with tin-foil boundaries:
  - real space over explicit image shifts ``|n_k| <= nimages`` (around the wrapped displacement)
    of ``K(x) - erf(alpha r)/r``, every ordered pair (i, j) including i == j, leaving out the
    site's own n = 0 term and, for an excluded pair, its minimum image;
  - reciprocal ``(2 pi / V) sum_{k != 0} exp(-k^2 / 4 alpha^2) / k^2 |S(k)|^2`` over all integer
    k-vectors with ``|m_d| <= kmax_d``, ``S(k) = sum_j (q_j + i mu_j.k - 1/3 k.Theta_j.k) e^{i k.r_j}``;
  - minus the Ewald-Gaussian self term ``1/2 D_i D_i' [erf(alpha r)/r](0)`` (the r -> 0 limit by
    autograd of the Taylor series of erf(alpha r)/r in r^2);
  - minus ``D_i D_j' erf(alpha r)/r`` at the minimum image of every excluded pair;
  - plus the neutralising background ``-pi Q^2 / (2 V alpha^2) + (2 pi / V) Q sum_i q_i s_i^2``.
* ``include_self`` adds ``1/2 D_i D_i' [erf(r / (2 s_i)) / r](0)`` per site (needs widths).

``reference_potential`` returns ``(phi [N], field [N,3], field_grad [N,3,3])`` with
field = -grad phi, field_grad = -grad grad phi at each site from all *other* densities (and every
periodic image, the site's own images included), so that
``E = 1/2 sum_i (q_i phi_i - mu_i.E_i - 1/3 Theta_i:gradE_i) (+ self-energies)``.

Run ``python tests/reference.py`` for the reference's own consistency checks.
"""
import itertools
import math

import torch

ONE_4PI_EPS0 = 138.93545764438198  # kJ nm / (mol e^2)

# Convergence targets of the default Ewald parameters (about 1e-16 relative).
_REAL_SPACE_ARG = 6.5     # alpha * (closest left-out image distance); erfc(6.5) = 4e-20
_RECIP_SPACE_ARG = 42.0   # k_cut^2 / (4 alpha^2) of the outermost k-vector kept; exp(-42) = 6e-19


# ----------------------------------------------------------------------------- inputs


def _prepare(positions, charges, dipoles, quadrupoles, widths, box, exclusions):
    dt = torch.float64
    pos = positions.to(dt)
    dev = pos.device
    n = pos.shape[0]
    if pos.shape != (n, 3):
        raise ValueError("positions must be [N,3]")
    q = charges.to(device=dev, dtype=dt)
    if q.shape != (n,):
        raise ValueError("charges must be [N]")
    mu = None if dipoles is None else dipoles.to(device=dev, dtype=dt)
    if mu is not None and mu.shape != (n, 3):
        raise ValueError("dipoles must be [N,3]")
    th = None if quadrupoles is None else quadrupoles.to(device=dev, dtype=dt)
    if th is not None and th.shape != (n, 3, 3):
        raise ValueError("quadrupoles must be [N,3,3]")
    s = None if widths is None else widths.to(device=dev, dtype=dt)
    if s is not None and (s.shape != (n,) or bool((s < 0).any())):
        raise ValueError("widths must be [N] and >= 0")
    bx = None if box is None else box.to(device=dev, dtype=dt)
    if bx is not None and bx.shape != (3, 3):
        raise ValueError("box must be [3,3]")
    pairs = set()
    if exclusions is not None:
        for i, j in exclusions.detach().cpu().reshape(-1, 2).tolist():
            if i != j:
                pairs.add((min(i, j), max(i, j)))
    return pos, q, mu, th, s, bx, sorted(pairs)


# ----------------------------------------------------------------------------- kernels
# Every kernel maps displacements x [P,3] (plus per-pair parameters [P]) to K [P].


def _norm(x):
    return torch.sqrt((x * x).sum(-1))


def _pair_width(s, i, j):
    """a_ij = sqrt(2 (s_i^2 + s_j^2)) per pair, with a safe value 1 where both sites are points."""
    if s is None:
        return None, None
    a2 = 2.0 * (s[i] ** 2 + s[j] ** 2)
    gauss = a2 > 0
    return torch.sqrt(torch.where(gauss, a2, torch.ones_like(a2))), gauss


def _coulomb_kernel(a, gauss):
    def k(x):
        r = _norm(x)
        if a is None:
            return 1.0 / r
        return torch.where(gauss, torch.erf(r / a) / r, 1.0 / r)
    return k


def _ewald_real_kernel(a, gauss, alpha):
    """K(x) - erf(alpha r)/r, written with erfc so that it stays accurate at large r."""
    def k(x):
        r = _norm(x)
        point = torch.erfc(alpha * r) / r
        if a is None:
            return point
        return torch.where(gauss, (torch.erfc(alpha * r) - torch.erfc(r / a)) / r, point)
    return k


def _erf_kernel(beta):
    def k(x):
        r = _norm(x)
        return torch.erf(beta * r) / r
    return k


def _erf_series_kernel(beta, nterms=8):
    """erf(beta r)/r as its Taylor series in r^2: smooth at x = 0, for the r -> 0 limits."""
    def k(x):
        r2 = (x * x).sum(-1)
        b2r2 = beta ** 2 * r2
        out = torch.zeros_like(r2)
        for n in range(nterms):
            out = out + (-1.0) ** n * b2r2 ** n / (math.factorial(n) * (2 * n + 1))
        return 2.0 * beta / math.sqrt(math.pi) * out
    return k


# ----------------------------------------------------------------------------- operators


def _grad(f, x):
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _derivatives(f, x, order):
    """[f, grad f, grad grad f][:order+1] of a per-pair scalar f(x) [P] w.r.t. x [P,3] (autograd)."""
    out = [f]
    if order >= 1:
        g = _grad(f, x)
        out.append(g)
        if order >= 2:
            out.append(torch.stack([_grad(g[:, a], x) for a in range(3)], dim=1))
    return out


def _order(mu, th):
    return 2 if th is not None else (1 if mu is not None else 0)


def _apply(d, q, mu, th, sign):
    """q d0 + sign mu.d1 + 1/3 Theta:d2 with d = [d0, d1, d2] (sign -1 for a source)."""
    out = q * d[0]
    if mu is not None:
        out = out + sign * (mu * d[1]).sum(-1)
    if th is not None:
        out = out + (th * d[2]).sum((-1, -2)) / 3.0
    return out


def _leaf(x):
    return x if x.requires_grad else x.detach().requires_grad_(True)


def _source_potential(kernel, x, q, mu, th):
    """phi_j(x) = q K - mu.grad K + 1/3 Theta:grad grad K per pair (x must require grad)."""
    return _apply(_derivatives(kernel(x), x, _order(mu, th)), q, mu, th, -1.0)


def _pair_energy(kernel, x, i, j, q, mu, th):
    """D_i D_j' K(x) per pair; i, j index the receiver and source sites."""
    x = _leaf(x)
    sel = lambda t, idx: None if t is None else t[idx]  # noqa: E731
    f = _source_potential(kernel, x, q[j], sel(mu, j), sel(th, j))
    d = _derivatives(f, x, _order(mu, th))
    return _apply(d, q[i], sel(mu, i), sel(th, i), 1.0)


def _pair_potential(kernel, x, j, q, mu, th):
    """(f, grad f, grad grad f) per pair of the source potential of site j at displacement x."""
    x = _leaf(x)
    sel = lambda t, idx: None if t is None else t[idx]  # noqa: E731
    f = _source_potential(kernel, x, q[j], sel(mu, j), sel(th, j))
    return _derivatives(f, x, 2)


def _scatter(n, i, d):
    phi = torch.zeros(n, dtype=d[0].dtype, device=d[0].device).index_add(0, i, d[0])
    g = torch.zeros(n, 3, dtype=d[0].dtype, device=d[0].device).index_add(0, i, d[1])
    h = torch.zeros(n, 3, 3, dtype=d[0].dtype, device=d[0].device).index_add(0, i, d[2])
    return phi, g, h


# ----------------------------------------------------------------------------- geometry


def box_heights(box):
    """Distances between opposite faces of the cell (perpendicular heights) [3]."""
    a, b, c = box[0], box[1], box[2]
    vol = torch.abs(torch.det(box))
    return torch.stack([vol / torch.linalg.norm(torch.linalg.cross(b, c)),
                        vol / torch.linalg.norm(torch.linalg.cross(c, a)),
                        vol / torch.linalg.norm(torch.linalg.cross(a, b))])


def default_ewald_parameters(box, widths=None, alpha=None, kmax=None, nimages=None, real_cut=None):
    """(alpha, kmax [3 ints], nimages, real_cut, k_cut) converging the reference Ewald sum to ~1e-16.

    ``k_cut``: with the default kmax only k-vectors with |k| <= k_cut are summed (None: all).

    ``real_cut``: real-space images farther than this are dropped (their erfc terms are below
    erfc(7) ~ 4e-23); images within it are taken from the shifts ``|n_k| <= nimages``.
    """
    box = box.detach().to(torch.float64)
    h_min = float(box_heights(box).min())
    a_max = 0.0 if widths is None or widths.numel() == 0 else 2.0 * float(widths.detach().max())
    if alpha is None:
        # real-space radius ~0.6 of the smallest cell height (cheap autograd real space, modest
        # k-space), long enough for the Gaussian part erfc(r / a) to have died out as well
        r_c = max(0.6 * h_min, _REAL_SPACE_ARG * a_max)
        alpha = _REAL_SPACE_ARG / r_c
    if real_cut is None:
        real_cut = 7.0 * max(1.0 / alpha, a_max)
    if nimages is None:
        nimages = max(1, math.ceil(real_cut / h_min - 0.5))
    k_cut = None
    if kmax is None:
        k_cut = 2.0 * alpha * math.sqrt(_RECIP_SPACE_ARG)
        kmax = [math.ceil(k_cut * float(torch.linalg.norm(box[d])) / (2 * math.pi)) for d in range(3)]
    elif isinstance(kmax, int):
        kmax = [kmax] * 3
    return float(alpha), [int(k) for k in kmax], int(nimages), float(real_cut), k_cut


def _periodic_images(pos, box, nimages, excluded, real_cut):
    """Displacements x = r_i - r_j + shift of every ordered pair and image kept in real space.

    Returns (x [P,3], i [P], j [P], x_min [E,3], i_ex [E], j_ex [E]); the second triple lists the
    minimum images of the excluded pairs (both orders), which are left out of the first.
    """
    n = pos.shape[0]
    dev = pos.device
    dr = pos[:, None, :] - pos[None, :, :]                         # [N,N,3]
    with torch.no_grad():
        wrap = torch.round(dr @ torch.linalg.inv(box))             # fractional shift to |f| <= 1/2
    rng = range(-nimages, nimages + 1)
    shifts = torch.tensor(list(itertools.product(rng, rng, rng)), dtype=pos.dtype, device=dev)
    x = (dr - wrap @ box)[:, :, None, :] + (shifts @ box)[None, None]  # [N,N,S,3]
    with torch.no_grad():
        dist = _norm(x)
    keep = dist < real_cut
    ii = torch.arange(n, device=dev)
    nearest = dist.argmin(-1)                                      # minimum image per pair
    keep[ii, ii, nearest[ii, ii]] = False                          # the site itself
    ex_i = torch.tensor([p[0] for p in excluded] + [p[1] for p in excluded], dtype=torch.long, device=dev)
    ex_j = torch.tensor([p[1] for p in excluded] + [p[0] for p in excluded], dtype=torch.long, device=dev)
    keep[ex_i, ex_j, nearest[ex_i, ex_j]] = False
    idx = keep.nonzero()
    x_keep = x[idx[:, 0], idx[:, 1], idx[:, 2]]
    x_min = x[ex_i, ex_j, nearest[ex_i, ex_j]]
    return x_keep, idx[:, 0], idx[:, 1], x_min, ex_i, ex_j


def _kvectors(box, kmax, k_cut=None):
    """Half of the nonzero k-vectors 2 pi m @ inv(box).T, |m_d| <= kmax_d (k and -k give equal
    terms, so every sum over them is doubled), optionally only those with |k| <= k_cut."""
    dev = box.device
    m = torch.tensor([t for t in itertools.product(*(range(-k, k + 1) for k in kmax)) if t > (0, 0, 0)],
                     dtype=box.dtype, device=dev)
    kv = 2.0 * math.pi * m @ torch.linalg.inv(box).T              # k . a_d = 2 pi m_d
    if k_cut is not None:
        with torch.no_grad():
            inside = (kv * kv).sum(-1) <= k_cut ** 2
        kv = kv[inside]
    return kv


def _structure_factor(kv, pos, q, mu, th, form=None):
    """Re, Im of S(k) = sum_j F_j(k) e^{i k.r_j}, F_j = (q_j + i mu_j.k - 1/3 k.Theta_j.k) form_j(k)."""
    theta = kv @ pos.T                                             # [K,N]
    re_f = q[None, :].expand_as(theta)
    if th is not None:
        re_f = re_f - torch.einsum("ka,nab,kb->kn", kv, th, kv) / 3.0
    im_f = kv @ mu.T if mu is not None else torch.zeros_like(theta)
    if form is not None:
        re_f, im_f = re_f * form, im_f * form
    c, s = torch.cos(theta), torch.sin(theta)
    return (re_f * c - im_f * s).sum(1), (re_f * s + im_f * c).sum(1)


def _self_terms(q, mu, th, beta):
    """D_i D_i' [erf(beta r)/r](0) per site (beta [N] or float), by autograd of the series."""
    n = q.shape[0]
    beta = torch.as_tensor(beta, dtype=q.dtype, device=q.device).expand(n)
    x = torch.zeros(n, 3, dtype=q.dtype, device=q.device, requires_grad=True)
    idx = torch.arange(n, device=q.device)
    return _pair_energy(_erf_series_kernel(beta), x, idx, idx, q, mu, th)


def _self_potential(q, mu, th, beta):
    n = q.shape[0]
    x = torch.zeros(n, 3, dtype=q.dtype, device=q.device, requires_grad=True)
    return _pair_potential(_erf_series_kernel(beta), x, torch.arange(n, device=q.device), q, mu, th)


def _include_self_energy(q, mu, th, s):
    if s is None or bool((s <= 0).any()):
        raise ValueError("include_self needs widths > 0")
    return 0.5 * _self_terms(q, mu, th, 1.0 / (2.0 * s)).sum()


# ----------------------------------------------------------------------------- public API


def reference_energy(positions, charges, dipoles=None, quadrupoles=None, widths=None, box=None,
                     exclusions=None, include_self=False, alpha=None, kmax=None, nimages=None):
    """Electrostatic energy (kJ/mol, float64 scalar) by brute force; see the module docstring."""
    with torch.enable_grad():
        pos, q, mu, th, s, bx, excluded = _prepare(positions, charges, dipoles, quadrupoles, widths,
                                                   box, exclusions)
        n = pos.shape[0]
        dev = pos.device
        if bx is None:
            mask = ~torch.eye(n, dtype=torch.bool, device=dev)
            for i, j in excluded:
                mask[i, j] = mask[j, i] = False
            i, j = mask.nonzero().unbind(1)
            a, gauss = _pair_width(s, i, j)
            x = pos[i] - pos[j]
            energy = 0.5 * _pair_energy(_coulomb_kernel(a, gauss), x, i, j, q, mu, th).sum()
        else:
            alpha, kmax, nimages, real_cut, k_cut = default_ewald_parameters(bx, s, alpha, kmax, nimages)
            x, i, j, x_ex, i_ex, j_ex = _periodic_images(pos, bx, nimages, excluded, real_cut)
            a, gauss = _pair_width(s, i, j)
            energy = 0.5 * _pair_energy(_ewald_real_kernel(a, gauss, alpha), x, i, j, q, mu, th).sum()
            if len(excluded):
                energy = energy - 0.5 * _pair_energy(_erf_kernel(alpha), x_ex, i_ex, j_ex, q, mu, th).sum()
            energy = energy - 0.5 * _self_terms(q, mu, th, alpha).sum()
            vol = torch.abs(torch.det(bx))
            kv = _kvectors(bx, kmax, k_cut)
            k2 = (kv * kv).sum(-1)
            re_s, im_s = _structure_factor(kv, pos, q, mu, th)
            energy = energy + 4 * math.pi / vol * (torch.exp(-k2 / (4 * alpha ** 2)) / k2
                                                   * (re_s ** 2 + im_s ** 2)).sum()
            qtot = q.sum()
            energy = energy - math.pi * qtot ** 2 / (2 * vol * alpha ** 2)
            if s is not None:
                energy = energy + 2 * math.pi / vol * qtot * (q * s ** 2).sum()
        if include_self:
            energy = energy + _include_self_energy(q, mu, th, s)
        return ONE_4PI_EPS0 * energy


def reference_potential(positions, charges, dipoles=None, quadrupoles=None, widths=None, box=None,
                        exclusions=None, include_self=False, alpha=None, kmax=None, nimages=None):
    """(phi [N] kJ/mol/e, field [N,3], field_grad [N,3,3]) at every site from all other densities.

    ``include_self`` is accepted for symmetry with reference_energy; the potential never contains
    a site's own density (the self-energy is added to the energy only).
    """
    with torch.enable_grad():
        pos, q, mu, th, s, bx, excluded = _prepare(positions, charges, dipoles, quadrupoles, widths,
                                                   box, exclusions)
        n = pos.shape[0]
        dev = pos.device
        if include_self and (s is None or bool((s <= 0).any())):
            raise ValueError("include_self needs widths > 0")
        if bx is None:
            mask = ~torch.eye(n, dtype=torch.bool, device=dev)
            for i, j in excluded:
                mask[i, j] = mask[j, i] = False
            i, j = mask.nonzero().unbind(1)
            a, gauss = _pair_width(s, i, j)
            phi, g, h = _scatter(n, i, _pair_potential(_coulomb_kernel(a, gauss), pos[i] - pos[j], j, q, mu, th))
        else:
            alpha, kmax, nimages, real_cut, k_cut = default_ewald_parameters(bx, s, alpha, kmax, nimages)
            x, i, j, x_ex, i_ex, j_ex = _periodic_images(pos, bx, nimages, excluded, real_cut)
            a, gauss = _pair_width(s, i, j)
            phi, g, h = _scatter(n, i, _pair_potential(_ewald_real_kernel(a, gauss, alpha), x, j, q, mu, th))
            if len(excluded):
                pe, ge, he = _scatter(n, i_ex, _pair_potential(_erf_kernel(alpha), x_ex, j_ex, q, mu, th))
                phi, g, h = phi - pe, g - ge, h - he
            ps, gs, hs = _self_potential(q, mu, th, torch.full((n,), alpha, dtype=q.dtype, device=dev))
            phi, g, h = phi - ps, g - gs, h - hs
            # reciprocal space: phi(y) = (4 pi / V) sum_k w(k) Re[e^{i k.y} conj S(k)]
            vol = torch.abs(torch.det(bx))
            kv = _kvectors(bx, kmax, k_cut)
            k2 = (kv * kv).sum(-1)
            w = 8 * math.pi / vol * torch.exp(-k2 / (4 * alpha ** 2)) / k2
            re_s, im_s = _structure_factor(kv, pos, q, mu, th)
            theta = pos @ kv.T                                     # [N,K]
            c, sn = torch.cos(theta), torch.sin(theta)
            re_part = (c * re_s + sn * im_s) * w                   # Re[e^{i k.y} S*]
            im_part = (c * im_s - sn * re_s) * w                   # Re[i e^{i k.y} S*]
            phi = phi + re_part.sum(1)
            g = g + im_part @ kv
            h = h - torch.einsum("nk,ka,kb->nab", re_part, kv, kv)
            # neutralising background: phi_bg,i = dE_bg / dq_i
            qtot = q.sum()
            phi = phi - math.pi * qtot / (vol * alpha ** 2)
            if s is not None:
                phi = phi + 2 * math.pi / vol * ((q * s ** 2).sum() + qtot * s ** 2)
        return ONE_4PI_EPS0 * phi, -ONE_4PI_EPS0 * g, -ONE_4PI_EPS0 * h


def self_energies(charges, dipoles=None, quadrupoles=None, widths=None):
    """Per-site Gaussian self-energies 1/2 D_i D_i' [erf(r/(2 s_i))/r](0), kJ/mol [N]."""
    with torch.enable_grad():
        q = charges.to(torch.float64)
        mu = None if dipoles is None else dipoles.to(torch.float64)
        th = None if quadrupoles is None else quadrupoles.to(torch.float64)
        s = widths.to(torch.float64)
        return ONE_4PI_EPS0 * 0.5 * _self_terms(q, mu, th, 1.0 / (2.0 * s))


def energy_from_potential(charges, dipoles, quadrupoles, phi, field, field_grad):
    """1/2 sum_i (q_i phi_i - mu_i.E_i - 1/3 Theta_i:gradE_i)."""
    e = (charges * phi).sum()
    if dipoles is not None:
        e = e - (dipoles * field).sum()
    if quadrupoles is not None:
        e = e - (quadrupoles * field_grad).sum() / 3.0
    return 0.5 * e


def kspace_gaussian_energy(positions, charges, dipoles=None, quadrupoles=None, widths=None, box=None, kmax=None):
    """(2 pi / V) sum_{k != 0} |S_G(k)|^2 / k^2 with each site's Gaussian form factor e^{-k^2 s^2/2}.

    The whole energy of periodic Gaussian densities (own density and all images included, k = 0
    left out), i.e. the alpha -> infinity limit of the Ewald sum with include_self=True.
    """
    pos, q, mu, th, s, bx, _ = _prepare(positions, charges, dipoles, quadrupoles, widths, box, None)
    k_cut = None
    if kmax is None:
        k_cut = math.sqrt(2 * _RECIP_SPACE_ARG) / float(s.min())
        kmax = [math.ceil(k_cut * float(torch.linalg.norm(bx[d])) / (2 * math.pi)) for d in range(3)]
    elif isinstance(kmax, int):
        kmax = [kmax] * 3
    kv = _kvectors(bx, kmax, k_cut)
    k2 = (kv * kv).sum(-1)
    re_s, im_s = _structure_factor(kv, pos, q, mu, th, form=torch.exp(-k2[:, None] * s[None, :] ** 2 / 2))
    vol = torch.abs(torch.det(bx))
    return ONE_4PI_EPS0 * 4 * math.pi / vol * ((re_s ** 2 + im_s ** 2) / k2).sum()


def multipoles_as_charges(positions, charges, dipoles, quadrupoles, widths, d):
    """Each site as a cluster of (Gaussian) charges with the same moments up to O(d^2).

    A dipole mu: +-|mu|/d at +-d/2 along mu. A traceless quadrupole Theta = sum_c l_c u_c u_c^T
    (eigen-decomposed): l_c / (3 d^2) at +d u_c and at -d u_c, so that the cluster has no charge,
    no dipole, second moment 1/2 sum q r r = Theta / 3 with zero trace, and no third moment.
    Returns
    (positions, charges, widths, exclusions) of the charge system, the exclusions removing every
    pair within one site (so that sites still do not see their own density).
    """
    pos, qs, ws, owner = [], [], [], []
    n = positions.shape[0]
    for i in range(n):
        r = positions[i]
        w = None if widths is None else widths[i]

        def add(p, qq):
            pos.append(p)
            qs.append(qq)
            ws.append(w)
            owner.append(i)
        add(r, charges[i])
        if dipoles is not None:
            m = dipoles[i]
            size = torch.linalg.norm(m)
            u = m / size
            add(r + 0.5 * d * u, size / d)
            add(r - 0.5 * d * u, -size / d)
        if quadrupoles is not None:
            lam, vec = torch.linalg.eigh(quadrupoles[i])
            for c in range(3):
                for sgn in (1.0, -1.0):
                    add(r + sgn * d * vec[:, c], lam[c] / (3 * d * d))
    owner = torch.tensor(owner)
    ex = [(a, b) for a in range(len(pos)) for b in range(a + 1, len(pos)) if owner[a] == owner[b]]
    return (torch.stack(pos), torch.stack(qs), None if widths is None else torch.stack(ws),
            torch.tensor(ex, dtype=torch.long).reshape(-1, 2))


# ----------------------------------------------------------------------------- test systems


def random_traceless(n, scale=0.01, generator=None, dtype=torch.float64):
    a = torch.randn(n, 3, 3, generator=generator, dtype=dtype) * scale
    a = 0.5 * (a + a.transpose(1, 2))
    return a - torch.eye(3, dtype=dtype) * a.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]


def random_system(n, box=None, extent=None, min_dist=0.12, neutral=True, seed=0, dtype=torch.float64):
    """Random sites with a minimum separation (positions, charges, dipoles, quadrupoles, widths)."""
    gen = torch.Generator().manual_seed(seed)
    pts = []
    while len(pts) < n:
        if box is not None:
            f = torch.rand(3, generator=gen, dtype=dtype)
            p = f @ box.to(dtype)
        else:
            p = (torch.rand(3, generator=gen, dtype=dtype) - 0.5) * (extent or 1.0)
        ok = True
        for o in pts:
            d = p - o
            if box is not None:
                d = d - torch.round(d @ torch.linalg.inv(box.to(dtype))) @ box.to(dtype)
            if float(d.norm()) < min_dist:
                ok = False
                break
        if ok:
            pts.append(p)
    pos = torch.stack(pts)
    q = torch.randn(n, generator=gen, dtype=dtype) * 0.5
    if neutral:
        q = q - q.mean()
    mu = torch.randn(n, 3, generator=gen, dtype=dtype) * 0.02
    th = random_traceless(n, 0.004, gen, dtype)
    s = 0.04 + 0.06 * torch.rand(n, generator=gen, dtype=dtype)
    return pos, q, mu, th, s


# ----------------------------------------------------------------------------- self-checks


def _rel(a, b):
    return float(abs(a.detach() - b.detach()) / abs(b.detach()))


def self_check(verbose=True):
    """Consistency checks of the reference itself; returns a dict of the measured discrepancies."""
    out = {}
    box = torch.tensor([[2.5, 0, 0], [0.8, 2.4, 0], [-0.6, 0.9, 2.3]], dtype=torch.float64)
    pos, q, mu, th, s = random_system(12, box=box, seed=3)
    ex = torch.tensor([[0, 1], [2, 5], [3, 4]])
    e1 = reference_energy(pos, q, mu, th, s, box, ex)
    e2 = reference_energy(pos, q, mu, th, s, box, ex, alpha=1.4, nimages=2)
    e3 = reference_energy(pos, q, mu, th, s, box, ex, alpha=2.6, nimages=1)
    out["alpha_independence"] = max(_rel(e2, e1), _rel(e3, e1))
    qc = q + 0.3
    e1 = reference_energy(pos, qc, mu, th, s, box, ex)
    e2 = reference_energy(pos, qc, mu, th, s, box, ex, alpha=1.3, nimages=2)
    out["alpha_independence_charged"] = _rel(e2, e1)
    phi, f, fg = reference_potential(pos, qc, mu, th, s, box, ex)
    out["energy_from_potential"] = _rel(energy_from_potential(qc, mu, th, phi, f, fg), e1)
    phi2, f2, fg2 = reference_potential(pos, qc, mu, th, s, box, ex, alpha=1.3, nimages=2)
    phi, f, fg, phi2, f2, fg2 = (t.detach() for t in (phi, f, fg, phi2, f2, fg2))
    phi, f, fg, phi2, f2, fg2 = (t.detach() for t in (phi, f, fg, phi2, f2, fg2))
    out["potential_alpha_independence"] = float(max((phi2 - phi).abs().max() / phi.abs().max(),
                                                    (f2 - f).abs().max() / f.abs().max(),
                                                    (fg2 - fg).abs().max() / fg.abs().max()))
    ek = kspace_gaussian_energy(pos, qc, None, None, s * 2, box)
    ee = reference_energy(pos, qc, None, None, s * 2, box, include_self=True)
    out["kspace_gaussian_charges"] = _rel(ee, ek)
    ek = kspace_gaussian_energy(pos, qc, mu, th, s * 2, box)
    ee = reference_energy(pos, qc, mu, th, s * 2, box, include_self=True)
    out["kspace_gaussian_multipoles"] = _rel(ee, ek)
    # a neutral molecule in a growing cubic box: E(L) -> E_open - 2 pi |M|^2 / (3 L^3) (tin-foil)
    mpos, mq, mmu, mth, ms = random_system(6, extent=0.5, seed=5)
    mpos = mpos + 0.5
    e_open = reference_energy(mpos, mq, mmu, mth, ms).detach()
    m_tot = (mq[:, None] * mpos).sum(0) + mmu.sum(0)
    res = []
    for length in (4.0, 8.0, 16.0):
        cub = torch.eye(3, dtype=torch.float64) * length
        e_l = reference_energy(mpos, mq, mmu, mth, ms, cub).detach()
        res.append(float(e_l - e_open) / float(e_open))
        res.append(float(e_l - e_open + ONE_4PI_EPS0 * 2 * math.pi * (m_tot ** 2).sum() / (3 * length ** 3))
                   / float(e_open))
    out["growing_box"] = res
    if verbose:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return out


if __name__ == "__main__":
    self_check()
