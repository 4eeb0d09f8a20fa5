// Autograd of the Fukui equilibration. The first derivative is the fused backward operator; that
// operator is differentiable again through a backward written in plain ATen ops (so forces in a
// training loss, create_graph=True, work, and higher orders follow from ATen's own autograd).
#include <torch/autograd.h>
#include <torch/library.h>

#include <limits>

#include "ops.h"

namespace mlpolar {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& q, const at::Tensor& l, const at::Tensor& t, const at::Tensor& frag) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mlpolar::fukui_equilibrate", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(q, l, t, frag);
}
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
BackwardResult call_backward(const at::Tensor& g, const at::Tensor& q, const at::Tensor& l, const at::Tensor& t,
                             const at::Tensor& frag) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mlpolar::fukui_equilibrate_backward", "")
                       .typed<BackwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&)>();
  return op.call(g, q, l, t, frag);
}

// Per-fragment sum of an [n, 2] tensor (in its own dtype; callers pass double).
// F is a SymInt: under torch.compile with dynamic shapes the fragment count may be symbolic.
at::Tensor segment_sum(const at::Tensor& x, const at::Tensor& frag, const c10::SymInt& F) {
  return at::zeros_symint({F, 2}, x.options()).index_add(0, frag, x);
}

// Softmax of the logits over each fragment, in double; the shift by the fragment's largest
// logit (detached: the softmax does not depend on it) keeps exp finite.
at::Tensor segment_softmax(const at::Tensor& l, const at::Tensor& frag, const c10::SymInt& F) {
  const at::Tensor index = frag.unsqueeze(1).expand({-1, 2});
  const at::Tensor top = at::full_symint({F, 2}, -std::numeric_limits<double>::infinity(), l.options())
                             .scatter_reduce(0, index, l.detach(), "amax", /*include_self=*/true);
  const at::Tensor e = at::exp(l - top.index_select(0, frag));
  return e / segment_sum(e, frag, F).index_select(0, frag);
}

at::Tensor or_zeros(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t.to(at::kDouble) : at::zeros_like(like);
}

// (a, b, c) = (g - G, D w (g - G), G) with G = seg(g w), D = T - seg(q), w = softmax(l).
class FukuiBackwardFunction : public torch::autograd::Function<FukuiBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& q, const at::Tensor& l,
                               const at::Tensor& t, const at::Tensor& frag) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({g, q, l, t, frag});
    auto [a, b, c] = call_backward(g, q, l, t, frag);
    return {a, b, c};
  }

  // Cotangents A, B, C of (a, b, c). With P = A + B D w and K = C - seg(P):
  //   dL/dg = P + K w,  dL/dT = E = seg(B w a) = -dL/dq,
  //   dL/dl = w (phi - seg(w phi)) with phi = dL/dw = B D a + K g (the softmax Jacobian).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &g0 = s[0], &q0 = s[1], &l0 = s[2], &t0 = s[3], &frag = s[4];
    const c10::SymInt F = t0.sym_size(0);
    const at::Tensor g = g0.to(at::kDouble), q = q0.to(at::kDouble), l = l0.to(at::kDouble), t = t0.to(at::kDouble);
    const at::Tensor A = or_zeros(grads[0], g), B = or_zeros(grads[1], g), C = or_zeros(grads[2], t);
    auto at_atoms = [&](const at::Tensor& per_fragment) { return per_fragment.index_select(0, frag); };
    const at::Tensor w = segment_softmax(l, frag, F);
    const at::Tensor D = at_atoms(t - segment_sum(q, frag, F));
    const at::Tensor a = g - at_atoms(segment_sum(g * w, frag, F));
    const at::Tensor P = A + B * D * w;
    const at::Tensor K = at_atoms(C - segment_sum(P, frag, F));
    const at::Tensor E = segment_sum(B * w * a, frag, F);
    const at::Tensor phi = B * D * a + K * g;
    variable_list out(5);
    const auto dtype = q0.scalar_type();
    if (ctx->needs_input_grad(0)) out[0] = (P + K * w).to(dtype);
    if (ctx->needs_input_grad(1)) out[1] = (-at_atoms(E)).to(dtype);
    if (ctx->needs_input_grad(2)) out[2] = (w * (phi - at_atoms(segment_sum(w * phi, frag, F)))).to(dtype);
    if (ctx->needs_input_grad(3)) out[3] = E.to(dtype);
    return out;
  }
};

class FukuiFunction : public torch::autograd::Function<FukuiFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& l, const at::Tensor& t,
                            const at::Tensor& frag) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({q, l, t, frag});
    return call_forward(q, l, t, frag);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    variable_list out(4);
    if (!grads[0].defined()) return out;
    // Through the dispatcher with autograd on: differentiable when a graph is being built.
    auto [gq, gl, gt] = call_backward(grads[0], s[0], s[1], s[2], s[3]);
    if (ctx->needs_input_grad(0)) out[0] = gq;
    if (ctx->needs_input_grad(1)) out[1] = gl;
    if (ctx->needs_input_grad(2)) out[2] = gt;
    return out;
  }
};

at::Tensor fukui_autograd(const at::Tensor& q, const at::Tensor& l, const at::Tensor& t, const at::Tensor& frag) {
  return FukuiFunction::apply(q, l, t, frag);
}
BackwardResult fukui_backward_autograd(const at::Tensor& g, const at::Tensor& q, const at::Tensor& l,
                                       const at::Tensor& t, const at::Tensor& frag) {
  auto r = FukuiBackwardFunction::apply(g, q, l, t, frag);
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, Autograd, m) {
  m.impl("fukui_equilibrate", &mlpolar::fukui_autograd);
  m.impl("fukui_equilibrate_backward", &mlpolar::fukui_backward_autograd);
}
