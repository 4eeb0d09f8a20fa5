// Launchers of the Fukui-equilibration CUDA kernels (cuda/fukui.cu), callable from C++ without
// CUDA or torch headers. `work` is a caller-allocated double buffer of FUKUI_WORK_SLOTS * 2F
// entries (per fragment and channel: largest logit, softmax normaliser, charge sum, and for the
// backward sum g w). `stream` is a cudaStream_t. Errors are thrown as std::runtime_error.
// Atoms whose fragment id is outside 0..F-1 are left unchanged (the torch layer rejects them).
#pragma once
#include <cstdint>

namespace mlpolar {
namespace cuda {

constexpr int FUKUI_WORK_SLOTS = 4;

template <typename T>
void launch_fukui_forward(int64_t n, int64_t F, const T* q, const T* l, const T* targets, const int64_t* frag,
                          double* work, T* out, void* stream);
template <typename T>
void launch_fukui_backward(int64_t n, int64_t F, const T* g, const T* q, const T* l, const T* targets,
                           const int64_t* frag, double* work, T* grad_q, T* grad_l, T* grad_t, void* stream);

}  // namespace cuda
}  // namespace mlpolar
