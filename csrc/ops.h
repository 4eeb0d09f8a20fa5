// Declarations shared by the operator implementations (CPU, CUDA, autograd).
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace mlpolar {

// Degree d such that ncart(d) == ncols; throws for column counts that are no packed degree.
int degree_of_columns(int64_t ncols, const char* what);

// Site-major cell list for a periodic box, built with device-agnostic torch ops.
struct CellList {
  at::Tensor cell_of;     // [n] int32
  at::Tensor cell_start;  // [ncell + 1] int32
  at::Tensor cell_atoms;  // [n] int32
  at::Tensor pos_wrapped; // [n, 3] positions wrapped into the box (dtype of positions)
  at::Tensor cell_pos;    // [n, 3] pos_wrapped in cell order
  std::array<int, 3> ncell{1, 1, 1};
  int reach = 2;          // cells are >= cutoff / reach wide
};
CellList build_cell_list(const at::Tensor& positions, const at::Tensor& box, double cutoff);

// Box as 9 host numbers (row-major, rows = a, b, c), validated for OpenMM's reduced form.
std::array<double, 9> host_box(const at::Tensor& box, double cutoff);

// Device kernels (CPU in realspace_cpu.cpp / pme_cpu.cpp, CUDA in cuda_dispatch.cpp).
at::Tensor multipole_field_cpu(const at::Tensor& positions, const at::Tensor& coeffs,
                               const c10::optional<at::Tensor>& widths, const c10::optional<at::Tensor>& box,
                               const at::Tensor& excl_ptr, const at::Tensor& excl_idx, double cutoff, double beta,
                               int64_t deg_out, bool include_self);
std::tuple<at::Tensor, at::Tensor> multipole_field2_cpu(const at::Tensor& positions, const at::Tensor& coeffs1,
                                                       const at::Tensor& coeffs2, const c10::optional<at::Tensor>& widths,
                                                       const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr,
                                                       const at::Tensor& excl_idx, double cutoff, double beta,
                                                       int64_t deg1, int64_t deg2, bool include_self);
at::Tensor multipole_virial_cpu(const at::Tensor& positions, const at::Tensor& coeffs,
                                const c10::optional<at::Tensor>& widths, const c10::optional<at::Tensor>& box,
                                const at::Tensor& excl_ptr, const at::Tensor& excl_idx, double cutoff, double beta,
                                bool include_self, const at::Tensor& grad_field);
at::Tensor pme_spread_cpu(const at::Tensor& grid_positions, const at::Tensor& coeffs, at::IntArrayRef grid_size,
                          int64_t order);
at::Tensor pme_gather_cpu(const at::Tensor& grid_positions, const at::Tensor& grid, int64_t deg, int64_t order);

// Fukui equilibration (fukui_cpu.cpp; CUDA in cuda_dispatch_fukui.cpp).
at::Tensor fukui_equilibrate_cpu(const at::Tensor& charges, const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& fragments);
std::tuple<at::Tensor, at::Tensor, at::Tensor> fukui_equilibrate_backward_cpu(const at::Tensor& grad_out,
                                                                              const at::Tensor& charges,
                                                                              const at::Tensor& logits,
                                                                              const at::Tensor& targets,
                                                                              const at::Tensor& fragments);
void check_fukui_args(const at::Tensor& charges, const at::Tensor& logits, const at::Tensor& targets,
                      const at::Tensor& fragments);

// Argument checks common to every device.
void check_field_args(const at::Tensor& positions, const at::Tensor& coeffs, const c10::optional<at::Tensor>& widths,
                      const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr, const at::Tensor& excl_idx,
                      int64_t deg_total);
void check_pme_args(const at::Tensor& grid_positions, const at::Tensor& coeffs_or_grid, int64_t deg, int64_t order);

// Embedding operator (issue 3): two site sets, receivers gather from sources (embedding_cpu.cpp).
at::Tensor embedding_field_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                               const c10::optional<at::Tensor>& recv_widths, const c10::optional<at::Tensor>& src_widths,
                               const c10::optional<at::Tensor>& box, const at::Tensor& exclusions, double cutoff,
                               double switch_width, double beta, int64_t deg_out, int64_t width_derivative = 0);
// Fused first derivatives of the charge embedding (coeffs [m, 1]) contracted with grad [n, ncart(d)]:
// {d/d recv_pos [n, 3], d/d src_pos [m, 3], d/d charges [m, 1], d/d recv_widths [n] or undefined}.
std::vector<at::Tensor> embedding_charge_backward_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos,
                                                      const at::Tensor& charges, const c10::optional<at::Tensor>& recv_widths,
                                                      const c10::optional<at::Tensor>& box, const at::Tensor& exclusions,
                                                      double cutoff, double switch_width, double beta,
                                                      const at::Tensor& grad, bool want_widths,
                                                      const std::vector<at::Tensor>& search = {});
// The charge embedding's forward (as embedding_field_cpu, width_derivative 0) that also returns the
// search it made ({V} alone when the fast path does not apply; else {V, 4 search tensors}), for
// embedding_charge_backward_cpu of the same inputs to reuse.
std::vector<at::Tensor> embedding_charge_forward_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos,
                                                     const at::Tensor& charges, const c10::optional<at::Tensor>& recv_widths,
                                                     const c10::optional<at::Tensor>& box, const at::Tensor& exclusions,
                                                     double cutoff, double switch_width, double beta, int64_t deg_out);
void check_embedding_args(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                          const c10::optional<at::Tensor>& recv_widths, const c10::optional<at::Tensor>& src_widths,
                          const c10::optional<at::Tensor>& box, const at::Tensor& exclusions, double cutoff,
                          double switch_width, double beta, int64_t deg_out, int64_t width_derivative = 0);

}  // namespace mlpolar
