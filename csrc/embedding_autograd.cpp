// Autograd of embedding_field. As in autograd.cpp the backward is made of forward calls one
// degree higher, through the dispatcher with autograd on, so the backward is itself
// differentiable (forces in a training loss, create_graph=True):
//   V_i = sum_j sum_s c_js R_{t+s}(r_i - r_j)            (receivers i, sources j)
//   dL/dr_i  = sum_t G_it d/dx_a V_it          = contract_shift(G, field(c, dout + 1))
//   dL/dc_js = (-1)^|s| W_js, W = field at the sources from the receivers with source
//              coefficients G' = (-1)^|t| G (the same pair seen from the other end)
//   dL/dr_j  = contract_shift((-1)^|s| c, field(G', din + 1))
//   dL/ds_i  = sum_t G_it V'_it, V' the same field with the pair kernel replaced by its
//              derivative by the receiver's width s_i (width_derivative = 1)
//   dL/ds_j  = sum_s (-1)^|s| c_js W'_js, W' the swapped field differentiated by the width of
//              its receiver (the source j)
// A call that already is a width derivative has position/charge gradients (the same rules on
// its kernel) but no second width derivative.
// Also here: embedding_features, the schema, checks and autograd of mm_features' real-space
// operator (T0..T3 from one embedding_field call; its backward is embedding_field's).
#include <c10/core/InferenceMode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "multipole_math.h"
#include "ops.h"
#include "trace_safe.h"

