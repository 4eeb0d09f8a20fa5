// Fukui equilibration on the CPU: q_i <- q_i + w_i (T_f - sum_{j in f} q_j), w = softmax of the
// logits over each fragment f, per spin channel (column). All per-fragment sums are in double,
// so sum_i q_i = T_f holds to double rounding of the result whatever the working precision.
#include <ATen/Dispatch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace mlpolar {

void check_fukui_args(const at::Tensor& charges, const at::Tensor& logits, const at::Tensor& targets,
                      const at::Tensor& fragments) {
  TORCH_CHECK(charges.scalar_type() == at::kFloat || charges.scalar_type() == at::kDouble,
              "fukui_equilibrate: charges must be float32 or float64, got ", charges.scalar_type());
  TORCH_CHECK(charges.dim() == 2 && charges.size(1) == 2,
              "fukui_equilibrate: charges must be [n, 2] (alpha, beta), got ", charges.sizes());
  TORCH_CHECK(logits.sizes() == charges.sizes(), "fukui_equilibrate: logits must have the shape of charges ",
              charges.sizes(), ", got ", logits.sizes());
  TORCH_CHECK(targets.dim() == 2 && targets.size(1) == 2, "fukui_equilibrate: targets must be [F, 2], got ",
              targets.sizes());
  TORCH_CHECK(fragments.dim() == 1 && fragments.size(0) == charges.size(0),
              "fukui_equilibrate: fragments must be [n] = [", charges.size(0), "], got ", fragments.sizes());
  TORCH_CHECK(fragments.scalar_type() == at::kLong, "fukui_equilibrate: fragments must be int64, got ",
              fragments.scalar_type());
  for (const at::Tensor* t : {&logits, &targets})
    TORCH_CHECK(t->scalar_type() == charges.scalar_type(),
                "fukui_equilibrate: logits and targets must have the dtype of charges (", charges.scalar_type(), ")");
  for (const at::Tensor* t : {&logits, &targets, &fragments})
    TORCH_CHECK(t->device() == charges.device(), "fukui_equilibrate: all tensors must be on the device of charges (",
                charges.device(), ")");
}

namespace {

// Per (fragment, channel): largest logit, softmax normaliser sum exp(l - top), charge sum; and
// per atom the softmax weights w (so that exp is taken once per atom and channel).
struct FragmentSums {
  std::vector<double> top, norm, total, weight;
};

template <typename T>
FragmentSums fragment_sums(int64_t n, int64_t F, const T* q, const T* l, const int64_t* frag) {
  FragmentSums s{std::vector<double>(2 * F, -std::numeric_limits<double>::infinity()),
                 std::vector<double>(2 * F, 0.0), std::vector<double>(2 * F, 0.0), std::vector<double>(2 * n)};
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = frag[i];
    TORCH_CHECK(f >= 0 && f < F, "fukui_equilibrate: fragment id ", f, " of atom ", i, " is outside 0..F-1 = 0..",
                F - 1);
    for (int c = 0; c < 2; ++c) s.top[2 * f + c] = std::max(s.top[2 * f + c], (double)l[2 * i + c]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = frag[i];
    for (int c = 0; c < 2; ++c) {
      const double e = std::exp((double)l[2 * i + c] - s.top[2 * f + c]);
      s.weight[2 * i + c] = e;
      s.norm[2 * f + c] += e;
      s.total[2 * f + c] += (double)q[2 * i + c];
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < 2; ++c) s.weight[2 * i + c] /= s.norm[2 * frag[i] + c];
  return s;
}

// Threads only pay off on very large inputs: these loops are memory-bound, and on a loaded
// machine waiting for a descheduled OpenMP thread costs more than the whole serial loop.
constexpr int64_t PARALLEL_GRAIN = 1 << 18;

template <typename T>
void forward_kernel(int64_t n, int64_t F, const T* q, const T* l, const T* targets, const int64_t* frag, T* out) {
  const FragmentSums s = fragment_sums(n, F, q, l, frag);
  std::vector<double> missing(2 * F);
  for (int64_t k = 0; k < 2 * F; ++k) missing[k] = (double)targets[k] - s.total[k];
#pragma omp parallel for schedule(static) if (n > PARALLEL_GRAIN)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = frag[i];
    for (int c = 0; c < 2; ++c) {
      const int64_t k = 2 * f + c;
      const double w = s.weight[2 * i + c];
      out[2 * i + c] = (T)((double)q[2 * i + c] + w * missing[k]);
    }
  }
}

// With G_f = sum_{i in f} g_i w_i and D_f = T_f - sum q:
//   dL/dq_i = g_i - G_f,   dL/dl_i = D_f w_i (g_i - G_f),   dL/dT_f = G_f.
template <typename T>
void backward_kernel(int64_t n, int64_t F, const T* g, const T* q, const T* l, const T* targets, const int64_t* frag,
                     T* grad_q, T* grad_l, T* grad_t) {
  const FragmentSums s = fragment_sums(n, F, q, l, frag);
  std::vector<double> G(2 * F, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = frag[i];
    for (int c = 0; c < 2; ++c) {
      const int64_t k = 2 * f + c;
      G[k] += (double)g[2 * i + c] * s.weight[2 * i + c];
    }
  }
#pragma omp parallel for schedule(static) if (n > PARALLEL_GRAIN)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = frag[i];
    for (int c = 0; c < 2; ++c) {
      const int64_t k = 2 * f + c;
      const double w = s.weight[2 * i + c];
      const double a = (double)g[2 * i + c] - G[k];
      grad_q[2 * i + c] = (T)a;
      grad_l[2 * i + c] = (T)(((double)targets[k] - s.total[k]) * w * a);
    }
  }
  for (int64_t k = 0; k < 2 * F; ++k) grad_t[k] = (T)G[k];
}

}  // namespace

at::Tensor fukui_equilibrate_cpu(const at::Tensor& charges, const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& fragments) {
  check_fukui_args(charges, logits, targets, fragments);
  const at::Tensor q = charges.contiguous(), l = logits.contiguous(), t = targets.contiguous(),
                   fr = fragments.contiguous();
  at::Tensor out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fukui_equilibrate_cpu", [&] {
    forward_kernel<scalar_t>(q.size(0), t.size(0), q.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
                             t.data_ptr<scalar_t>(), fr.data_ptr<int64_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fukui_equilibrate_backward_cpu(const at::Tensor& grad_out,
                                                                              const at::Tensor& charges,
                                                                              const at::Tensor& logits,
                                                                              const at::Tensor& targets,
                                                                              const at::Tensor& fragments) {
  check_fukui_args(charges, logits, targets, fragments);
  TORCH_CHECK(grad_out.sizes() == charges.sizes() && grad_out.scalar_type() == charges.scalar_type(),
              "fukui_equilibrate_backward: grad_out must match charges in shape and dtype");
  const at::Tensor g = grad_out.contiguous(), q = charges.contiguous(), l = logits.contiguous(),
                   t = targets.contiguous(), fr = fragments.contiguous();
  at::Tensor gq = at::empty_like(q), gl = at::empty_like(q), gt = at::empty_like(t);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fukui_equilibrate_backward_cpu", [&] {
    backward_kernel<scalar_t>(q.size(0), t.size(0), g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                              l.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), fr.data_ptr<int64_t>(),
                              gq.data_ptr<scalar_t>(), gl.data_ptr<scalar_t>(), gt.data_ptr<scalar_t>());
  });
  return {gq, gl, gt};
}

}  // namespace mlpolar
