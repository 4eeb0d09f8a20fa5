// Smooth-PME spreading and gathering of Cartesian multipoles on a periodic grid, shared by
// the CPU and CUDA kernels. Coordinates are in grid units (u = K * fractional coordinate) and
// multipole coefficients are already in the grid frame (the torch layer transforms them), so
// the three axes factorise: d^t W(u, g) = M^(t1)(u1 - g1) M^(t2)(u2 - g2) M^(t3)(u3 - g3),
// with M the cardinal B-spline of order p. Grid point g_k = floor(u) - k, k = 0..p-1.
#pragma once
#include "multipole_math.h"

namespace mlpolar {

constexpr int MAX_PME_ORDER = 10;

// theta[d * p + k] = d^d/du^d M_p(w + k), w = u - floor(u), for d = 0..dmax (dmax < p).
// The d-th derivative of M_p is the d-th backward difference of M_{p-d}.
template <typename T>
MLP_HD void bspline_weights(T w, int p, int dmax, T* theta) {
  T m[MAX_PME_ORDER][MAX_PME_ORDER];  // m[o-1][k] = M_o(w + k)
  m[0][0] = 1;
  for (int o = 2; o <= p; ++o) {
    const T inv = T(1) / T(o - 1);
    for (int k = 0; k < o; ++k) {
      const T a = (k <= o - 2) ? m[o - 2][k] : T(0);
      const T b = (k >= 1) ? m[o - 2][k - 1] : T(0);
      m[o - 1][k] = ((w + k) * a + (T(o) - w - k) * b) * inv;
    }
  }
  for (int d = 0; d <= dmax; ++d) {
    const int o = p - d;
    for (int k = 0; k < p; ++k) {
      T acc = 0, binom = 1;
      for (int q = 0; q <= d; ++q) {
        const int kk = k - q;
        if (kk >= 0 && kk < o) acc += ((q % 2) ? -binom : binom) * m[o - 1][kk];
        binom = binom * T(d - q) / T(q + 1);
      }
      theta[d * p + k] = acc;
    }
  }
}

MLP_HD int wrap_index(int g, int K) {
  g %= K;
  return g < 0 ? g + K : g;
}

struct PmeGrid {
  int K[3];
  int order;
};

// B-spline weights (derivatives up to deg) and wrapped grid indices of one site along each axis.
template <typename T>
MLP_HD void site_splines(const PmeGrid& G, const T* u, int deg, T (*th)[(MAX_DEGREE + 1) * MAX_PME_ORDER],
                         int (*gi)[MAX_PME_ORDER]) {
  for (int a = 0; a < 3; ++a) {
    const T fl = floor(u[a]);
    const int base = (int)fl;
    bspline_weights(u[a] - fl, G.order, deg, th[a]);
    for (int k = 0; k < G.order; ++k) gi[a][k] = wrap_index(base - k, G.K[a]);
  }
}

// Adds the grid density of site coefficients e (degree deg, grid frame) at u to grid
// through atomic_add(index, value). Q(g) += sum_t e_t d^t W(u, g).
template <typename T, typename Add>
MLP_HD void spread_site(const PmeGrid& G, const T* u, const T* e, int deg, Add& atomic_add) {
  const int p = G.order;
  T th[3][(MAX_DEGREE + 1) * MAX_PME_ORDER];
  int gi[3][MAX_PME_ORDER];  // wrapped grid index of each spline node (no division in the loops)
  site_splines(G, u, deg, th, gi);
  for (int k0 = 0; k0 < p; ++k0) {
    const int g0 = gi[0][k0];
    for (int k1 = 0; k1 < p; ++k1) {
      const int g1 = gi[1][k1];
      // fold the x and y factors into per-z-derivative-order weights
      T wz[MAX_DEGREE + 1];
      for (int d = 0; d <= deg; ++d) wz[d] = 0;
      int it = 0;
      for (int d = 0; d <= deg; ++d)
        for (int t1 = d; t1 >= 0; --t1)
          for (int t2 = d - t1; t2 >= 0; --t2) {
            wz[d - t1 - t2] += e[it++] * th[0][t1 * p + k0] * th[1][t2 * p + k1];
          }
      for (int k2 = 0; k2 < p; ++k2) {
        const int g2 = gi[2][k2];
        T v = 0;
        for (int d = 0; d <= deg; ++d) v += wz[d] * th[2][d * p + k2];
        atomic_add(((int64_t)g0 * G.K[1] + g1) * G.K[2] + g2, v);
      }
    }
  }
}

// out[t] = sum_g grid(g) d^t W(u, g), |t| <= deg.
template <typename T>
MLP_HD void gather_site(const PmeGrid& G, const T* u, const T* grid, int deg, T* out) {
  const int p = G.order;
  T th[3][(MAX_DEGREE + 1) * MAX_PME_ORDER];
  int gi[3][MAX_PME_ORDER];  // wrapped grid index of each spline node (no division in the loops)
  site_splines(G, u, deg, th, gi);
  const int nout = ncart(deg);
  for (int k = 0; k < nout; ++k) out[k] = 0;
  for (int k0 = 0; k0 < p; ++k0) {
    const int g0 = gi[0][k0];
    for (int k1 = 0; k1 < p; ++k1) {
      const int g1 = gi[1][k1];
      // z-line sums for each z-derivative order, then spread over (t1, t2)
      T sz[MAX_DEGREE + 1];
      for (int d = 0; d <= deg; ++d) sz[d] = 0;
      const T* line = grid + ((int64_t)g0 * G.K[1] + g1) * G.K[2];
      for (int k2 = 0; k2 < p; ++k2) {
        const T gv = line[gi[2][k2]];
        for (int d = 0; d <= deg; ++d) sz[d] += gv * th[2][d * p + k2];
      }
      int it = 0;
      for (int d = 0; d <= deg; ++d)
        for (int t1 = d; t1 >= 0; --t1)
          for (int t2 = d - t1; t2 >= 0; --t2) out[it++] += th[0][t1 * p + k0] * th[1][t2 * p + k1] * sz[d - t1 - t2];
    }
  }
}

}  // namespace mlpolar
