// Autograd for the mlpolar operators. Each backward is written with the forward operators
// themselves (one derivative degree higher), called through the dispatcher with autograd on,
// so second derivatives (forces in a training loss) work to any order the degrees allow.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "multipole_math.h"
#include "ops.h"
#include "trace_safe.h"

namespace mlpolar {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_field(const at::Tensor& pos, const at::Tensor& c, const c10::optional<at::Tensor>& w,
                      const c10::optional<at::Tensor>& box, const at::Tensor& ep, const at::Tensor& ei, double cutoff,
                      double beta, int64_t deg, bool self) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mlpolar::multipole_field", "").typed<decltype(call_field)>();
  return op.call(pos, c, w, box, ep, ei, cutoff, beta, deg, self);
}
std::tuple<at::Tensor, at::Tensor> call_field2(const at::Tensor& pos, const at::Tensor& c1, const at::Tensor& c2,
                                               const c10::optional<at::Tensor>& w, const c10::optional<at::Tensor>& box,
                                               const at::Tensor& ep, const at::Tensor& ei, double cutoff, double beta,
                                               int64_t deg1, int64_t deg2, bool self) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mlpolar::multipole_field2", "").typed<decltype(call_field2)>();
  return op.call(pos, c1, c2, w, box, ep, ei, cutoff, beta, deg1, deg2, self);
}
at::Tensor call_spread(const at::Tensor& u, const at::Tensor& e, at::IntArrayRef size, int64_t order) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mlpolar::pme_spread", "").typed<decltype(call_spread)>();
  return op.call(u, e, size, order);
}
at::Tensor call_gather(const at::Tensor& u, const at::Tensor& grid, int64_t deg, int64_t order) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mlpolar::pme_gather", "").typed<decltype(call_gather)>();
  return op.call(u, grid, deg, order);
}
at::Tensor call_virial(const at::Tensor& pos, const at::Tensor& c, const c10::optional<at::Tensor>& w,
                       const c10::optional<at::Tensor>& box, const at::Tensor& ep, const at::Tensor& ei, double cutoff,
                       double beta, bool self, const at::Tensor& g) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mlpolar::multipole_virial", "").typed<decltype(call_virial)>();
  return op.call(pos, c, w, box, ep, ei, cutoff, beta, self, g);
}

// Column indices of t + e_a (shift = 1) or t + 2 e_a (shift = 2) for every packed t of degree <= d.
at::Tensor shifted_columns(int d, int axis, int shift, const at::Tensor& like) {
  std::vector<int64_t> idx;
  for (int dt = 0; dt <= d; ++dt)
    for (int t1 = dt; t1 >= 0; --t1)
      for (int t2 = dt - t1; t2 >= 0; --t2) {
        int t[3] = {t1, t2, dt - t1 - t2};
        t[axis] += shift;
        idx.push_back(cidx(t[0], t[1], t[2]));
      }
  return small_constant(idx, like.options().dtype(at::kLong), is_traced(like));
}

// (-1)^{|t|} for every packed t of degree <= d.
at::Tensor parity(int d, const at::Tensor& like) {
  std::vector<double> s;
  for (int dt = 0; dt <= d; ++dt)
    for (int k = 0; k < ncart(dt) - (dt ? ncart(dt - 1) : 0); ++k) s.push_back(dt % 2 ? -1.0 : 1.0);
  return small_constant(s, like.options(), is_traced(like));
}

// [n, 3]: sum_t x_t y_{t + e_a}, with x of degree d and y of degree >= d + 1.
at::Tensor contract_shift(const at::Tensor& x, const at::Tensor& y, int d) {
  std::vector<at::Tensor> cols;
  for (int a = 0; a < 3; ++a) cols.push_back((x * y.index_select(1, shifted_columns(d, a, 1, y))).sum(1));
  return at::stack(cols, 1);
}

// [n]: sum_t x_t (Laplacian y)_t, with x of degree d and y of degree >= d + 2.
at::Tensor contract_laplacian(const at::Tensor& x, const at::Tensor& y, int d) {
  at::Tensor lap = y.index_select(1, shifted_columns(d, 0, 2, y));
  for (int a = 1; a < 3; ++a) lap = lap + y.index_select(1, shifted_columns(d, a, 2, y));
  return (x * lap).sum(1);
}

