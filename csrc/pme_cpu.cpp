// CPU smooth-PME spreading (per-thread grids, summed) and gathering.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <omp.h>

#include <vector>

#include "ops.h"
#include "pme_impl.h"

namespace mlpolar {
namespace {

// Each thread spreads into its own copy of the grid (atomics on doubles are compare-and-swap
// loops); the copies are summed at the end in a fixed order.
template <typename T>
void spread_loop(const PmeGrid& G, int64_t n, const T* u, const T* e, int deg, T* grid) {
  const int64_t nc = ncart(deg);
  const int64_t size = (int64_t)G.K[0] * G.K[1] * G.K[2];
  const int nthreads = omp_get_max_threads();
  std::vector<T> copies(nthreads > 1 ? (size_t)(nthreads - 1) * size : 0, T(0));
#pragma omp parallel
  {
    const int t = omp_get_thread_num();
    T* mine = t == 0 ? grid : copies.data() + (int64_t)(t - 1) * size;
    auto add = [mine](int64_t index, T v) { mine[index] += v; };
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) spread_site(G, u + 3 * i, e + nc * i, deg, add);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < size; ++k)
      for (int c = 0; c < nthreads - 1; ++c) grid[k] += copies[(size_t)c * size + k];
  }
}

template <typename T>
void gather_loop(const PmeGrid& G, int64_t n, const T* u, const T* grid, int deg, T* out) {
  const int64_t nc = ncart(deg);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) gather_site(G, u + 3 * i, grid, deg, out + nc * i);
}

}  // namespace

at::Tensor pme_spread_cpu(const at::Tensor& grid_positions, const at::Tensor& coeffs, at::IntArrayRef grid_size,
                          int64_t order) {
  const int deg = degree_of_columns(coeffs.size(1), "coeffs");
  check_pme_args(grid_positions, coeffs, deg, order);
  TORCH_CHECK(grid_size.size() == 3, "grid_size must have 3 entries");
  at::Tensor grid = at::zeros({grid_size[0], grid_size[1], grid_size[2]}, coeffs.options());
  at::Tensor u = grid_positions.contiguous(), e = coeffs.contiguous();
  const PmeGrid G{{(int)grid_size[0], (int)grid_size[1], (int)grid_size[2]}, (int)order};
  AT_DISPATCH_FLOATING_TYPES(coeffs.scalar_type(), "pme_spread_cpu", [&] {
    spread_loop<scalar_t>(G, u.size(0), u.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), deg, grid.data_ptr<scalar_t>());
  });
  return grid;
}

at::Tensor pme_gather_cpu(const at::Tensor& grid_positions, const at::Tensor& grid, int64_t deg, int64_t order) {
  check_pme_args(grid_positions, grid, deg, order);
  TORCH_CHECK(grid.dim() == 3, "grid must have 3 dimensions");
  at::Tensor u = grid_positions.contiguous(), gr = grid.contiguous();
  const PmeGrid G{{(int)grid.size(0), (int)grid.size(1), (int)grid.size(2)}, (int)order};
  const int64_t n = u.size(0), nc = ncart((int)deg);
  at::Tensor out = at::empty({n, nc}, grid.options());
  AT_DISPATCH_FLOATING_TYPES(grid.scalar_type(), "pme_gather_cpu", [&] {
    gather_loop<scalar_t>(G, n, u.data_ptr<scalar_t>(), gr.data_ptr<scalar_t>(), (int)deg, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace mlpolar
