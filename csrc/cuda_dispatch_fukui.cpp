// CUDA implementations of the Fukui-equilibration operators: tensors in, raw pointers to cuda/fukui.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fukui.h"
#include "ops.h"

namespace mlpolar {
namespace {

void* stream() { return (void*)c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor work_buffer(int64_t F, const at::Tensor& like) {
  return at::empty({cuda::FUKUI_WORK_SLOTS * 2 * F}, like.options().dtype(at::kDouble));
}

at::Tensor fukui_cuda(const at::Tensor& charges, const at::Tensor& logits, const at::Tensor& targets,
                      const at::Tensor& fragments) {
  c10::cuda::CUDAGuard guard(charges.device());
  check_fukui_args(charges, logits, targets, fragments);
  const at::Tensor q = charges.contiguous(), l = logits.contiguous(), t = targets.contiguous(),
                   fr = fragments.contiguous();
  const int64_t F = t.size(0);
  at::Tensor out = at::empty_like(q), work = work_buffer(F, q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fukui_equilibrate_cuda", [&] {
    cuda::launch_fukui_forward<scalar_t>(q.size(0), F, q.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
                                         t.data_ptr<scalar_t>(), fr.data_ptr<int64_t>(), work.data_ptr<double>(),
                                         out.data_ptr<scalar_t>(), stream());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fukui_backward_cuda(const at::Tensor& grad_out,
                                                                   const at::Tensor& charges,
                                                                   const at::Tensor& logits,
                                                                   const at::Tensor& targets,
                                                                   const at::Tensor& fragments) {
  c10::cuda::CUDAGuard guard(charges.device());
  check_fukui_args(charges, logits, targets, fragments);
  TORCH_CHECK(grad_out.sizes() == charges.sizes() && grad_out.scalar_type() == charges.scalar_type() &&
                  grad_out.device() == charges.device(),
              "fukui_equilibrate_backward: grad_out must match charges in shape, dtype and device");
  const at::Tensor g = grad_out.contiguous(), q = charges.contiguous(), l = logits.contiguous(),
                   t = targets.contiguous(), fr = fragments.contiguous();
  const int64_t F = t.size(0);
  at::Tensor gq = at::empty_like(q), gl = at::empty_like(q), gt = at::empty_like(t), work = work_buffer(F, q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fukui_equilibrate_backward_cuda", [&] {
    cuda::launch_fukui_backward<scalar_t>(q.size(0), F, g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                          l.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), fr.data_ptr<int64_t>(),
                                          work.data_ptr<double>(), gq.data_ptr<scalar_t>(), gl.data_ptr<scalar_t>(),
                                          gt.data_ptr<scalar_t>(), stream());
  });
  return {gq, gl, gt};
}

}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_IMPL(mlpolar, CUDA, m) {
  m.impl("fukui_equilibrate", &mlpolar::fukui_cuda);
  m.impl("fukui_equilibrate_backward", &mlpolar::fukui_backward_cuda);
}