// Absent optional tensors travel through autograd::Function as empty tensors: Function::apply
// drops nullopt inputs from its edge list, which would shift the gradient slots.
at::Tensor opt(const c10::optional<at::Tensor>& t, const at::Tensor& like) {
  return t.has_value() ? *t : at::empty({0}, like.options());
}
c10::optional<at::Tensor> opt(const at::Tensor& t) {
  return is_present(t) ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

class FieldFunction : public torch::autograd::Function<FieldFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pos, const at::Tensor& c, const at::Tensor& w,
                            const at::Tensor& box, const at::Tensor& ep, const at::Tensor& ei, double cutoff,
                            double beta, int64_t deg, bool self) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({pos, c, w, box, ep, ei});
    ctx->saved_data["cutoff"] = cutoff;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["deg"] = deg;
    ctx->saved_data["self"] = self;
    if (pos.requires_grad() || (is_present(box) && box.requires_grad())) {
      // Forces will be asked for: one degree more costs little in the same pass and spares
      // the first-order backward a pass over the pairs (F1 below).
      at::Tensor F1 = call_field(pos, c, opt(w), opt(box), ep, ei, cutoff, beta, deg + 1, self);
      ctx->saved_data["F1"] = F1;
      return F1.slice(1, 0, ncart((int)deg)).contiguous();
    }
    return call_field(pos, c, opt(w), opt(box), ep, ei, cutoff, beta, deg, self);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &pos = s[0], &c = s[1], &w = s[2], &box = s[3], &ep = s[4], &ei = s[5];
    const double cutoff = ctx->saved_data["cutoff"].toDouble(), beta = ctx->saved_data["beta"].toDouble();
    const int dout = (int)ctx->saved_data["deg"].toInt();
    const bool self = ctx->saved_data["self"].toBool();
    const int din = degree_of_columns(static_size(c, 1), "coeffs");
    const at::Tensor G = grads[0];
    variable_list out(10);
    if (!G.defined()) return out;
    const bool need_pos = ctx->needs_input_grad(0), need_c = ctx->needs_input_grad(1);
    const bool need_w = is_present(w) && ctx->needs_input_grad(2);
    const bool need_box = is_present(box) && ctx->needs_input_grad(3);
    // G' = parity * G: the grad as source coefficients (a receiver seen from the other end).
    const at::Tensor Gp = G * parity(dout, G);
    const at::Tensor pc = parity(din, c);
    at::Tensor grad_pos;
    if (need_pos || need_c || need_box) {
      at::Tensor F1, F2;
      const bool saved = ctx->saved_data.count("F1") > 0;
      if ((need_pos || need_box) && !at::GradMode::is_enabled()) {
        // No graph to build. F1 = field(c, dout + 1) was kept by the forward. If G is a multiple
        // of the sources, G = lambda (-1)^|t| c (the sites' energy with themselves, 1/2 sum d.V),
        // then F2 = field(G', din + 1) = lambda F1 exactly; otherwise one pass gives what is missing.
        at::AutoDispatchBelowADInplaceOrView below;
        if (saved) F1 = ctx->saved_data["F1"].toTensor();
        double lambda = 0.0;
        bool proportional = false;
        if (saved && din == dout && !is_traced(G)) {  // reads values: eager only
          const at::Tensor ref = pc * c;
          const double norm2 = (ref * ref).sum().item<double>();
          if (norm2 > 0) {
            lambda = (G * ref).sum().item<double>() / norm2;
            const double tol = c.scalar_type() == at::kDouble ? 1e-12 : 1e-6;
            proportional = (G - lambda * ref).abs().max().item<double>() <= tol * G.abs().max().item<double>();
          }
        }
        if (proportional) {
          F2 = lambda * F1;
        } else if (saved) {
          F2 = call_field(pos, Gp, opt(w), opt(box), ep, ei, cutoff, beta, din + 1, self);
        } else {
          std::tie(F1, F2) = call_field2(pos, c, Gp, opt(w), opt(box), ep, ei, cutoff, beta, dout + 1, din + 1, self);
        }
      } else {
        F2 = call_field(pos, Gp, opt(w), opt(box), ep, ei, cutoff, beta, din + 1, self);
        if (need_pos || need_box) F1 = call_field(pos, c, opt(w), opt(box), ep, ei, cutoff, beta, dout + 1, self);
      }
      if (need_c) out[1] = pc * F2.slice(1, 0, ncart(din));
      if (need_pos || need_box) {
        grad_pos = contract_shift(G, F1, dout) + contract_shift(pc * c, F2, din);
        if (need_pos) out[0] = grad_pos;
      }
    }
    if (need_w) {
      // d/ds erf(r/sqrt(s))/r = Laplacian / 4 and ds_ij/dsigma_i = 4 sigma_i; the Ewald part
      // does not depend on the widths, so the Gaussian part alone (beta = 0) is differentiated.
      at::Tensor H1 = call_field(pos, c, opt(w), opt(box), ep, ei, cutoff, 0.0, dout + 2, self);
      at::Tensor H2 = call_field(pos, Gp, opt(w), opt(box), ep, ei, cutoff, 0.0, din + 2, self);
      out[2] = w * (contract_laplacian(G, H1, dout) + contract_laplacian(pc * c, H2, din));
    }
    if (need_box) {
      // dL/dB = B^-T (W - sum_i r_i^T g_i) with W the pair virial (x = r_i - r_j + n B).
      at::Tensor W = call_virial(pos, c, opt(w), opt(box), ep, ei, cutoff, beta, self, G);
      out[3] = at::matmul(at::inverse(box).transpose(0, 1), W - at::matmul(pos.transpose(0, 1), grad_pos));
    }
    return out;
  }
};

