// Energy and its gradients of the fast (MPNICE) model variant in one operator call, on the dense
// open-boundary path (python/mlpolar/model/coulomb.py): the inference path of a frozen model.
//
// Why: at 20-50 ML atoms the eager model costs ~2,000 ATen calls per step (forward, autograd graph,
// backward), each a few microseconds on tensors of a few hundred numbers; the arithmetic is a small
// part. Here the forward keeps only what the backward needs, and the backward is written out by
// hand: ~400 ATen calls in all, no autograd graph, the same code on every device.
//
// The computation is MLPolar.forward's fast branch (docs/model.md), with the same weights:
//   geometry  W [4, n, n]: (phi, grad phi) of unit Gaussian charges, self term removed; local pairs
//             (i, j) closer than the cutoff with their Bessel basis b(r) and envelope.
//   q0        Fukui equilibration of the charge head of the species embedding s0.
//   blocks    s += MLP[s, M, Q, q, phi~] with M = sum_j R(b_ij) env_ij (mix s)_j, Q = sum_j b_ij q_j,
//             phi~ = centred (W0 q + T0) l/k; q = Fukui(charge head of s).
//   updates   F = (W q + [T0, T1 + ext]) l^2/k; s += MLP[s, lin_q(s) phi~, |grad|^2, q];
//             q = Fukui(q + dq, logits).
//   energy    reference + local MLP + 1/2 q.W0 q + q.T0 + external + non-local MLP of
//             [s, q, centred (W0 q + T0) l/k, |(grad W q + T1) l^2/k|^2].
// Returned gradients: dE/dx (ML positions, through W and the pair basis), dE/dT0 and dE/dT1 (the
// MM features, whose own operator carries them on to the ML and MM positions). Widths and weights
// are constants here (a frozen model): training uses the composed path.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace mlpolar {
namespace {

using at::Tensor;

using FukuiBackward = std::tuple<Tensor, Tensor, Tensor>;

Tensor fukui(const Tensor& q, const Tensor& l, const Tensor& t, const Tensor& frag) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mlpolar::fukui_equilibrate", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>();
  return op.call(q, l, t, frag);
}
FukuiBackward fukui_backward(const Tensor& g, const Tensor& q, const Tensor& l, const Tensor& t,
                             const Tensor& frag) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mlpolar::fukui_equilibrate_backward", "")
                       .typed<FukuiBackward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&)>();
  return op.call(g, q, l, t, frag);
}

struct Linear {
  Tensor w, b;  // y = x w^T + b; b undefined: no bias
  Tensor operator()(const Tensor& x) const { return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t()); }
};

// Linear -> SiLU -> Linear (blocks.mlp); the pre-activation is kept for the backward.
struct MLP {
  Linear l1, l2;
  Tensor forward(const Tensor& x, Tensor& h) const {
    h = l1(x);
    return l2(at::silu(h));
  }
  // dL/dx from dL/d(SiLU output) = ga
  Tensor backward_from_hidden(const Tensor& ga, const Tensor& h) const {
    return at::mm(at::silu_backward(ga, h), l1.w);
  }
  Tensor backward(const Tensor& gy, const Tensor& h) const { return backward_from_hidden(at::mm(gy, l2.w), h); }
};

// Cursor over the flat weight list (order: MLPolar._fused_weights).
struct Weights {
  const std::vector<Tensor>& w;
  size_t k = 0;
  Tensor next() {
    TORCH_CHECK(k < w.size(), "fast_energy: the weight list is too short");
    return w[k++];
  }
  Linear linear(bool bias = true) {
    Linear l;
    l.w = next();
    if (bias) l.b = next();
    return l;
  }
  MLP mlp() {
    MLP m;
    m.l1 = linear();
    m.l2 = linear();
    return m;
  }
};

struct Block {
  MLP radial, update;
  Linear mix, charge_head;
};
struct Update {
  Linear lin_q, head;
  MLP update;
};


// Packed (phi, grad phi) [n, 4] of charges c: the dense operator's product, laid out as the core's.
Tensor field_of(const Tensor& W, const Tensor& c) { return at::matmul(W, c).t(); }

