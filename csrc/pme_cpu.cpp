// CPU smooth-PME spreading (per-thread grids, summed) and gathering.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <omp.h>

#include <cmath>
#include <vector>

#include "ops.h"
#include "pme_impl.h"

namespace mlpolar {
namespace {

// Compile-time spline order P and degree DEG (the common cases: charges and dipoles at the
// default orders): the same arithmetic as spread_site / gather_site in pme_impl.h, with every
// loop bound a constant so that the spline recursion and the grid loops unroll.
template <int P, int DMAX, typename T>
inline void bspline_weights_fixed(T w, T* theta) {
  T m[P][P];  // m[o-1][k] = M_o(w + k)
  m[0][0] = 1;
  for (int o = 2; o <= P; ++o) {
    const T inv = T(1) / T(o - 1);
    for (int k = 0; k < o; ++k) {
      const T a = (k <= o - 2) ? m[o - 2][k] : T(0);
      const T b = (k >= 1) ? m[o - 2][k - 1] : T(0);
      m[o - 1][k] = ((w + k) * a + (T(o) - w - k) * b) * inv;
    }
  }
  for (int d = 0; d <= DMAX; ++d) {
    const int o = P - d;
    for (int k = 0; k < P; ++k) {
      T acc = 0, binom = 1;
      for (int q = 0; q <= d; ++q) {
        const int kk = k - q;
        if (kk >= 0 && kk < o) acc += ((q % 2) ? -binom : binom) * m[o - 1][kk];
        binom = binom * T(d - q) / T(q + 1);
      }
      theta[d * P + k] = acc;
    }
  }
}

template <int P, int DEG, typename T>
inline void site_splines_fixed(const PmeGrid& G, const T* u, T (*th)[(DEG + 1) * P], int (*gi)[P]) {
  for (int a = 0; a < 3; ++a) {
    const T fl = std::floor(u[a]);
    const int base = (int)fl;
    bspline_weights_fixed<P, DEG>(u[a] - fl, th[a]);
    for (int k = 0; k < P; ++k) gi[a][k] = wrap_index(base - k, G.K[a]);
  }
}

template <int P, int DEG, typename T>
inline void spread_site_fixed(const PmeGrid& G, const T* u, const T* e, T* grid) {
  T th[3][(DEG + 1) * P];
  int gi[3][P];
  site_splines_fixed<P, DEG>(G, u, th, gi);
  for (int k0 = 0; k0 < P; ++k0) {
    for (int k1 = 0; k1 < P; ++k1) {
      T wz[DEG + 1] = {};
      int it = 0;
      for (int d = 0; d <= DEG; ++d)
        for (int t1 = d; t1 >= 0; --t1)
          for (int t2 = d - t1; t2 >= 0; --t2) wz[d - t1 - t2] += e[it++] * th[0][t1 * P + k0] * th[1][t2 * P + k1];
      T* line = grid + ((int64_t)gi[0][k0] * G.K[1] + gi[1][k1]) * G.K[2];
      for (int k2 = 0; k2 < P; ++k2) {
        T v = 0;
        for (int d = 0; d <= DEG; ++d) v += wz[d] * th[2][d * P + k2];
        line[gi[2][k2]] += v;
      }
    }
  }
}

template <int P, int DEG, typename T>
inline void gather_site_fixed(const PmeGrid& G, const T* u, const T* grid, T* out) {
  T th[3][(DEG + 1) * P];
  int gi[3][P];
  site_splines_fixed<P, DEG>(G, u, th, gi);
  constexpr int NOUT = ncart(DEG);
  T acc[NOUT] = {};
  for (int k0 = 0; k0 < P; ++k0) {
    for (int k1 = 0; k1 < P; ++k1) {
      T sz[DEG + 1] = {};
      const T* line = grid + ((int64_t)gi[0][k0] * G.K[1] + gi[1][k1]) * G.K[2];
      for (int k2 = 0; k2 < P; ++k2) {
        const T gv = line[gi[2][k2]];
        for (int d = 0; d <= DEG; ++d) sz[d] += gv * th[2][d * P + k2];
      }
      int it = 0;
      for (int d = 0; d <= DEG; ++d)
        for (int t1 = d; t1 >= 0; --t1)
          for (int t2 = d - t1; t2 >= 0; --t2) acc[it++] += th[0][t1 * P + k0] * th[1][t2 * P + k1] * sz[d - t1 - t2];
    }
  }
  for (int k = 0; k < NOUT; ++k) out[k] = acc[k];
}

// Calls F<P, DEG>::run(args...) when (order, deg) is one of the compiled pairs; false otherwise.
template <template <int, int> class F, typename... Args>
bool dispatch_fixed(int order, int deg, Args&&... args) {
#define MLP_CASE(P, D)             \
  if (order == P && deg == D) {    \
    F<P, D>::run(args...);         \
    return true;                   \
  }
  MLP_CASE(5, 0) MLP_CASE(5, 1) MLP_CASE(5, 2) MLP_CASE(6, 0) MLP_CASE(6, 1) MLP_CASE(6, 2)
  MLP_CASE(8, 0) MLP_CASE(8, 1) MLP_CASE(8, 2) MLP_CASE(8, 3)
#undef MLP_CASE
  return false;
}

// Inside a parallel region: this thread's share of the sites, spread into `mine`.
template <int P, int DEG>
struct SpreadFixed {
  template <typename T>
  static void run(const PmeGrid& G, int64_t n, const T* u, const T* e, T* mine) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) spread_site_fixed<P, DEG>(G, u + 3 * i, e + ncart(DEG) * i, mine);
  }
};

template <int P, int DEG>
struct GatherFixed {
  template <typename T>
  static void run(const PmeGrid& G, int64_t n, const T* u, const T* grid, T* out) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) gather_site_fixed<P, DEG>(G, u + 3 * i, grid, out + ncart(DEG) * i);
  }
};

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
    if (!dispatch_fixed<SpreadFixed>(G.order, deg, G, n, u, e, mine))
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
  if (dispatch_fixed<GatherFixed>(G.order, deg, G, n, u, grid, out)) return;
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
