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
#include <torch/autograd.h>
#include <torch/library.h>

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

class EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
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

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &rp = s[0], &sp = s[1], &c = s[2], &rw = s[3], &sw = s[4], &box = s[5], &excl = s[6];
    const double cutoff = ctx->saved_data["cutoff"].toDouble(), width = ctx->saved_data["width"].toDouble();
    const double beta = ctx->saved_data["beta"].toDouble();
    const int dout = (int)ctx->saved_data["deg"].toInt();
    const int64_t wd = ctx->saved_data["wd"].toInt();
    const int64_t wd_swapped = wd == 0 ? 0 : 3 - wd;  // receivers and sources trade places
    const int din = degree_of_columns(static_size(c, 1), "coeffs");
    variable_list out(13);
    const at::Tensor G = grads[0];
    if (!G.defined()) return out;
    const bool need_rw = is_present(rw) && ctx->needs_input_grad(3), need_sw = is_present(sw) && ctx->needs_input_grad(4);
    TORCH_CHECK(wd == 0 || !(need_rw || need_sw),
                "mm_features/embedding_field: second derivatives with respect to the Gaussian widths are not "
                "implemented; detach the widths where a second width derivative would be taken");
    TORCH_CHECK(!(is_present(box) && ctx->needs_input_grad(5)),
                "mm_features/embedding_field: gradients with respect to the box are not implemented; pass a box "
                "that does not require grad (box.detach())");
    const bool need_rp = ctx->needs_input_grad(0), need_sp = ctx->needs_input_grad(1), need_c = ctx->needs_input_grad(2);
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
};

at::Tensor embedding_autograd(const at::Tensor& rp, const at::Tensor& sp, const at::Tensor& c,
                              const c10::optional<at::Tensor>& rw, const c10::optional<at::Tensor>& sw,
                              const c10::optional<at::Tensor>& box, const at::Tensor& excl, double cutoff,
                              double width, double beta, int64_t deg, int64_t wd) {
  // inside Function::forward grad mode is always off: whether a graph is recorded is decided here
  return EmbeddingFunction::apply(rp, sp, c, as_tensor(rw, rp), as_tensor(sw, rp), as_tensor(box, rp), excl, cutoff,
                                  width, beta, deg, wd, at::GradMode::is_enabled());
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, Autograd, m) { m.impl("embedding_field", &mlpolar::embedding_autograd); }
