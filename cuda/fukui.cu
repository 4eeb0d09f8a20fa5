// Fukui equilibration on the GPU: one thread per atom, per-fragment sums in double by atomics.
// Fragments are usually contiguous runs of atoms, so a warp whose 32 atoms share one fragment
// reduces in registers first and issues one atomic per channel (a single large fragment would
// otherwise serialise n atomics on two addresses).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fukui.h"

namespace mlpolar {
namespace cuda {
namespace {

constexpr int THREADS = 256;
constexpr unsigned FULL_MASK = 0xffffffffu;

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mlpolar CUDA kernel ") + what + ": " + cudaGetErrorString(err));
}

int blocks_for(int64_t n) {
  const int64_t b = (n + THREADS - 1) / THREADS;
  return (int)(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// work layout: slot s of (fragment f, channel c) at work[s * 2F + 2f + c].
enum Slot { TOP = 0, NORM = 1, TOTAL = 2, GW = 3 };

__device__ inline void atomic_max_double(double* addr, double v) {
  unsigned long long* p = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *p;
  while (__longlong_as_double(old) < v) {
    const unsigned long long assumed = old;
    old = atomicCAS(p, assumed, __double_as_longlong(v));
    if (old == assumed) break;
  }
}

// Fragment id of atom i, or -1 past the end / out of range. Every lane of a warp runs the loops
// below together (the loop bound is warp-uniform), so the shuffles see all 32 lanes.
__device__ inline long long fragment_of(int64_t i, int64_t n, int64_t F, const int64_t* frag) {
  if (i >= n) return -1;
  const long long f = frag[i];
  return (f >= 0 && f < F) ? f : -1;
}

// Adds (v0, v1) into acc[2f], acc[2f+1]; lanes with f < 0 must pass zeros. When MAX, takes the max
// instead (lanes with f < 0 must pass -inf).
template <bool MAX>
__device__ inline void accumulate(double* acc, long long f, double v0, double v1) {
  const long long f0 = __shfl_sync(FULL_MASK, f, 0);
  // lane 0 past the end means every lane is: nothing to do
  if (__all_sync(FULL_MASK, f == f0 || f < 0)) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double u0 = __shfl_down_sync(FULL_MASK, v0, offset), u1 = __shfl_down_sync(FULL_MASK, v1, offset);
      v0 = MAX ? fmax(v0, u0) : v0 + u0;
      v1 = MAX ? fmax(v1, u1) : v1 + u1;
    }
    if ((threadIdx.x & 31) != 0 || f0 < 0) return;
    f = f0;
  } else if (f < 0) {
    return;
  }
  if (MAX) {
    atomic_max_double(acc + 2 * f, v0);
    atomic_max_double(acc + 2 * f + 1, v1);
  } else {
    atomicAdd(acc + 2 * f, v0);
    atomicAdd(acc + 2 * f + 1, v1);
  }
}

#define FOR_ATOMS(i)                                                                                     \
  for (int64_t base = (int64_t)blockIdx.x * blockDim.x, i = base + threadIdx.x; base < n;            \
       base += (int64_t)gridDim.x * blockDim.x, i = base + threadIdx.x)

__global__ void init_kernel(int64_t F, double* work) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= 2 * F) return;
  work[TOP * 2 * F + k] = -INFINITY;
  work[NORM * 2 * F + k] = 0.0;
  work[TOTAL * 2 * F + k] = 0.0;
  work[GW * 2 * F + k] = 0.0;
}

template <typename T>
__global__ void max_kernel(int64_t n, int64_t F, const T* l, const int64_t* frag, double* work) {
  FOR_ATOMS(i) {
    const long long f = fragment_of(i, n, F, frag);
    const double l0 = f >= 0 ? (double)l[2 * i] : -INFINITY, l1 = f >= 0 ? (double)l[2 * i + 1] : -INFINITY;
    accumulate<true>(work + TOP * 2 * F, f, l0, l1);
  }
}

template <typename T>
__device__ inline double weight(int64_t i, int c, long long f, int64_t F, const T* l, const double* work) {
  const int64_t k = 2 * f + c;
  return exp((double)l[2 * i + c] - work[TOP * 2 * F + k]) / work[NORM * 2 * F + k];
}

template <typename T>
__global__ void sums_kernel(int64_t n, int64_t F, const T* q, const T* l, const int64_t* frag, double* work) {
  FOR_ATOMS(i) {
    const long long f = fragment_of(i, n, F, frag);
    double e0 = 0, e1 = 0, q0 = 0, q1 = 0;
    if (f >= 0) {
      e0 = exp((double)l[2 * i] - work[TOP * 2 * F + 2 * f]);
      e1 = exp((double)l[2 * i + 1] - work[TOP * 2 * F + 2 * f + 1]);
      q0 = q[2 * i];
      q1 = q[2 * i + 1];
    }
    accumulate<false>(work + NORM * 2 * F, f, e0, e1);
    accumulate<false>(work + TOTAL * 2 * F, f, q0, q1);
  }
}