// Accumulates the cotangent of W from one product V = (W c)^T with cotangent gV [n, 4], and
// returns the cotangent of c.
Tensor product_backward(const Tensor& W, const Tensor& c, const Tensor& gV, Tensor& Wbar) {
  const Tensor g = gV.t().unsqueeze(2);  // [4, n, 1]
  Wbar.addcmul_(g, c.view({1, 1, -1}));
  return (W * g).sum({0, 1});
}


// ---------------------------------------------------------------- geometry
// The n x n Coulomb operator of unit Gaussian charges, the local pairs and their radial basis, with
// what the backward needs:
//   W0_ij = k erf(a r)/r,  W_a,ij = G_ij r_a  (dW0/dr_a; r = x_i - x_j, a = 1/sqrt(2(s_i^2 + s_j^2)),
//   G = k g/r^2, g = r d(erf(a r)/r)/dr),  Hp = G'/r,  zero on the diagonal (self term removed);
//   pairs i != j with |r| < cutoff in row-major order, r_ij = x_j - x_i, their Bessel basis
//   b_k = sqrt(2/rc) sin(w_k d)/d env(d/rc) (w_k = k pi/rc), the envelope and both d/d(dist).
struct Geometry {
  Tensor W, G, Hp, r;                       // [4, n, n], [n, n], [n, n], [n, n, 3] (portable path only)
  Tensor pi, pj, rij, dist;                 // [E], [E], [E, 3], [E]
  Tensor basis, env, dbasis, denv;          // [E, K], [E], [E, K], [E]
};

struct EnvelopeCoefficients {
  double c1, c2, c3;  // env(x) = 1 - c1 x^p + c2 x^(p+1) - c3 x^(p+2) (DimeNet)
  explicit EnvelopeCoefficients(double p) : c1(0.5 * (p + 1) * (p + 2)), c2(p * (p + 2)), c3(0.5 * p * (p + 1)) {}
};

