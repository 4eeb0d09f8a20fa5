// CUDA smooth-PME spreading (atomicAdd into the grid) and gathering, one thread per site.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels.h"

namespace mlpolar {
namespace cuda {
namespace {

constexpr int THREADS = 128;

template <typename T>
struct AtomicGridAdd {
  T* grid;
  __device__ void operator()(int64_t index, T v) const { atomicAdd(grid + index, v); }
};

template <typename T>
__global__ void spread_kernel(PmeGrid g, int n, const T* u, const T* e, int deg, T* grid) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  AtomicGridAdd<T> add{grid};
  spread_site(g, u + 3 * (int64_t)i, e + (int64_t)i * ncart(deg), deg, add);
}

template <typename T>
__global__ void gather_kernel(PmeGrid g, int n, const T* u, const T* grid, int deg, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  gather_site(g, u + 3 * (int64_t)i, grid, deg, out + (int64_t)i * ncart(deg));
}

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("mlpolar CUDA kernel ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

template <typename T>
void launch_spread(const PmeGrid& g, int n, const T* u, const T* e, int deg, T* grid, void* stream) {
  if (n == 0) return;
  spread_kernel<T><<<(n + THREADS - 1) / THREADS, THREADS, 0, (cudaStream_t)stream>>>(g, n, u, e, deg, grid);
  check_launch("pme_spread");
}

template <typename T>
void launch_gather(const PmeGrid& g, int n, const T* u, const T* grid, int deg, T* out, void* stream) {
  if (n == 0) return;
  gather_kernel<T><<<(n + THREADS - 1) / THREADS, THREADS, 0, (cudaStream_t)stream>>>(g, n, u, grid, deg, out);
  check_launch("pme_gather");
}

template void launch_spread<float>(const PmeGrid&, int, const float*, const float*, int, float*, void*);
template void launch_spread<double>(const PmeGrid&, int, const double*, const double*, int, double*, void*);
template void launch_gather<float>(const PmeGrid&, int, const float*, const float*, int, float*, void*);
template void launch_gather<double>(const PmeGrid&, int, const double*, const double*, int, double*, void*);

}  // namespace cuda
}  // namespace mlpolar