namespace mlpolar {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_embedding(const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                          const c10::optional<at::Tensor>& rw, const c10::optional<at::Tensor>& sw,
                          const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff, double width,
                          double beta, int64_t deg, int64_t wd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mlpolar::embedding_field", "")
                       .typed<decltype(call_embedding)>();
  return op.call(rp, sp, c, rw, sw, box, excl, cutoff, width, beta, deg, wd);
}

// Column indices of t + e_a for every packed t of degree <= d.
at::Tensor shift_columns(int d, int axis, const at::Tensor& like) {
  std::vector<int64_t> idx;
  for (int dt = 0; dt <= d; ++dt)
    for (int t1 = dt; t1 >= 0; --t1)
      for (int t2 = dt - t1; t2 >= 0; --t2) {
        int t[3] = {t1, t2, dt - t1 - t2};
        t[axis] += 1;
        idx.push_back(cidx(t[0], t[1], t[2]));
      }
  return small_constant(idx, like.options().dtype(at::kLong), is_traced(like));
}

// (-1)^{|t|} for every packed t of degree <= d.
at::Tensor signs(int d, const at::Tensor& like) {
  std::vector<double> s;
  for (int dt = 0; dt <= d; ++dt)
    for (int k = 0; k < (dt + 1) * (dt + 2) / 2; ++k) s.push_back(dt % 2 ? -1.0 : 1.0);
  return small_constant(s, like.options(), is_traced(like));
}

// [n, 3]: sum_t x_t y_{t + e_a}, x of degree d, y of degree >= d + 1.
at::Tensor shift_contract(const at::Tensor& x, const at::Tensor& y, int d) {
  std::vector<at::Tensor> cols;
  for (int a = 0; a < 3; ++a) cols.push_back((x * y.index_select(1, shift_columns(d, a, y))).sum(1));
  return at::stack(cols, 1);
}

at::Tensor as_tensor(const c10::optional<at::Tensor>& t, const at::Tensor& like) {
  return t.has_value() ? *t : at::empty({0}, like.options());
}
c10::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return is_present(t) ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The charge embedding on the CPU (MM charges as sources, no source widths, plain field) has
// a fused first backward (embedding_charge_backward_cpu): one pass instead of a degree + 1
// forward and the transposed pass.
bool fused_backward_applies(const at::Tensor& rp, const at::Tensor& c, const at::Tensor& sw, int64_t wd, int64_t deg) {
  return rp.device().is_cpu() && !is_traced(rp) && static_size(c, 1) == 1 && !is_present(sw) && wd == 0 && deg <= 3;
}

// Which inputs of embedding_field a backward must differentiate.
struct EmbeddingNeeds {
  bool rp, sp, c, rw, sw, box;
};

// The forward of embedding_field under a custom autograd Function: saves what embedding_backward
// needs in ctx and returns V [n, ncart(deg)].
at::Tensor embedding_forward(AutogradContext* ctx, const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                             const at::Tensor& rw, const at::Tensor& sw, const at::Tensor& box, const at::Tensor& excl,
                             double cutoff, double width, double beta, int64_t deg, int64_t wd, bool graph) {
  at::AutoDispatchBelowADInplaceOrView guard;
  ctx->save_for_backward({rp, sp, c, rw, sw, box, excl});
  ctx->saved_data["cutoff"] = cutoff;
  ctx->saved_data["width"] = width;
  ctx->saved_data["beta"] = beta;
  ctx->saved_data["deg"] = deg;
  ctx->saved_data["wd"] = wd;
  const bool fused = fused_backward_applies(rp, c, sw, wd, deg);
  if (graph && fused && (rp.requires_grad() || sp.requires_grad() || c.requires_grad())) {
    // the fused backward will reuse this forward's search (the binned MM atoms): kept per call,
    // O(MM atoms in reach), nothing per pair
    auto r = embedding_charge_forward_cpu(rp, sp, c, as_optional(rw), as_optional(box), excl, cutoff, width, beta,
                                          deg);
    if (r.size() == 5) ctx->saved_data["search"] = std::vector<at::Tensor>(r.begin() + 1, r.end());
    return r[0];
  }
  if (graph && rp.requires_grad() && !fused) {
    // forces on the receivers will be asked for: one degree more in the same pass (not when
    // no graph is recorded, e.g. the backward's own calls without create_graph)
    at::Tensor F1 = call_embedding(rp, sp, c, as_optional(rw), as_optional(sw), as_optional(box), excl, cutoff,
                                   width, beta, deg + 1, wd);
    ctx->saved_data["F1"] = F1;
    return F1.slice(1, 0, ncart((int)deg)).contiguous();
  }
  return call_embedding(rp, sp, c, as_optional(rw), as_optional(sw), as_optional(box), excl, cutoff, width, beta,
                        deg, wd);
}

// The vector-Jacobian product of embedding_forward's V with G [n, ncart(deg)]: the gradients of
// (rp, sp, c, rw, sw), undefined where not needed. Differentiable again when grad mode is on.
variable_list embedding_backward(AutogradContext* ctx, const at::Tensor& G, const EmbeddingNeeds& needs) {
  auto s = ctx->get_saved_variables();
  const at::Tensor &rp = s[0], &sp = s[1], &c = s[2], &rw = s[3], &sw = s[4], &box = s[5], &excl = s[6];
  const double cutoff = ctx->saved_data["cutoff"].toDouble(), width = ctx->saved_data["width"].toDouble();
  const double beta = ctx->saved_data["beta"].toDouble();
  const int dout = (int)ctx->saved_data["deg"].toInt();
  const int64_t wd = ctx->saved_data["wd"].toInt();
  const int64_t wd_swapped = wd == 0 ? 0 : 3 - wd;  // receivers and sources trade places
  const int din = degree_of_columns(static_size(c, 1), "coeffs");
  variable_list out(5);
  if (!G.defined()) return out;
  const bool need_rw = is_present(rw) && needs.rw, need_sw = is_present(sw) && needs.sw;
  TORCH_CHECK(wd == 0 || !(need_rw || need_sw),
              "mm_features/embedding_field: second derivatives with respect to the Gaussian widths are not "
              "implemented; detach the widths where a second width derivative would be taken");
  TORCH_CHECK(!(is_present(box) && needs.box),
              "mm_features/embedding_field: gradients with respect to the box are not implemented; pass a box "
              "that does not require grad (box.detach())");
  const bool need_rp = needs.rp, need_sp = needs.sp, need_c = needs.c;
  if (!at::GradMode::is_enabled() && fused_backward_applies(rp, c, sw, wd, dout) && !need_sw) {
    std::vector<at::Tensor> search;
    if (ctx->saved_data.count("search")) search = ctx->saved_data["search"].toTensorVector();
    auto g = embedding_charge_backward_cpu(rp, sp, c, as_optional(rw), as_optional(box), excl, cutoff, width, beta,
                                           G, need_rw, search);
    if (need_rp) out[0] = g[0];
    if (need_sp) out[1] = g[1];
    if (need_c) out[2] = g[2];
    if (need_rw) out[3] = g[3];
    return out;
  }
  // roles swapped: the sources become receivers of the receivers' grad as source coefficients
  const at::Tensor flipped = excl.flip({1});
  if (need_rp) {
    at::Tensor F1;
    if (!at::GradMode::is_enabled() && ctx->saved_data.count("F1")) {
      F1 = ctx->saved_data["F1"].toTensor();
    } else {
      F1 = call_embedding(rp, sp, c, as_optional(rw), as_optional(sw), as_optional(box), excl, cutoff, width, beta,
                          dout + 1, wd);
    }
    out[0] = shift_contract(G, F1, dout);
  }
  if (need_sp || need_c) {
    const at::Tensor Gp = G * signs(dout, G);
    const at::Tensor pc = signs(din, c);
    at::Tensor F2 = call_embedding(sp, rp, Gp, as_optional(sw), as_optional(rw), as_optional(box), flipped, cutoff,
                                   width, beta, need_sp ? din + 1 : din, wd_swapped);
    if (need_c) out[2] = pc * F2.slice(1, 0, ncart(din));
    if (need_sp) out[1] = shift_contract(pc * c, F2, din);
  }
  if (need_rw) {
    const at::Tensor W = call_embedding(rp, sp, c, as_optional(rw), as_optional(sw), as_optional(box), excl, cutoff,
                                        width, beta, dout, 1);
    out[3] = (G * W).sum(1);
  }
  if (need_sw) {
    const at::Tensor W = call_embedding(sp, rp, G * signs(dout, G), as_optional(sw), as_optional(rw),
                                        as_optional(box), flipped, cutoff, width, beta, din, 1);
    out[4] = (signs(din, c) * c * W).sum(1);
  }
  return out;
}

class EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                            const at::Tensor& rw, const at::Tensor& sw, const at::Tensor& box, const at::Tensor& excl,
                            double cutoff, double width, double beta, int64_t deg, int64_t wd, bool graph) {
    return embedding_forward(ctx, rp, sp, c, rw, sw, box, excl, cutoff, width, beta, deg, wd, graph);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const EmbeddingNeeds needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                               ctx->needs_input_grad(3), ctx->needs_input_grad(4), ctx->needs_input_grad(5)};
    variable_list g = embedding_backward(ctx, grads[0], needs);
    g.resize(13);
    return g;
  }
};