// One pass over the n^2 pairs and one over the local pairs, in double whatever the working precision.
// At 20-200 atoms this replaces ~70 small ATen calls (forward and backward) of the portable version.
Geometry geometry_cpu(const Tensor& x, const Tensor& widths, double k, double cutoff, int64_t K, int64_t power,
                      bool need_grad) {
  const int64_t n = x.size(0);
  const auto opts = x.options();
  const Tensor xd = x.to(at::kDouble).contiguous(), sd = widths.to(at::kDouble).contiguous();
  const double* X = xd.data_ptr<double>();
  const double* sig = sd.data_ptr<double>();
  const double c = 2.0 / std::sqrt(M_PI), rc2 = cutoff * cutoff;
  Tensor W = at::zeros({4, n, n}, at::kDouble), G = at::zeros({n, n}, at::kDouble), Hp = at::zeros({n, n}, at::kDouble);
  double *w = W.data_ptr<double>(), *g_ = G.data_ptr<double>(), *h_ = Hp.data_ptr<double>();
  std::vector<int64_t> pairs;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (i == j) continue;
      const double r0 = X[3 * i] - X[3 * j], r1 = X[3 * i + 1] - X[3 * j + 1], r2 = X[3 * i + 2] - X[3 * j + 2];
      const double d2 = r0 * r0 + r1 * r1 + r2 * r2, d = std::sqrt(d2);
      const double a = 1.0 / std::sqrt(2.0 * (sig[i] * sig[i] + sig[j] * sig[j]));
      const double erf_r = std::erf(a * d) / d, cae = c * a * std::exp(-a * a * d2);
      const double g = cae - erf_r, G_ = k * g / d2;
      const int64_t ij = i * n + j;
      w[ij] = k * erf_r;
      w[n * n + ij] = G_ * r0;
      w[2 * n * n + ij] = G_ * r1;
      w[3 * n * n + ij] = G_ * r2;
      g_[ij] = G_;
      const double gprime = (erf_r - cae) / d - 2.0 * cae * a * a * d;
      h_[ij] = k * (gprime / d - 2.0 * g / d2) / d2;
      if (d2 < rc2) pairs.push_back(ij);
    }
  const int64_t E = static_cast<int64_t>(pairs.size());
  Tensor pi = at::empty({E}, at::kLong), pj = at::empty({E}, at::kLong), rij = at::empty({E, 3}, at::kDouble),
         dist = at::empty({E}, at::kDouble), basis = at::empty({E, K}, at::kDouble), env = at::empty({E}, at::kDouble),
         dbasis = at::empty({E, K}, at::kDouble), denv = at::empty({E}, at::kDouble);
  int64_t *PI = pi.data_ptr<int64_t>(), *PJ = pj.data_ptr<int64_t>();
  double *R = rij.data_ptr<double>(), *D = dist.data_ptr<double>(), *B = basis.data_ptr<double>(),
         *EV = env.data_ptr<double>(), *DB = dbasis.data_ptr<double>(), *DE = denv.data_ptr<double>();
  const double p = static_cast<double>(power), A = std::sqrt(2.0 / cutoff);
  const EnvelopeCoefficients ec(p);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t i = pairs[e] / n, j = pairs[e] % n;
    PI[e] = i;
    PJ[e] = j;
    double dd = 0.0;
    for (int a = 0; a < 3; ++a) {
      R[3 * e + a] = X[3 * j + a] - X[3 * i + a];
      dd += R[3 * e + a] * R[3 * e + a];
    }
    const double d = std::sqrt(dd), xh = d / cutoff, xp = std::pow(xh, p);
    const double ev = 1.0 - xp * (ec.c1 - xh * (ec.c2 - ec.c3 * xh));
    const double de = xp * ((p + 1) * ec.c2 - (p + 2) * ec.c3 * xh - p * ec.c1 / xh) / cutoff;
    D[e] = d;
    EV[e] = ev;
    DE[e] = de;
    for (int64_t kk = 0; kk < K; ++kk) {
      const double wk = (kk + 1) * M_PI / cutoff, sn = std::sin(wk * d), cs = std::cos(wk * d);
      const double raw = A * sn / d, draw = A * (wk * cs - sn / d) / d;
      B[e * K + kk] = raw * ev;
      DB[e * K + kk] = draw * ev + raw * de;
    }
  }
  Geometry geo;
  geo.W = W.to(opts);
  if (need_grad) {
    geo.G = G;
    geo.Hp = Hp;
    geo.dbasis = dbasis;
    geo.denv = denv;
  }
  geo.pi = pi;
  geo.pj = pj;
  geo.rij = rij;
  geo.dist = dist;
  geo.basis = basis.to(opts);
  geo.env = env.to(opts);
  return geo;
}

