// The mlpolar operator library: schemas, CPU kernels and shape-only (Meta) kernels so that
// torch.compile can trace through. CUDA kernels register in cuda_dispatch.cpp, autograd in
// autograd.cpp.
#include <torch/library.h>

#include "multipole_math.h"
#include "ops.h"

namespace mlpolar {
namespace {

at::Tensor field_meta(const at::Tensor& positions, const at::Tensor&, const c10::optional<at::Tensor>&,
                      const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double, double,
                      int64_t deg_out, bool) {
  return at::empty({positions.size(0), (int64_t)ncart((int)deg_out)}, positions.options());
}
std::tuple<at::Tensor, at::Tensor> field2_meta(const at::Tensor& positions, const at::Tensor&, const at::Tensor&,
                                               const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                               const at::Tensor&, const at::Tensor&, double, double, int64_t deg1,
                                               int64_t deg2, bool) {
  return {at::empty({positions.size(0), (int64_t)ncart((int)deg1)}, positions.options()),
          at::empty({positions.size(0), (int64_t)ncart((int)deg2)}, positions.options())};
}
at::Tensor virial_meta(const at::Tensor& positions, const at::Tensor&, const c10::optional<at::Tensor>&,
                       const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double, double, bool,
                       const at::Tensor&) {
  return at::empty({3, 3}, positions.options());
}
at::Tensor spread_meta(const at::Tensor&, const at::Tensor& coeffs, at::IntArrayRef grid_size, int64_t) {
  return at::empty({grid_size[0], grid_size[1], grid_size[2]}, coeffs.options());
}
at::Tensor gather_meta(const at::Tensor& grid_positions, const at::Tensor& grid, int64_t deg, int64_t) {
  return at::empty({grid_positions.size(0), (int64_t)ncart((int)deg)}, grid.options());
}
at::Tensor fukui_meta(const at::Tensor& charges, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return at::empty_like(charges);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> fukui_backward_meta(const at::Tensor&, const at::Tensor& charges,
                                                                   const at::Tensor&, const at::Tensor& targets,
                                                                   const at::Tensor&) {
  return {at::empty_like(charges), at::empty_like(charges), at::empty_like(targets)};
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY(mlpolar, m) {
  // Potential derivatives d^t phi(r_i), |t| <= deg_out, at every site from all other sites'
  // Gaussian multipoles (source coefficients, packed Cartesian), in real space: all pairs
  // without a box; minimum-image pairs inside `cutoff` with a box, minus erf(beta r)/r.
  m.def("multipole_field(Tensor positions, Tensor coeffs, Tensor? widths, Tensor? box, Tensor exclusion_ptr, "
        "Tensor exclusion_idx, float cutoff, float beta, int deg_out, bool include_self) -> Tensor");
  // Two multipole_field results in one pass (same total degree): the first-order backward.
  // Not differentiable; the autograd of multipole_field uses it only when no graph is built.
  m.def("multipole_field2(Tensor positions, Tensor coeffs1, Tensor coeffs2, Tensor? widths, Tensor? box, "
        "Tensor exclusion_ptr, Tensor exclusion_idx, float cutoff, float beta, int deg1, int deg2, "
        "bool include_self) -> (Tensor, Tensor)");
  // sum over pairs of x_ij (outer) dLoss/dx_ij for Loss = sum(grad_field * multipole_field(...)): the box gradient.
  m.def("multipole_virial(Tensor positions, Tensor coeffs, Tensor? widths, Tensor? box, Tensor exclusion_ptr, "
        "Tensor exclusion_idx, float cutoff, float beta, bool include_self, Tensor grad_field) -> Tensor");
  // Grid density sum_i sum_t coeffs_it d^t W(u_i, g) of grid-frame multipoles at grid coordinates u.
  m.def("pme_spread(Tensor grid_positions, Tensor coeffs, int[] grid_size, int order) -> Tensor");
  // sum_g grid(g) d^t W(u_i, g), |t| <= deg.
  m.def("pme_gather(Tensor grid_positions, Tensor grid, int deg, int order) -> Tensor");
  // Fukui equilibration per fragment and spin channel: q_i + w_i (targets_f - sum_{j in f} q_j),
  // w the softmax of the logits over the fragment; charges, logits [n, 2], targets [F, 2], fragments [n].
  m.def("fukui_equilibrate(Tensor charges, Tensor logits, Tensor targets, Tensor fragments) -> Tensor");
  // Its vector-Jacobian product: (grad charges, grad logits, grad targets); differentiable again.
  m.def("fukui_equilibrate_backward(Tensor grad_out, Tensor charges, Tensor logits, Tensor targets, "
        "Tensor fragments) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mlpolar, CPU, m) {
  m.impl("multipole_field", &mlpolar::multipole_field_cpu);
  m.impl("multipole_virial", &mlpolar::multipole_virial_cpu);
  m.impl("multipole_field2", &mlpolar::multipole_field2_cpu);
  m.impl("pme_spread", &mlpolar::pme_spread_cpu);
  m.impl("pme_gather", &mlpolar::pme_gather_cpu);
  m.impl("fukui_equilibrate", &mlpolar::fukui_equilibrate_cpu);
  m.impl("fukui_equilibrate_backward", &mlpolar::fukui_equilibrate_backward_cpu);
}

TORCH_LIBRARY_IMPL(mlpolar, Meta, m) {
  m.impl("multipole_field", &mlpolar::field_meta);
  m.impl("multipole_virial", &mlpolar::virial_meta);
  m.impl("multipole_field2", &mlpolar::field2_meta);
  m.impl("pme_spread", &mlpolar::spread_meta);
  m.impl("pme_gather", &mlpolar::gather_meta);
  m.impl("fukui_equilibrate", &mlpolar::fukui_meta);
  m.impl("fukui_equilibrate_backward", &mlpolar::fukui_backward_meta);
}
