// CUDA real-space kernels: one thread per site, gathering from its partners (no atomics).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels.h"

namespace mlpolar {
namespace cuda {
namespace {

constexpr int THREADS = 128;

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("mlpolar CUDA kernel ") + what + ": " + cudaGetErrorString(err));
}

template <int L, typename T>
__global__ void field_kernel(RealSpaceArgs<T> a, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.n) field_at_site<L>(a, i, out + (int64_t)i * ncart(a.dout));
}

template <int L, typename T>
__global__ void virial_kernel(RealSpaceArgs<T> a, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.n) virial_at_site<L>(a, i, out + (int64_t)i * 9);
}

#define MLP_DEGREE_SWITCH(KERNEL, L, ...)                                    \
  switch (L) {                                                               \
    case 0: KERNEL<0, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 1: KERNEL<1, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 2: KERNEL<2, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 3: KERNEL<3, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 4: KERNEL<4, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 5: KERNEL<5, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 6: KERNEL<6, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 7: KERNEL<7, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    case 8: KERNEL<8, T><<<blocks, THREADS, 0, s>>>(__VA_ARGS__); break;     \
    default: throw std::runtime_error("mlpolar: derivative degree above 8"); \
  }

}  // namespace

template <typename T>
void launch_field(const RealSpaceArgs<T>& a, int L, T* out, void* stream) {
  if (a.n == 0) return;
  const int blocks = (a.n + THREADS - 1) / THREADS;
  cudaStream_t s = (cudaStream_t)stream;
  MLP_DEGREE_SWITCH(field_kernel, L, a, out)
  check_launch("multipole_field");
}

template <typename T>
void launch_virial(const RealSpaceArgs<T>& a, int L, T* out, void* stream) {
  if (a.n == 0) return;
  const int blocks = (a.n + THREADS - 1) / THREADS;
  cudaStream_t s = (cudaStream_t)stream;
  MLP_DEGREE_SWITCH(virial_kernel, L, a, out)
  check_launch("multipole_virial");
}

template void launch_field<float>(const RealSpaceArgs<float>&, int, float*, void*);
template void launch_field<double>(const RealSpaceArgs<double>&, int, double*, void*);
template void launch_virial<float>(const RealSpaceArgs<float>&, int, float*, void*);
template void launch_virial<double>(const RealSpaceArgs<double>&, int, double*, void*);

}  // namespace cuda
}  // namespace mlpolar