class VirialFunction : public torch::autograd::Function<VirialFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& pos, const at::Tensor& c, const at::Tensor& w,
                            const at::Tensor& box, const at::Tensor& ep, const at::Tensor& ei, double cutoff,
                            double beta, bool self, const at::Tensor& g) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_virial(pos, c, opt(w), opt(box), ep, ei, cutoff, beta, self, g);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "mlpolar: second derivatives through the periodic box (e.g. training on stress) are not "
                       "supported; detach the box or train without stress terms");
  }
};

class SpreadFunction : public torch::autograd::Function<SpreadFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& e, at::IntArrayRef size,
                            int64_t order) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({u, e});
    ctx->saved_data["order"] = order;
    return call_spread(u, e, size, order);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &u = s[0], &e = s[1];
    const int64_t order = ctx->saved_data["order"].toInt();
    const int deg = degree_of_columns(static_size(e, 1), "coeffs");
    variable_list out(4);
    const at::Tensor& gQ = grads[0];
    if (!gQ.defined()) return out;
    const bool need_u = ctx->needs_input_grad(0);
    at::Tensor F = call_gather(u, gQ, need_u ? deg + 1 : deg, order);
    if (ctx->needs_input_grad(1)) out[1] = F.slice(1, 0, ncart(deg));
    if (need_u) out[0] = contract_shift(e, F, deg);
    return out;
  }
};

class GatherFunction : public torch::autograd::Function<GatherFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& grid, int64_t deg,
                            int64_t order) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({u, grid});
    ctx->saved_data["order"] = order;
    ctx->saved_data["deg"] = deg;
    return call_gather(u, grid, deg, order);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &u = s[0], &grid = s[1];
    const int64_t order = ctx->saved_data["order"].toInt();
    const int deg = (int)ctx->saved_data["deg"].toInt();
    variable_list out(4);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return out;
    if (ctx->needs_input_grad(1)) {
      const std::vector<int64_t> size = {static_size(grid, 0), static_size(grid, 1), static_size(grid, 2)};
      out[1] = call_spread(u, g, size, order);
    }
    if (ctx->needs_input_grad(0)) out[0] = contract_shift(g, call_gather(u, grid, deg + 1, order), deg);
    return out;
  }
};

at::Tensor field_autograd(const at::Tensor& pos, const at::Tensor& c, const c10::optional<at::Tensor>& w,
                          const c10::optional<at::Tensor>& box, const at::Tensor& ep, const at::Tensor& ei,
                          double cutoff, double beta, int64_t deg, bool self) {
  return FieldFunction::apply(pos, c, opt(w, pos), opt(box, pos), ep, ei, cutoff, beta, deg, self);
}
at::Tensor virial_autograd(const at::Tensor& pos, const at::Tensor& c, const c10::optional<at::Tensor>& w,
                           const c10::optional<at::Tensor>& box, const at::Tensor& ep, const at::Tensor& ei,
                           double cutoff, double beta, bool self, const at::Tensor& g) {
  return VirialFunction::apply(pos, c, opt(w, pos), opt(box, pos), ep, ei, cutoff, beta, self, g);
}
at::Tensor spread_autograd(const at::Tensor& u, const at::Tensor& e, at::IntArrayRef size, int64_t order) {
  return SpreadFunction::apply(u, e, size, order);
}
at::Tensor gather_autograd(const at::Tensor& u, const at::Tensor& grid, int64_t deg, int64_t order) {
  return GatherFunction::apply(u, grid, deg, order);
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, Autograd, m) {
  m.impl("multipole_field", &mlpolar::field_autograd);
  m.impl("multipole_virial", &mlpolar::virial_autograd);
  m.impl("multipole_field2", torch::autograd::autogradNotImplementedFallback());
  m.impl("pme_spread", &mlpolar::spread_autograd);
  m.impl("pme_gather", &mlpolar::gather_autograd);
}