template <typename T>
__global__ void apply_kernel(int64_t n, int64_t F, const T* q, const T* l, const T* targets, const int64_t* frag,
                             const double* work, T* out) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long f = fragment_of(i, n, F, frag);
  for (int c = 0; c < 2; ++c) {
    double v = q[2 * i + c];
    if (f >= 0) v += weight(i, c, f, F, l, work) * ((double)targets[2 * f + c] - work[TOTAL * 2 * F + 2 * f + c]);
    out[2 * i + c] = (T)v;
  }
}

template <typename T>
__global__ void gw_kernel(int64_t n, int64_t F, const T* g, const T* l, const int64_t* frag, double* work) {
  FOR_ATOMS(i) {
    const long long f = fragment_of(i, n, F, frag);
    double v0 = 0, v1 = 0;
    if (f >= 0) {
      v0 = (double)g[2 * i] * weight(i, 0, f, F, l, work);
      v1 = (double)g[2 * i + 1] * weight(i, 1, f, F, l, work);
    }
    accumulate<false>(work + GW * 2 * F, f, v0, v1);
  }
}

// dL/dq = g - G, dL/dl = D w (g - G), with G = sum g w and D = T - sum q per fragment.
template <typename T>
__global__ void backward_apply_kernel(int64_t n, int64_t F, const T* g, const T* l, const T* targets,
                                      const int64_t* frag, const double* work, T* grad_q, T* grad_l) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long f = fragment_of(i, n, F, frag);
  for (int c = 0; c < 2; ++c) {
    if (f < 0) {
      grad_q[2 * i + c] = g[2 * i + c];
      grad_l[2 * i + c] = 0;
      continue;
    }
    const int64_t k = 2 * f + c;
    const double a = (double)g[2 * i + c] - work[GW * 2 * F + k];
    grad_q[2 * i + c] = (T)a;
    grad_l[2 * i + c] = (T)(((double)targets[k] - work[TOTAL * 2 * F + k]) * weight(i, c, f, F, l, work) * a);
  }
}

template <typename T>
__global__ void grad_targets_kernel(int64_t F, const double* work, T* grad_t) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k < 2 * F) grad_t[k] = (T)work[GW * 2 * F + k];
}

template <typename T>
void fragment_sums(int64_t n, int64_t F, const T* q, const T* l, const int64_t* frag, double* work,
                   cudaStream_t s) {
  init_kernel<<<blocks_for(2 * F), THREADS, 0, s>>>(F, work);
  check_launch("fukui init");
  max_kernel<T><<<blocks_for(n), THREADS, 0, s>>>(n, F, l, frag, work);
  check_launch("fukui max");
  sums_kernel<T><<<blocks_for(n), THREADS, 0, s>>>(n, F, q, l, frag, work);
  check_launch("fukui sums");
}

int64_t per_atom_blocks(int64_t n) { return (n + THREADS - 1) / THREADS; }

}  // namespace

template <typename T>
void launch_fukui_forward(int64_t n, int64_t F, const T* q, const T* l, const T* targets, const int64_t* frag,
                          double* work, T* out, void* stream) {
  if (n == 0) return;
  const cudaStream_t s = (cudaStream_t)stream;
  fragment_sums<T>(n, F, q, l, frag, work, s);
  apply_kernel<T><<<(unsigned)per_atom_blocks(n), THREADS, 0, s>>>(n, F, q, l, targets, frag, work, out);
  check_launch("fukui apply");
}

template <typename T>
void launch_fukui_backward(int64_t n, int64_t F, const T* g, const T* q, const T* l, const T* targets,
                           const int64_t* frag, double* work, T* grad_q, T* grad_l, T* grad_t, void* stream) {
  const cudaStream_t s = (cudaStream_t)stream;
  if (n > 0) {
    fragment_sums<T>(n, F, q, l, frag, work, s);
    gw_kernel<T><<<blocks_for(n), THREADS, 0, s>>>(n, F, g, l, frag, work);
    check_launch("fukui backward sums");
    backward_apply_kernel<T><<<(unsigned)per_atom_blocks(n), THREADS, 0, s>>>(n, F, g, l, targets, frag, work,
                                                                               grad_q, grad_l);
    check_launch("fukui backward apply");
  } else {
    init_kernel<<<blocks_for(2 * F), THREADS, 0, s>>>(F, work);
    check_launch("fukui init");
  }
  if (F > 0) {
    grad_targets_kernel<T><<<blocks_for(2 * F), THREADS, 0, s>>>(F, work, grad_t);
    check_launch("fukui grad targets");
  }
}

template void launch_fukui_forward<float>(int64_t, int64_t, const float*, const float*, const float*, const int64_t*,
                                          double*, float*, void*);
template void launch_fukui_forward<double>(int64_t, int64_t, const double*, const double*, const double*,
                                           const int64_t*, double*, double*, void*);
template void launch_fukui_backward<float>(int64_t, int64_t, const float*, const float*, const float*, const float*,
                                           const int64_t*, double*, float*, float*, float*, void*);
template void launch_fukui_backward<double>(int64_t, int64_t, const double*, const double*, const double*,
                                            const double*, const int64_t*, double*, double*, double*, double*, void*);

}  // namespace cuda
}  // namespace mlpolar