at::Tensor embedding_autograd(const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                              const c10::optional<at::Tensor>& rw, const c10::optional<at::Tensor>& sw,
                              const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff,
                              double width, double beta, int64_t deg, int64_t wd) {
  // inside Function::forward grad mode is always off: whether a graph is recorded is decided here
  return EmbeddingFunction::apply(rp, sp, c, as_tensor(rw, rp), as_tensor(sw, rp), as_tensor(box, rp), excl, cutoff,
                                  width, beta, deg, wd, at::GradMode::is_enabled());
}

// ---- embedding_features: the MM charges' features T0..T3 in one operator -------------------------
// T_k = k_e x (the degree-k columns of V, expanded to the full symmetric [3]^k tensor, traces
// removed), V = embedding_field(ML sites <- MM charges). One autograd node for the per-step path,
// instead of the projection, slices and views in Python (their graph cost about a quarter of a
// 50 x 25k call at two threads).

constexpr double kCoulomb = 138.93545764438198;  // ONE_4PI_EPS0, kJ/mol nm/e^2 (mlpolar.units)

// Q_k [ncomp(k), 3^k]: V_k @ Q_k = T_k flattened row-major, V_k the packed degree-k columns.
// Traceless parts: T2_ab - d_ab tr/3; T3_abc - (d_ab v_c + d_ac v_b + d_bc v_a)/5, v_c = T_eec.
at::Tensor build_order_projection(int k, const at::Tensor& like) {
  const int rows = (k + 1) * (k + 2) / 2, cols = k == 0 ? 1 : (k == 1 ? 3 : (k == 2 ? 9 : 27));
  const int base = k == 0 ? 0 : ncart(k - 1);
  auto col_of = [&](int a, int b, int c, int order) {  // packed column (within degree k) of axes a, b, c
    int t[3] = {0, 0, 0};
    if (order >= 1) t[a]++;
    if (order >= 2) t[b]++;
    if (order >= 3) t[c]++;
    return cidx(t[0], t[1], t[2]) - base;
  };
  std::vector<double> Q(rows * cols, 0.0);
  if (k == 0) Q[0] = kCoulomb;
  if (k == 1)
    for (int a = 0; a < 3; ++a) Q[col_of(a, 0, 0, 1) * cols + a] = kCoulomb;
  if (k == 2)
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) {
        Q[col_of(a, b, 0, 2) * cols + 3 * a + b] += kCoulomb;
        if (a == b)
          for (int e = 0; e < 3; ++e) Q[col_of(e, e, 0, 2) * cols + 3 * a + b] -= kCoulomb / 3.0;
      }
  if (k == 3)
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b)
        for (int c = 0; c < 3; ++c) {
          const int col = 9 * a + 3 * b + c;
          Q[col_of(a, b, c, 3) * cols + col] += kCoulomb;
          for (int e = 0; e < 3; ++e) {
            if (a == b) Q[col_of(e, e, c, 3) * cols + col] -= kCoulomb / 5.0;
            if (a == c) Q[col_of(e, e, b, 3) * cols + col] -= kCoulomb / 5.0;
            if (b == c) Q[col_of(e, e, a, 3) * cols + col] -= kCoulomb / 5.0;
          }
        }
  return small_constant(Q, like.options(), is_traced(like)).view({rows, cols});
}

