// CUDA implementations of the mlpolar operators: tensors in, raw pointers to cuda/ launchers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels.h"
#include "ops.h"
#include "realspace_args.h"

namespace mlpolar {
namespace {

void* stream() { return (void*)c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor field_cuda(const at::Tensor& positions, const at::Tensor& coeffs, const c10::optional<at::Tensor>& widths,
                      const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr, const at::Tensor& excl_idx,
                      double cutoff, double beta, int64_t deg_out, bool include_self) {
  c10::cuda::CUDAGuard guard(positions.device());
  const int din = degree_of_columns(coeffs.size(1), "coeffs");
  check_field_args(positions, coeffs, widths, box, excl_ptr, excl_idx, din + deg_out);
  at::Tensor out = at::empty({positions.size(0), (int64_t)ncart((int)deg_out)}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "multipole_field_cuda", [&] {
    auto in = make_realspace_inputs<scalar_t>(positions, coeffs, widths, box, excl_ptr, excl_idx, cutoff, beta,
                                              (int)deg_out, include_self);
    cuda::launch_field<scalar_t>(in.args, din + (int)deg_out, out.data_ptr<scalar_t>(), stream());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> field2_cuda(const at::Tensor& positions, const at::Tensor& c1, const at::Tensor& c2,
                                               const c10::optional<at::Tensor>& widths,
                                               const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr,
                                               const at::Tensor& excl_idx, double cutoff, double beta, int64_t deg1,
                                               int64_t deg2, bool include_self) {
  // one launch per field on the GPU (gather-style kernels; fusing them is future work)
  return {field_cuda(positions, c1, widths, box, excl_ptr, excl_idx, cutoff, beta, deg1, include_self),
          field_cuda(positions, c2, widths, box, excl_ptr, excl_idx, cutoff, beta, deg2, include_self)};
}

at::Tensor virial_cuda(const at::Tensor& positions, const at::Tensor& coeffs, const c10::optional<at::Tensor>& widths,
                       const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr, const at::Tensor& excl_idx,
                       double cutoff, double beta, bool include_self, const at::Tensor& grad_field) {
  c10::cuda::CUDAGuard guard(positions.device());
  const int din = degree_of_columns(coeffs.size(1), "coeffs");
  const int dout = degree_of_columns(grad_field.size(1), "grad_field");
  check_field_args(positions, coeffs, widths, box, excl_ptr, excl_idx, din + dout + 1);
  at::Tensor per_site = at::empty({positions.size(0), 9}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "multipole_virial_cuda", [&] {
    auto in = make_realspace_inputs<scalar_t>(positions, coeffs, widths, box, excl_ptr, excl_idx, cutoff, beta, dout,
                                              include_self);
    in.grad = grad_field.contiguous();
    in.args.grad = in.grad.data_ptr<scalar_t>();
    cuda::launch_virial<scalar_t>(in.args, din + dout + 1, per_site.data_ptr<scalar_t>(), stream());
  });
  return per_site.sum(0).view({3, 3});
}

at::Tensor spread_cuda(const at::Tensor& grid_positions, const at::Tensor& coeffs, at::IntArrayRef grid_size,
                       int64_t order) {
  c10::cuda::CUDAGuard guard(coeffs.device());
  const int deg = degree_of_columns(coeffs.size(1), "coeffs");
  check_pme_args(grid_positions, coeffs, deg, order);
  TORCH_CHECK(grid_size.size() == 3, "grid_size must have 3 entries");
  at::Tensor grid = at::zeros({grid_size[0], grid_size[1], grid_size[2]}, coeffs.options());
  at::Tensor u = grid_positions.contiguous(), e = coeffs.contiguous();
  const PmeGrid G{{(int)grid_size[0], (int)grid_size[1], (int)grid_size[2]}, (int)order};
  AT_DISPATCH_FLOATING_TYPES(coeffs.scalar_type(), "pme_spread_cuda", [&] {
    cuda::launch_spread<scalar_t>(G, (int)u.size(0), u.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), deg,
                                  grid.data_ptr<scalar_t>(), stream());
  });
  return grid;
}

at::Tensor gather_cuda(const at::Tensor& grid_positions, const at::Tensor& grid, int64_t deg, int64_t order) {
  c10::cuda::CUDAGuard guard(grid.device());
  check_pme_args(grid_positions, grid, deg, order);
  TORCH_CHECK(grid.dim() == 3, "grid must have 3 dimensions");
  at::Tensor u = grid_positions.contiguous(), gr = grid.contiguous();
  const PmeGrid G{{(int)grid.size(0), (int)grid.size(1), (int)grid.size(2)}, (int)order};
  at::Tensor out = at::empty({u.size(0), (int64_t)ncart((int)deg)}, grid.options());
  AT_DISPATCH_FLOATING_TYPES(grid.scalar_type(), "pme_gather_cuda", [&] {
    cuda::launch_gather<scalar_t>(G, (int)u.size(0), u.data_ptr<scalar_t>(), gr.data_ptr<scalar_t>(), (int)deg,
                                  out.data_ptr<scalar_t>(), stream());
  });
  return out;
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, CUDA, m) {
  m.impl("multipole_field", &mlpolar::field_cuda);
  m.impl("multipole_virial", &mlpolar::virial_cuda);
  m.impl("multipole_field2", &mlpolar::field2_cuda);
  m.impl("pme_spread", &mlpolar::spread_cuda);
  m.impl("pme_gather", &mlpolar::gather_cuda);
}
