// CUDA implementation of embedding_field: tensors in, raw pointers to cuda/embedding.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "embedding_args.h"
#include "embedding_kernels.h"
#include "ops.h"

namespace mlpolar {
namespace {

at::Tensor embedding_field_cuda(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                                const c10::optional<at::Tensor>& recv_widths,
                                const c10::optional<at::Tensor>& src_widths, const c10::optional<at::Tensor>& box,
                                const at::Tensor& exclusions, double cutoff, double switch_width, double beta,
                                int64_t deg_out, int64_t width_derivative) {
  c10::cuda::CUDAGuard guard(recv_pos.device());
  check_embedding_args(recv_pos, src_pos, coeffs, recv_widths, src_widths, box, exclusions, cutoff, switch_width, beta,
                       deg_out, width_derivative);
  at::Tensor out = at::zeros({recv_pos.size(0), (int64_t)ncart((int)deg_out)}, recv_pos.options());
  AT_DISPATCH_FLOATING_TYPES(recv_pos.scalar_type(), "embedding_field_cuda", [&] {
    auto in = make_embedding_inputs<scalar_t>(recv_pos, src_pos, coeffs, recv_widths, src_widths, box, exclusions,
                                              cutoff, switch_width, beta, (int)deg_out, (int)width_derivative);
    cuda::launch_embedding<scalar_t>(in.args, out.data_ptr<scalar_t>(),
                                     (void*)c10::cuda::getCurrentCUDAStream().stream());
  });
  return out;
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, CUDA, m) { m.impl("embedding_field", &mlpolar::embedding_field_cuda); }