// Q_k for like's dtype and device, built once per process (eager; a traced call builds it from
// dispatched factory ops every time). Each small host-to-tensor copy costs as much as a kernel
// launch; eight per step were a tenth of a 50-site call.
at::Tensor order_projection(int k, const at::Tensor& like) {
  if (is_traced(like)) return build_order_projection(k, like);
  using Key = std::tuple<int, int, int, int>;
  static std::mutex mutex;
  static auto* cache = new std::map<Key, at::Tensor>();  // never freed: no CUDA frees at exit
  const Key key{k, (int)like.scalar_type(), (int)like.device().type(), (int)like.device().index()};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  at::Tensor Q;
  {
    c10::InferenceMode off(false);
    Q = build_order_projection(k, like);
  }
  cache->emplace(key, Q);
  return Q;
}

std::vector<int64_t> feature_shape(int64_t n, int k) {
  std::vector<int64_t> shape{n};
  for (int i = 0; i < k; ++i) shape.push_back(3);
  return shape;
}

// T_k for k <= deg from V; orders above deg are empty tensors [0].
std::vector<at::Tensor> project_features(const at::Tensor& V, int64_t deg) {
  const int64_t n = V.size(0);
  std::vector<at::Tensor> T;
  for (int k = 0; k < 4; ++k) {
    if (k > deg) {
      T.push_back(at::empty({0}, V.options()));
      continue;
    }
    const int64_t base = k == 0 ? 0 : ncart(k - 1), rows = (k + 1) * (k + 2) / 2;
    T.push_back(V.narrow(1, base, rows).mm(order_projection(k, V)).view(feature_shape(n, k)));
  }
  return T;
}

// dL/dV [n, ncart(deg)] from dL/dT_k (the transposed projections), differentiable.
at::Tensor unproject_grads(const std::vector<at::Tensor>& grads, int64_t deg, int64_t n, const at::Tensor& like) {
  std::vector<at::Tensor> cols;
  for (int k = 0; k <= deg; ++k) {
    const int64_t rows = (k + 1) * (k + 2) / 2;
    const at::Tensor Q = order_projection(k, like);
    if (grads[k].defined() && grads[k].numel() > 0)
      cols.push_back(grads[k].reshape({n, Q.size(1)}).mm(Q.t()));
    else
      cols.push_back(at::zeros({n, rows}, like.options()));
  }
  return at::cat(cols, 1);
}

