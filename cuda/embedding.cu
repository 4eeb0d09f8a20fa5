// CUDA embedding kernel: one block per listed receiver, its threads stride over the selected
// sources, per-thread sums reduced by warp shuffles and shared memory (no atomics, so the result
// does not depend on scheduling). Few receivers (ML sites in the forward) still fill the GPU
// through the source dimension; many receivers (MM atoms in the backward) through the grid.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "embedding_kernels.h"

namespace mlpolar {
namespace cuda {
namespace {

constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;

// Sums v over the block into out[0..nout) (written by thread 0); `shared` holds WARPS * nout values.
template <typename T>
__device__ void block_sum(T* v, int nout, T* shared, T* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < nout; ++k) {
    T s = v[k];
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) shared[warp * nout + k] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int k = 0; k < nout; ++k) {
      T s = 0;
      for (int w = 0; w < WARPS; ++w) s += shared[w * nout + k];
      out[k] = s;
    }
}

template <int DIN, int DOUT, typename T>
__global__ void embedding_fixed_kernel(EmbeddingArgs<T> a, T* out) {
  constexpr int L = DIN + DOUT, NIN = ncart(DIN), NOUT = ncart(DOUT);
  __shared__ T shared[WARPS * NOUT];
  const int i = a.recv_list[blockIdx.x];
  T acc[NOUT];
  for (int k = 0; k < NOUT; ++k) acc[k] = 0;
  T B[L + 1], R[ncart(L)];
  for (int k = threadIdx.x; k < a.n_src_list; k += THREADS) {
    const int j = a.src_list[k];
    T x, y, z;
    const T r2 = embedding_displacement(a, i, j, x, y, z);
    if (r2 >= a.cutoff2 || r2 <= T(0) || embedding_excluded(a, i, j)) continue;
    embedding_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_fixed<DIN, DOUT, false>(R, a.coeffs + (int64_t)j * NIN, acc);
  }
  if (threadIdx.x == 0) embedding_corrections<L>(a, i, acc);
  block_sum(acc, NOUT, shared, out + (int64_t)i * NOUT);
}

// Runtime degrees (higher derivatives than mm_features' first and second ones need).
template <int L, typename T>
__global__ void embedding_kernel(EmbeddingArgs<T> a, T* out) {
  constexpr int NMAX = ncart(L);
  __shared__ T shared[WARPS * NMAX];
  const int i = a.recv_list[blockIdx.x];
  const int nout = ncart(a.dout);
  T acc[NMAX];
  for (int k = 0; k < NMAX; ++k) acc[k] = 0;
  for (int k = threadIdx.x; k < a.n_src_list; k += THREADS) embedding_pair<L>(a, i, a.src_list[k], acc);
  if (threadIdx.x == 0) embedding_corrections<L>(a, i, acc);
  block_sum(acc, nout, shared, out + (int64_t)i * nout);
}

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("mlpolar CUDA kernel ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

template <typename T>
void launch_embedding(const EmbeddingArgs<T>& a, T* out, void* stream) {
  if (a.n_recv_list == 0) return;
  cudaStream_t s = (cudaStream_t)stream;
  const int blocks = a.n_recv_list;
#define MLP_CASE(I, O)                                                          \
  if (a.din == I && a.dout == O) {                                              \
    embedding_fixed_kernel<I, O, T><<<blocks, THREADS, 0, s>>>(a, out);         \
    check_launch("embedding_field");                                            \
    return;                                                                     \
  }
  MLP_CASE(0, 0) MLP_CASE(0, 1) MLP_CASE(0, 2) MLP_CASE(0, 3) MLP_CASE(0, 4)
  MLP_CASE(1, 0) MLP_CASE(2, 0) MLP_CASE(3, 0) MLP_CASE(3, 1)
#undef MLP_CASE
  switch (a.din + a.dout) {
    case 0: embedding_kernel<0, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 1: embedding_kernel<1, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 2: embedding_kernel<2, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 3: embedding_kernel<3, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 4: embedding_kernel<4, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 5: embedding_kernel<5, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 6: embedding_kernel<6, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 7: embedding_kernel<7, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    case 8: embedding_kernel<8, T><<<blocks, THREADS, 0, s>>>(a, out); break;
    default: throw std::runtime_error("mlpolar: embedding derivative degree above 8");
  }
  check_launch("embedding_field");
}

template void launch_embedding<float>(const EmbeddingArgs<float>&, float*, void*);
template void launch_embedding<double>(const EmbeddingArgs<double>&, double*, void*);

}  // namespace cuda
}  // namespace mlpolar