// dE/dx from the cotangents of W [4, n, n], of the basis [E, K] and of the envelope [E]:
//   dL/dr_a = G (Wbar0 r_a + Wbar_a) + Hp (Wbar_v . r) r_a  for each i != j (r = x_i - x_j),
//   dL/d(dist) = gbasis . dbasis + genv denv along r_ij / dist for each local pair.
Tensor geometry_backward_cpu(const Geometry& geo, const Tensor& x, const Tensor& Wbar, const Tensor& gbasis,
                             const Tensor& genv) {
  const int64_t n = x.size(0), E = geo.pi.size(0), K = geo.dbasis.size(1);
  const Tensor xd = x.to(at::kDouble).contiguous(), Wb = Wbar.to(at::kDouble).contiguous(),
               gb = gbasis.to(at::kDouble).contiguous(), ge = genv.to(at::kDouble).contiguous();
  const double *X = xd.data_ptr<double>(), *wb = Wb.data_ptr<double>(), *G = geo.G.data_ptr<double>(),
               *H = geo.Hp.data_ptr<double>();
  Tensor gx = at::zeros({n, 3}, at::kDouble);
  double* gxp = gx.data_ptr<double>();
  const int64_t nn = n * n;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (i == j) continue;
      const int64_t ij = i * n + j;
      const double r[3] = {X[3 * i] - X[3 * j], X[3 * i + 1] - X[3 * j + 1], X[3 * i + 2] - X[3 * j + 2]};
      const double v[3] = {wb[nn + ij], wb[2 * nn + ij], wb[3 * nn + ij]};
      const double vr = v[0] * r[0] + v[1] * r[1] + v[2] * r[2];
      for (int a = 0; a < 3; ++a) {
        const double rb = G[ij] * (wb[ij] * r[a] + v[a]) + H[ij] * vr * r[a];
        gxp[3 * i + a] += rb;
        gxp[3 * j + a] -= rb;
      }
    }
  const int64_t *PI = geo.pi.data_ptr<int64_t>(), *PJ = geo.pj.data_ptr<int64_t>();
  const double *R = geo.rij.data_ptr<double>(), *D = geo.dist.data_ptr<double>(),
               *DB = geo.dbasis.data_ptr<double>(), *DE = geo.denv.data_ptr<double>();
  const double *GB = gb.data_ptr<double>(), *GE = ge.data_ptr<double>();
  for (int64_t e = 0; e < E; ++e) {
    double gd = GE[e] * DE[e];
    for (int64_t kk = 0; kk < K; ++kk) gd += GB[e * K + kk] * DB[e * K + kk];
    for (int a = 0; a < 3; ++a) {
      const double g = gd * R[3 * e + a] / D[e];
      gxp[3 * PJ[e] + a] += g;
      gxp[3 * PI[e] + a] -= g;
    }
  }
  return gx.to(x.options());
}

// The same in ATen calls: any device (the CUDA path), and the CPU loop's check in the tests.
Geometry geometry_portable(const Tensor& x, const Tensor& widths, double k, double cutoff, int64_t K, int64_t power) {
  const int64_t n = x.size(0);
  const auto opts = x.options();
  auto S = [&](double v) { return at::scalar_tensor(v, opts); };
  const Tensor two = S(2.0);
  const Tensor eye = at::eye(n, opts);
  const Tensor r = x.unsqueeze(1) - x.unsqueeze(0);  // x_i - x_j
  const Tensor d2 = (r * r).sum(-1) + eye;           // diagonal masked by `off`; 1 keeps 1/r finite
  const Tensor d = d2.sqrt();
  const Tensor s2 = widths * widths;
  const Tensor a = at::rsqrt(two * (s2.unsqueeze(1) + s2.unsqueeze(0)));
  const Tensor off = (S(1.0) - eye) * S(k);
  const Tensor erf_r = at::erf(a * d) / d;
  const Tensor cae = S(2.0 / std::sqrt(M_PI)) * a * at::exp(-(a * a) * d2);
  const Tensor g = cae - erf_r;
  Geometry geo;
  geo.r = r;
  geo.G = off * g / d2;
  geo.W = at::cat({(off * erf_r).unsqueeze(0), geo.G.unsqueeze(0) * r.permute({2, 0, 1})}, 0);
  const Tensor gprime = (erf_r - cae) / d - two * cae * a * a * d;
  geo.Hp = off * (gprime / d - two * g / d2) / d2;
  const Tensor pairs = ((d2 < cutoff * cutoff) & (eye == 0)).nonzero();
  geo.pi = pairs.select(1, 0).contiguous();
  geo.pj = pairs.select(1, 1).contiguous();
  const Tensor flat = geo.pi * n + geo.pj;
  geo.rij = -r.reshape({n * n, 3}).index_select(0, flat);
  geo.dist = d.reshape({n * n}).index_select(0, flat);
  const double p = static_cast<double>(power);
  const EnvelopeCoefficients ec(p);
  const Tensor xh = geo.dist * S(1.0 / cutoff);
  const Tensor xp = xh.pow(p);
  geo.env = S(1.0) - xp * (S(ec.c1) - xh * (S(ec.c2) - S(ec.c3) * xh));
  geo.denv = xp * (S((p + 1) * ec.c2 / cutoff) - S((p + 2) * ec.c3 / cutoff) * xh - S(p * ec.c1 / cutoff) / xh);
  const Tensor wk = (at::arange(1, K + 1, opts) * S(M_PI / cutoff)).unsqueeze(0);
  const Tensor dcol = geo.dist.unsqueeze(1), arg = dcol * wk;
  const Tensor sn = at::sin(arg), A = S(std::sqrt(2.0 / cutoff));
  const Tensor raw = A * sn / dcol, draw = A * (wk * at::cos(arg) - sn / dcol) / dcol;
  const Tensor envc = geo.env.unsqueeze(1);
  geo.basis = raw * envc;
  geo.dbasis = draw * envc + raw * geo.denv.unsqueeze(1);
  return geo;
}