class FeaturesFunction : public torch::autograd::Function<FeaturesFunction> {
 public:
  // inputs: ML positions, MM positions, MM charges as [m, 1] source coefficients, ML widths (or
  // empty), box (or empty), exclusions
  static variable_list forward(AutogradContext* ctx, const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                               const at::Tensor& rw, const at::Tensor& box, const at::Tensor& excl, double cutoff,
                               double width, int64_t deg, bool graph) {
    const at::Tensor none = at::empty({0}, rp.options());
    const at::Tensor V = embedding_forward(ctx, rp, sp, c, rw, none, box, excl, cutoff, width, 0.0, deg, 0, graph);
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> T = project_features(V, deg);
    for (int k = (int)deg + 1; k < 4; ++k) ctx->mark_non_differentiable({T[k]});
    return T;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const int64_t deg = ctx->saved_data["deg"].toInt();
    const at::Tensor G = unproject_grads(grads, deg, static_size(s[0], 0), s[0]);
    const EmbeddingNeeds needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                               ctx->needs_input_grad(3), false, ctx->needs_input_grad(4)};
    variable_list g = embedding_backward(ctx, G, needs);
    return {g[0], g[1], g[2], g[3], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple4(const std::vector<at::Tensor>& T) {
  return {T[0], T[1], T[2], T[3]};
}

// x * 0 is 0 for finite x and NaN for an infinity or a NaN: eight running sums vectorise.
template <typename T>
bool all_finite(const T* p, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += p[i + l] * T(0);
  T sum = 0;
  for (; i < n; ++i) sum += p[i] * T(0);
  for (int l = 0; l < 8; ++l) sum += acc[l];
  return sum == T(0);
}

bool all_finite(const at::Tensor& t) {
  if (!t.device().is_cpu()) return at::isfinite(t).all().item<bool>();
  const at::Tensor c = t.contiguous();
  return c.scalar_type() == at::kFloat ? all_finite(c.data_ptr<float>(), c.numel())
                                       : all_finite(c.data_ptr<double>(), c.numel());
}

// The data-dependent checks of mm_features (python/mlpolar/electrostatics/embedding.py,
// _check_values, same messages) before any work: the Python versions cost one small tensor op
// each, ~0.1 ms per step together. Shapes and dtypes were checked by the caller
// (check_embedding_args repeats them in the kernel).
void check_feature_values(const at::Tensor& ml_pos, const c10::optional<at::Tensor>& ml_widths,
                          const at::Tensor& mm_pos, const at::Tensor& mm_charges,
                          const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff) {
  if (is_traced(ml_pos)) return;  // no data to read
  TORCH_CHECK_VALUE(all_finite(ml_pos) && all_finite(mm_pos),
                    "ml_positions or mm_positions contain NaN or infinite values");
  TORCH_CHECK_VALUE(all_finite(mm_charges), "mm_charges contain NaN or infinite values");
  if (ml_widths.has_value() && ml_widths->numel() > 0)
    TORCH_CHECK_VALUE(ml_widths->ge(0).all().item<bool>(), "ml_widths must be >= 0 (nm); use None for point sites");
  if (box.has_value()) {
    const at::Tensor b = box->detach().to(at::kDouble).cpu().contiguous();
    const double* h = b.data_ptr<double>();
    const double ax = h[0], bx = h[3], by = h[4], cx = h[6], cy = h[7], cz = h[8];
    const double tol = 1e-6 * std::max({std::abs(ax), std::abs(by), std::abs(cz)});
    TORCH_CHECK_VALUE(ax > 0 && by > 0 && cz > 0 && std::abs(h[1]) <= tol && std::abs(h[2]) <= tol &&
                          std::abs(h[5]) <= tol,
                      "box must be in OpenMM's reduced form: a = (ax,0,0), b = (bx,by,0), c = (cx,cy,cz)");
    TORCH_CHECK_VALUE(std::abs(bx) <= 0.5 * ax + tol && std::abs(cx) <= 0.5 * ax + tol && std::abs(cy) <= 0.5 * by + tol,
                      "box must be reduced (|bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2); reduce it with "
                      "openmm.app.internal.unitcell.reducePeriodicBoxVectors");
    TORCH_CHECK_VALUE(cutoff <= 0.5 * std::min({ax, by, cz}),
                      "cutoff is more than half the smallest box width; use a larger box or a smaller cutoff");
  }
  if (excl.numel() > 0) {
    const at::Tensor e = excl.to(at::kLong).cpu();
    const auto lo = std::get<0>(e.aminmax(0)), hi = std::get<1>(e.aminmax(0));
    TORCH_CHECK_VALUE(lo[0].item<int64_t>() >= 0 && hi[0].item<int64_t>() < ml_pos.size(0),
                      "exclusions[:, 0] must index ML sites in [0, n)");
    TORCH_CHECK_VALUE(lo[1].item<int64_t>() >= 0 && hi[1].item<int64_t>() < mm_pos.size(0),
                      "exclusions[:, 1] must index MM atoms in [0, m)");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features_autograd(
    const at::Tensor& ml_pos, const c10::optional<at::Tensor>& ml_widths, const at::Tensor& mm_pos,
    const at::Tensor& mm_charges, const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff,
    double switch_width, int64_t max_order) {
  TORCH_CHECK_VALUE(max_order >= 0 && max_order <= 3, "max_order must be 0, 1, 2 or 3");
  TORCH_CHECK_VALUE(mm_charges.dim() == 1, "mm_charges must have shape [m]");
  check_feature_values(ml_pos, ml_widths, mm_pos, mm_charges, box, excl, cutoff);
  // the charges' view as [m, 1] coefficients is an input of the Function, so that a second
  // derivative reaches the charges through it
  return as_tuple4(FeaturesFunction::apply(ml_pos, mm_pos, mm_charges.unsqueeze(1), as_tensor(ml_widths, ml_pos),
                                           as_tensor(box, ml_pos), excl, cutoff, switch_width, max_order,
                                           at::GradMode::is_enabled()));
}

// Every backend (CPU, CUDA, Meta) and inference mode: the operator's value without autograd.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features_plain(
    const at::Tensor& ml_pos, const c10::optional<at::Tensor>& ml_widths, const at::Tensor& mm_pos,
    const at::Tensor& mm_charges, const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff,
    double switch_width, int64_t max_order) {
  TORCH_CHECK_VALUE(max_order >= 0 && max_order <= 3, "max_order must be 0, 1, 2 or 3");
  check_feature_values(ml_pos, ml_widths, mm_pos, mm_charges, box, excl, cutoff);
  const at::Tensor V = call_embedding(ml_pos, mm_pos, mm_charges.unsqueeze(1), ml_widths, c10::nullopt, box, excl,
                                      cutoff, switch_width, 0.0, max_order, 0);
  return as_tuple4(project_features(V, max_order));
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, Autograd, m) { m.impl("embedding_field", &mlpolar::embedding_autograd); }

TORCH_LIBRARY_FRAGMENT(mlpolar, m) {
  // The MM charges' Taylor features at the ML sites, real space (cutoff with the C4 switch):
  // T0 [n], T1 [n, 3], T2 [n, 3, 3], T3 [n, 3, 3, 3] in kJ/mol/e/nm^k, T2 and T3 traceless,
  // orders above max_order empty. embedding_field with the unpacking, trace removal and Coulomb
  // constant in the same autograd node (mlpolar.electrostatics.mm_features without a long-range part).
  m.def("embedding_features(Tensor ml_positions, Tensor? ml_widths, Tensor mm_positions, Tensor mm_charges, "
        "Tensor? box, Tensor exclusions, float cutoff, float switch_width, int max_order) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(mlpolar, Autograd, m) { m.impl("embedding_features", &mlpolar::features_autograd); }
TORCH_LIBRARY_IMPL(mlpolar, CompositeExplicitAutograd, m) {
  m.impl("embedding_features", &mlpolar::features_plain);
}