Tensor geometry_backward_portable(const Geometry& geo, const Tensor& Wbar, const Tensor& gbasis, const Tensor& genv) {
  const int64_t n = Wbar.size(1);
  const Tensor gdist = (gbasis * geo.dbasis).sum(1) + genv * geo.denv;
  const Tensor grij = (gdist / geo.dist).unsqueeze(1) * geo.rij;
  Tensor gx = at::zeros({n, 3}, Wbar.options());
  gx.index_add_(0, geo.pj, grij);
  gx.index_add_(0, geo.pi, -grij);
  const Tensor& r = geo.r;
  const Tensor Wv = Wbar.slice(0, 1, 4).permute({1, 2, 0});  // [n, n, 3]
  const Tensor Rbar = geo.G.unsqueeze(2) * (Wbar[0].unsqueeze(2) * r + Wv) + (geo.Hp * (Wv * r).sum(2)).unsqueeze(2) * r;
  return gx + Rbar.sum(1) - Rbar.sum(0);
}

// Back through one stage's tail,  s' = s + MLP(z),  out = head(s'),  q' = Fukui(fa, fl)  with
// (fa, fl) = (out[:, :2] (+ q in the updates), out[:, 2:4]): gs becomes dL/ds' (the head's share
// added); returns (dL/dfa, dL/dz).
std::pair<Tensor, Tensor> stage_backward(const Tensor& gq, Tensor& gs, const Tensor& fa, const Tensor& fl,
                                         const Linear& head, const MLP& mlp, const Tensor& hidden,
                                         const Tensor& targets, const Tensor& frag) {
  const auto [ga, gl, gt] = fukui_backward(gq, fa, fl, targets, frag);
  gs = gs + at::mm(at::cat({ga, gl}, 1), head.w);
  return {ga, mlp.backward(gs, hidden)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fast_energy(
    const Tensor& x, const Tensor& widths, const Tensor& index, const Tensor& frag, const Tensor& targets,
    const Tensor& inv_count, const Tensor& T0, const Tensor& T1, const std::optional<Tensor>& field,
    at::TensorList weight_list, int64_t n_blocks, int64_t n_updates, int64_t head, double coulomb, double ell,
    double cutoff, int64_t radial_basis, int64_t envelope_power, double energy_scale, double norm,
    bool need_grad, bool portable) {
  // every input is a constant here: no autograd recording below this call
  at::AutoDispatchBelowADInplaceOrView guard;
  const int64_t n = x.size(0);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "fast_energy: positions must be [n, 3]");
  TORCH_CHECK(T0.sizes() == at::IntArrayRef({n}) && T1.sizes() == at::IntArrayRef({n, 3}),
              "fast_energy: T0 must be [n] and T1 [n, 3]");
  std::vector<Tensor> wl(weight_list.begin(), weight_list.end());
  TORCH_CHECK(static_cast<int64_t>(wl.size()) == 3 + 12 * n_blocks + 8 * n_updates + 9,
              "fast_energy: expected ", 3 + 12 * n_blocks + 8 * n_updates + 9, " weights, got ", wl.size());
  Weights cur{wl};
  const Tensor embedding = cur.next();
  const Linear charge_head = cur.linear();
  std::vector<Block> blocks(n_blocks);
  for (auto& b : blocks) {
    b.radial = cur.mlp();
    b.mix = cur.linear();
    b.update = cur.mlp();
    b.charge_head = cur.linear();
  }
  std::vector<Update> updates(n_updates);
  for (auto& u : updates) {
    u.lin_q = cur.linear();
    u.update = cur.mlp();
    u.head = cur.linear();
  }
  const MLP local = cur.mlp(), nonlocal = cur.mlp();
  const Tensor reference = cur.next();
  const int64_t C = embedding.size(1), K = radial_basis;
  const auto opts = x.options();
  // Scalars enter as 0-dim tensors of the working dtype: a bare double is wrapped into a double
  // tensor and cast at every use (four extra ATen calls each, a good part of the cost at this size).
  auto S = [&](double v) { return at::scalar_tensor(v, opts); };
  const Tensor fphi = S(ell / coulomb), fgrad = S(ell * ell / coulomb), inv_ell = S(1.0 / ell), knorm = S(norm),
               two = S(2.0), half = S(0.5), escale = S(energy_scale);

  // ---- dense geometry and pair basis ----
  const Geometry geo = x.is_cpu() && !portable
                           ? geometry_cpu(x, widths, coulomb, cutoff, K, envelope_power, need_grad)
                           : geometry_portable(x, widths, coulomb, cutoff, K, envelope_power);
  const Tensor &W = geo.W, &pi = geo.pi, &pj = geo.pj, &basis = geo.basis, &env = geo.env;
  const Tensor W0 = W[0];
  const int64_t E = basis.size(0);
  const Tensor eye = at::eye(n, opts);
  // Centring on fragments, phi_i - <phi>_f(i), as a symmetric matrix (its own transpose) with the
  // features' scale folded in: one product per use instead of a scatter and a gather.
  const Tensor centring = eye - (frag.unsqueeze(1) == frag.unsqueeze(0)) * inv_count.unsqueeze(0);
  const Tensor centre_phi = centring * fphi, centre_ell = centring * inv_ell;

  // ---- initial charges ----
  Tensor s = embedding.index_select(0, index);
  Tensor out = charge_head(s);
  Tensor o01 = out.slice(1, 0, 2).contiguous(), o23 = out.slice(1, 2, 4).contiguous();
  Tensor q = fukui(o01, o23, targets, frag);

  // ---- blocks ----
  struct BlockTape {
    Tensor qs, hr, rad, mj, qj, hu, o01, o23;
  };
  std::vector<BlockTape> btape(n_blocks);
  const Tensor envc = env.unsqueeze(1);
  for (int64_t l = 0; l < n_blocks; ++l) {
    const Block& B = blocks[l];
    BlockTape& t = btape[l];
    t.qs = q.sum(1);
    const Tensor phic = at::mv(centre_phi, at::mv(W0, t.qs) + T0);
    t.rad = B.radial.forward(basis, t.hr);
    t.mj = B.mix(s).index_select(0, pj);
    const Tensor M = at::zeros({n, C}, opts).index_add_(0, pi, t.rad * envc * t.mj) * knorm;
    t.qj = q.index_select(0, pj);
    const Tensor qb = (basis.unsqueeze(2) * t.qj.unsqueeze(1)).reshape({E, 2 * K});
    const Tensor Qf = at::zeros({n, 2 * K}, opts).index_add_(0, pi, qb);
    const Tensor z = at::cat({s, M, Qf, q, phic.unsqueeze(1)}, 1);
    s = s + B.update.forward(z, t.hu);
    out = B.charge_head(s);
    t.o01 = out.slice(1, 0, 2).contiguous();
    t.o23 = out.slice(1, 2, 4).contiguous();
    q = fukui(t.o01, t.o23, targets, frag);
  }

  // ---- polarisation iterations ----
  Tensor ext_grad = at::zeros({3}, opts);
  if (field.has_value()) ext_grad = -*field;
  const Tensor outer = at::cat({T0.unsqueeze(1), T1 + ext_grad}, 1);
  struct UpdateTape {
    Tensor qs, phiu, grad, qc, hu, qin, logits;
  };
  std::vector<UpdateTape> utape(n_updates);
  for (int64_t l = 0; l < n_updates; ++l) {
    const Update& U = updates[l];
    UpdateTape& t = utape[l];
    t.qs = q.sum(1);
    const Tensor F = (field_of(W, t.qs) + outer) * fgrad;
    t.phiu = at::mv(centre_ell, F.select(1, 0));
    t.grad = F.slice(1, 1, 4);
    t.qc = U.lin_q(s);
    const Tensor g2 = (t.grad * t.grad).sum(1, true);
    const Tensor z = at::cat({s, t.qc * t.phiu.unsqueeze(1), g2, q}, 1);
    s = s + U.update.forward(z, t.hu);
    out = U.head(s);
    t.qin = (q + out.slice(1, 0, 2)).contiguous();
    t.logits = out.slice(1, 2, 4).contiguous();
    q = fukui(t.qin, t.logits, targets, frag);
  }

  // ---- energy ----
  const Tensor charges = q.sum(1);
  const Tensor V = field_of(W, charges);
  const Tensor V0 = V.select(1, 0);
  const Tensor e_elec = half * (charges * V0).sum();
  const Tensor e_emb = (charges * T0).sum();
  Tensor e_ext = at::zeros({}, opts);
  if (field.has_value()) e_ext = -(charges.unsqueeze(1) * x * *field).sum();
  const Tensor phi = at::mv(centre_phi, V0 + T0);
  const Tensor gradf = (V.slice(1, 1, 4) + T1) * fgrad;
  const Tensor nl_in = at::cat({s, q, phi.unsqueeze(1), (gradf * gradf).sum(1, true)}, 1);
  // one head: only its column of the last layer
  auto head_of = [&](const MLP& m) {
    return Linear{m.l2.w.slice(0, head, head + 1), m.l2.b.slice(0, head, head + 1)};
  };
  Tensor h_nl, h_loc;
  const Tensor y_nl = head_of(nonlocal)(at::silu(h_nl = nonlocal.l1(nl_in)));
  const Tensor y_loc = head_of(local)(at::silu(h_loc = local.l1(s)));
  const Tensor e_nonlocal = escale * y_nl.sum();
  const Tensor e_local = escale * y_loc.sum();
  const Tensor e_ref = reference[head].index_select(0, index).sum();
  const Tensor terms = at::stack({e_ref, e_local, e_elec, e_emb, e_ext, e_nonlocal});
  if (!need_grad) {
    return {terms, q, at::empty({0, 3}, opts), at::empty({0}, opts), at::empty({0, 3}, opts)};
  }

  // ---------------------------------------------------------------- backward (dE = 1)
  Tensor Wbar = at::zeros({4, n, n}, opts);
  Tensor gT0 = charges.clone();  // from e_emb
  Tensor gT1 = at::zeros({n, 3}, opts);
  Tensor gx = at::zeros({n, 3}, opts);
  Tensor gbasis = at::zeros({E, K}, opts), genv = at::zeros({E}, opts);

  // local and non-local energies: the head's row of the last layer, broadcast over atoms
  const Tensor gnl = nonlocal.backward_from_hidden(
      (escale * nonlocal.l2.w[head]).unsqueeze(0).expand({n, C}).contiguous(), h_nl);
  Tensor gs = local.backward_from_hidden(
      (escale * local.l2.w[head]).unsqueeze(0).expand({n, C}).contiguous(), h_loc);
  gs = gs + gnl.slice(1, 0, C);
  Tensor gq = gnl.slice(1, C, C + 2).contiguous();
  const Tensor gphi = at::mv(centre_phi, gnl.select(1, C + 2));
  const Tensor ggrad = (two * fgrad) * gradf * gnl.slice(1, C + 3, C + 4);
  gT0.add_(gphi);
  gT1.add_(ggrad);
  // e_elec = 1/2 c.V0 (V = W c) and the potentials of the non-local input
  Tensor gV = at::cat({(half * charges + gphi).unsqueeze(1), ggrad}, 1);
  Tensor gc = half * V0 + T0 + product_backward(W, charges, gV, Wbar);
  if (field.has_value()) {
    gc = gc - (x * *field).sum(1);
    gx.sub_(charges.unsqueeze(1) * *field);
  }
  gq = gq + gc.unsqueeze(1);

  for (int64_t l = n_updates - 1; l >= 0; --l) {
    const Update& U = updates[l];
    const UpdateTape& t = utape[l];
    const auto [gqin, gz] = stage_backward(gq, gs, t.qin, t.logits, U.head, U.update, t.hu, targets, frag);
    const int64_t P = t.qc.size(1);
    const Tensor gqcphi = gz.slice(1, C, C + P);
    gs = gs + gz.slice(1, 0, C) + at::mm(gqcphi * t.phiu.unsqueeze(1), U.lin_q.w);
    const Tensor gphiu = (gqcphi * t.qc).sum(1);
    const Tensor gF0 = at::mv(centre_ell, gphiu);
    const Tensor gFv = two * t.grad * gz.slice(1, C + P, C + P + 1);
    const Tensor gVu = at::cat({gF0.unsqueeze(1), gFv}, 1) * fgrad;
    gT0.add_(gVu.select(1, 0));
    gT1.add_(gVu.slice(1, 1, 4));
    gq = gqin + gz.slice(1, C + P + 1, C + P + 3) + product_backward(W, t.qs, gVu, Wbar).unsqueeze(1);
  }

  for (int64_t l = n_blocks - 1; l >= 0; --l) {
    const Block& B = blocks[l];
    const BlockTape& t = btape[l];
    const Tensor gz = stage_backward(gq, gs, t.o01, t.o23, B.charge_head, B.update, t.hu, targets, frag).second;
    const Tensor gm = gz.slice(1, C, 2 * C).index_select(0, pi) * knorm;  // [E, C]
    const Tensor gQf = gz.slice(1, 2 * C, 2 * C + 2 * K).index_select(0, pi).view({E, K, 2});
    Tensor gqn = gz.slice(1, 2 * C + 2 * K, 2 * C + 2 * K + 2);
    const Tensor gphic = at::mv(centre_phi, gz.select(1, 2 * C + 2 * K + 2));
    const Tensor rad_env = t.rad * envc;
    genv.add_((gm * t.rad * t.mj).sum(1));
    gbasis.add_(B.radial.backward(gm * envc * t.mj, t.hr));
    const Tensor gmix = at::zeros({n, C}, opts).index_add_(0, pj, gm * rad_env);
    gs = gs + gz.slice(1, 0, C) + at::mm(gmix, B.mix.w);
    gbasis.add_((gQf * t.qj.unsqueeze(1)).sum(2));
    gqn = gqn + at::zeros({n, 2}, opts).index_add_(0, pj, (gQf * basis.unsqueeze(2)).sum(1));
    gT0.add_(gphic);
    Wbar[0].addr_(gphic, t.qs);
    gq = gqn + at::mv(W0.t(), gphic).unsqueeze(1);
  }
  // the initial charges depend on the species only

  // ---- pair basis and W -> positions ----
  gx.add_(x.is_cpu() && !portable ? geometry_backward_cpu(geo, x, Wbar, gbasis, genv)
                                  : geometry_backward_portable(geo, Wbar, gbasis, genv));
  return {terms, q, gx, gT0, gT1};
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_FRAGMENT(mlpolar, m) {
  // Energy terms [6] (reference, local, electrostatic, embedding, external, non-local; kJ/mol), spin
  // charges [n, 2] and, with need_grad, dE/dpositions [n, 3], dE/dT0 [n], dE/dT1 [n, 3] of the fast
  // variant on the dense open-boundary path. weights: MLPolar._fused_weights() order.
  m.def("fast_energy(Tensor positions, Tensor widths, Tensor species_index, Tensor fragments, Tensor targets, "
        "Tensor inv_count, Tensor T0, Tensor T1, Tensor? field, Tensor[] weights, int n_blocks, int n_updates, "
        "int head, float coulomb, float feature_length, float cutoff, int radial_basis, int envelope_power, "
        "float energy_scale, float norm, bool need_grad, bool portable=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(mlpolar, CompositeExplicitAutograd, m) { m.impl("fast_energy", &mlpolar::fast_energy); }
