// Ewald real space of point charges on the CPU: potential and field at every site, the energy
// and force path of MM-like charges (no widths, degree-0 sources, beta > 0).
//
// Potential and field (DOUT <= 1): per site, the partners inside the cutoff from all cells of its
// half-shell stencil are compacted into one list (branch-free), then the kernels run vectorised
// over that list: erfc(x) = exp(-x^2) erfcx(x) with a branch-free exp and a tabulated erfcx, and
// the partner's share added to its cell-order slot. Excluded pairs inside the cutoff are met like
// the others and taken back out per site afterwards. The field gradient
// (DOUT = 2) keeps the scalar loop with compacted partner lists.
#include <ATen/ATen.h>

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fast_exp.h"
#include "point_ewald.h"

namespace mlpolar {
namespace {

// erfcx(x) = exp(x^2) erfc(x) on [0, XMAX] by cubic Hermite interpolation on a uniform grid
// (relative error below 1e-12 in double): the Ewald kernel of point charges then needs one exp
// per pair, which the field terms need anyway, instead of erfc's own two.
struct ErfcxTable {
  static constexpr int PER_UNIT = 128;
  static constexpr double XMAX = 8.0;
  std::vector<double> f, d;  // value and h * derivative at the nodes
  std::vector<float> ff, fd;
  ErfcxTable() {
    const int n = (int)(XMAX * PER_UNIT) + 2;
    f.resize(n);
    d.resize(n);
    for (int k = 0; k < n; ++k) {
      const long double x = (long double)k / PER_UNIT;
      const long double v = std::exp(x * x) * std::erfc(x);
      f[k] = (double)v;
      // erfcx' = 2x erfcx - 2/sqrt(pi)
      d[k] = (double)((2 * x * v - 1.1283791670955125739L) / PER_UNIT);
    }
    ff.assign(f.begin(), f.end());
    fd.assign(d.begin(), d.end());
  }
  template <typename T>
  const T* values() const {
    if constexpr (sizeof(T) == 8) return f.data(); else return ff.data();
  }
  template <typename T>
  const T* slopes() const {
    if constexpr (sizeof(T) == 8) return d.data(); else return fd.data();
  }
};

const ErfcxTable& erfcx_table() {
  static const ErfcxTable table;  // built once, thread-safe
  return table;
}

// Interpolated erfcx(x), 0 <= x <= XMAX, from the table's values F and slopes D.
template <typename T>
inline T erfcx_interp(T x, const T* F, const T* D) {
  const T t = x * T(ErfcxTable::PER_UNIT);
  const int k = (int)t;
  const T u = t - T(k), u2 = u * u, u3 = u2 * u;
  const T h00 = 2 * u3 - 3 * u2 + 1, h10 = u3 - 2 * u2 + u, h01 = -2 * u3 + 3 * u2, h11 = u3 - u2;
  return h00 * F[k] + h10 * D[k] + h01 * F[k + 1] + h11 * D[k + 1];
}


// Sites in cell order as structure of arrays.
template <typename T>
struct CellSites {
  std::vector<T> x, y, z, q;
};

// Per-pair constants of one call.
template <typename T>
struct PointKernel {
  T beta, cutoff2, g;  // g = 2 beta / sqrt(pi)
  const T *F, *D;      // erfcx table
};

// Partners of one site, compacted: displacement x = r_i - r_partner (image included), the
// partner's charge and cell-order slot, and room for the two radial factors of each pair.
template <typename T>
struct PartnerList {
  std::vector<T> x, y, z, q, b0, b1;
  std::vector<int> k;
  int m = 0;
  explicit PartnerList(size_t most) : x(most), y(most), z(most), q(most), b0(most), b1(most), k(most) {}
  // Appends the sites of one neighbour cell [kbeg, kend) that lie inside the cutoff, without
  // branches (every candidate is written, the count advances only for those inside).
  void add_cell(const CellSites<T>& s, T cutoff2, int kbeg, int kend, T hx, T hy, T hz) {
    // local pointers and count: stores through them cannot alias the count or each other
    const T* __restrict sx = s.x.data();
    const T* __restrict sy = s.y.data();
    const T* __restrict sz = s.z.data();
    const T* __restrict sq = s.q.data();
    T* __restrict px = x.data();
    T* __restrict py = y.data();
    T* __restrict pz = z.data();
    T* __restrict pq = q.data();
    int* __restrict pk = k.data();
    int c = m;
    for (int kk = kbeg; kk < kend; ++kk) {
      const T dx = hx - sx[kk], dy = hy - sy[kk], dz = hz - sz[kk];
      px[c] = dx;
      py[c] = dy;
      pz[c] = dz;
      pq[c] = sq[kk];
      pk[c] = kk;
      c += (dx * dx + dy * dy + dz * dz < cutoff2);
    }
    m = c;
  }
};

// Kernels of site i (charge qi) with its compacted partners: the radial factors and site i's
// sums vectorised over the partners (contiguous loads, no scatter), then the partners' shares
// added to their cell-order slots out[t][k] in a short scalar loop.
template <int DOUT, typename T>
// (kept out of line: inlined into the OpenMP region, GCC 12 left the float loop scalar)
__attribute__((noinline)) void site_pairs(const PointKernel<T>& K, PartnerList<T>& L, T qi, T* acc, T* const* out) {
  const T* __restrict X = L.x.data();
  const T* __restrict Y = L.y.data();
  const T* __restrict Z = L.z.data();
  const T* __restrict Q = L.q.data();
  T* __restrict B0 = L.b0.data();
  T* __restrict B1 = L.b1.data();
  const int* __restrict J = L.k.data();
  const T* __restrict F = K.F;
  const T* __restrict D = K.D;
  const T beta = K.beta, g = K.g;
  const int m = L.m;
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  if constexpr (DOUT == 0) {
#pragma omp simd reduction(+ : a0)
    for (int p = 0; p < m; ++p) {
      const T r = std::sqrt(X[p] * X[p] + Y[p] * Y[p] + Z[p] * Z[p]), xb = beta * r;
      const T b0 = exp_neg(-xb * xb) * erfcx_interp(xb, F, D) / r;
      a0 += b0 * Q[p];
      B0[p] = b0 * qi;
    }
    T* __restrict P0 = out[0];
    for (int p = 0; p < m; ++p) P0[J[p]] += B0[p];
  } else {
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int p = 0; p < m; ++p) {
      const T x = X[p], y = Y[p], z = Z[p];
      const T r = std::sqrt(x * x + y * y + z * z), ir = T(1) / r, xb = beta * r;
      const T e = exp_neg(-xb * xb);
      const T b0 = e * erfcx_interp(xb, F, D) * ir;
      const T b1 = (b0 + g * e) * ir * ir;  // -(1/r) d B0/dr
      a0 += b0 * Q[p];
      const T fj = b1 * Q[p];  // grad of B0 at i is -x b1; at the partner +x b1
      a1 -= x * fj;
      a2 -= y * fj;
      a3 -= z * fj;
      B0[p] = b0 * qi;
      B1[p] = b1 * qi;
    }
    T* __restrict P0 = out[0];
    T* __restrict P1 = out[1];
    T* __restrict P2 = out[2];
    T* __restrict P3 = out[3];
    for (int p = 0; p < m; ++p) {
      const int k = J[p];
      P0[k] += B0[p];
      P1[k] += X[p] * B1[p];
      P2[k] += Y[p] * B1[p];
      P3[k] += Z[p] * B1[p];
    }
  }
  acc[0] += a0;
  if constexpr (DOUT == 1) {
    acc[1] += a1;
    acc[2] += a2;
    acc[3] += a3;
  }
}

// The excluded partners of site i that the cell pass met (inside the cutoff), taken back out.
template <int DOUT, typename T>
void remove_excluded_pairs(const RealSpaceArgs<T>& a, const PointKernel<T>& K, int i, T* acc) {
  for (int64_t m = a.excl_ptr[i]; m < a.excl_ptr[i + 1]; ++m) {
    const int j = (int)a.excl_idx[m];
    if (j == i) continue;
    T x = a.pos[3 * i] - a.pos[3 * j], y = a.pos[3 * i + 1] - a.pos[3 * j + 1], z = a.pos[3 * i + 2] - a.pos[3 * j + 2];
    minimum_image(a.box, x, y, z);
    const T r2 = x * x + y * y + z * z;
    if (!(r2 < K.cutoff2)) continue;
    const T r = std::sqrt(r2), ir = T(1) / r, xb = K.beta * r;
    const T e = exp_neg(-xb * xb);
    const T b0 = e * erfcx_interp(xb, K.F, K.D) * ir, qj = a.coeffs[j];
    acc[0] -= b0 * qj;
    if constexpr (DOUT == 1) {
      const T b1 = (b0 + K.g * e) * ir * ir;
      acc[1] += x * b1 * qj;
      acc[2] += y * b1 * qj;
      acc[3] += z * b1 * qj;
    }
  }
}

template <int DOUT, typename T>
void point_ewald_simd(const RealSpaceArgs<T>& a, T* out) {
  constexpr int NOUT = ncart(DOUT);
  const int n = a.n;
  const ErfcxTable& table = erfcx_table();
  const PointKernel<T> K{a.beta, a.cutoff2, T(2) * a.beta * Const<T>::inv_sqrt_pi, table.values<T>(),
                         table.slopes<T>()};
  CellSites<T> s;
  s.x.resize(n);
  s.y.resize(n);
  s.z.resize(n);
  s.q.resize(n);
  for (int k = 0; k < n; ++k) {
    s.x[k] = a.cell_pos[3 * k];
    s.y[k] = a.cell_pos[3 * k + 1];
    s.z[k] = a.cell_pos[3 * k + 2];
    s.q[k] = a.coeffs[a.cell_atoms[k]];
  }
  const int nthreads = omp_get_max_threads();
  const int64_t size = (int64_t)NOUT * n;  // per thread: NOUT arrays of n, cell order
  std::vector<T> buffers((size_t)nthreads * size, T(0));
  // candidates of one site: at most (half the stencil + 1) cells of the fullest cell's size
  const int ncells = a.ncell[0] * a.ncell[1] * a.ncell[2], span = 2 * a.reach + 1;
  int most = 0;
  for (int c = 0; c < ncells; ++c) most = std::max(most, a.cell_start[c + 1] - a.cell_start[c]);
  const size_t candidates = (size_t)((span * span * span + 1) / 2) * most + 1;
#pragma omp parallel
  {
    T* mine = buffers.data() + (int64_t)omp_get_thread_num() * size;
    T* cols[4] = {mine, mine + n, mine + 2 * (int64_t)n, mine + 3 * (int64_t)n};
    PartnerList<T> partners(candidates);
#pragma omp for schedule(dynamic, 64)
    for (int ki = 0; ki < n; ++ki) {
      const int i = a.cell_atoms[ki];
      const T qi = s.q[ki];
      T acc[NOUT];
      for (int t = 0; t < NOUT; ++t) acc[t] = 0;
      partners.m = 0;
      auto cell = [&](int kbeg, int kend, T hx, T hy, T hz) {
        partners.add_cell(s, K.cutoff2, kbeg, kend, hx, hy, hz);
      };
      for_each_half_shell_cell(a, ki, cell);
      site_pairs<DOUT>(K, partners, qi, acc, cols);
      if (a.excl_idx) remove_excluded_pairs<DOUT>(a, K, i, acc);
      field_corrections_at_site<DOUT>(a, i, acc);  // the excluded pairs' reciprocal part, self term
      for (int t = 0; t < NOUT; ++t) cols[t][ki] += acc[t];
    }
#pragma omp for schedule(static)
    for (int k = 0; k < n; ++k) {
      T* o = out + (int64_t)a.cell_atoms[k] * NOUT;
      for (int t = 0; t < NOUT; ++t) {
        T sum = 0;
        for (int th = 0; th < nthreads; ++th) sum += buffers[(size_t)th * size + (int64_t)t * n + k];
        o[t] = sum;
      }
    }
  }
}

// Scalar loop for the field gradient: per neighbour cell the partners inside the cutoff are
// first compacted without branches, then their kernels are evaluated in a tight loop.
template <int DOUT, typename T>
void point_ewald_scalar(const RealSpaceArgs<T>& a, T* out) {
  constexpr int NOUT = ncart(DOUT);
  const ErfcxTable& table = erfcx_table();
  const T *F = table.values<T>(), *D = table.slopes<T>();
  const int64_t size = (int64_t)a.n * NOUT;
  int ncells = a.ncell[0] * a.ncell[1] * a.ncell[2], most = 0;
  for (int c = 0; c < ncells; ++c) most = std::max(most, a.cell_start[c + 1] - a.cell_start[c]);
  const int nthreads = omp_get_max_threads();
  std::vector<T> buffers((size_t)nthreads * size, T(0));
  const T beta = a.beta, two_b2 = T(2) * beta * beta, g0 = Const<T>::inv_sqrt_pi / beta;
#pragma omp parallel
  {
    T* mine = buffers.data() + (int64_t)omp_get_thread_num() * size;
    std::vector<T> px(most + 1), py(most + 1), pz(most + 1), pr2(most + 1);
    std::vector<int> pk(most + 1);
#pragma omp for schedule(dynamic, 64)
    for (int ki = 0; ki < a.n; ++ki) {
      const int i = a.cell_atoms[ki];
      const T qi = a.coeffs[i];
      T acc_i[NOUT];
      for (int t = 0; t < NOUT; ++t) acc_i[t] = 0;
      auto cell = [&](int kbeg, int kend, T hx, T hy, T hz) {
        int m = 0;
        for (int k = kbeg; k < kend; ++k) {
          const T x = hx - a.cell_pos[3 * k], y = hy - a.cell_pos[3 * k + 1], z = hz - a.cell_pos[3 * k + 2];
          const T r2 = x * x + y * y + z * z;
          px[m] = x;
          py[m] = y;
          pz[m] = z;
          pr2[m] = r2;
          pk[m] = k;
          m += (r2 < a.cutoff2);
        }
        for (int p = 0; p < m; ++p) {
          const int j = a.cell_atoms[pk[p]];
          if (a.excl_idx && is_excluded(a, i, j)) continue;
          const T r2 = pr2[p], r = std::sqrt(r2), ir2 = T(1) / r2, x = beta * r;
          const T e = std::exp(-x * x);
          T B[DOUT + 1];
          B[0] = e * erfcx_interp(x, F, D) / r;
          T fac = 1;
          for (int n = 1; n <= DOUT; ++n) {
            fac *= two_b2;
            B[n] = (T(2 * n - 1) * B[n - 1] + fac * g0 * e) * ir2;
          }
          T R[NOUT];
          hermite_tensor<DOUT>(px[p], py[p], pz[p], B, R);
          const T qj = a.coeffs[j];
          contract_fixed<0, DOUT, false>(R, &qj, acc_i);
          contract_fixed<0, DOUT, true>(R, &qi, mine + (int64_t)j * NOUT);
        }
      };
      for_each_half_shell_cell(a, ki, cell);
      T* out_i = mine + (int64_t)i * NOUT;
      for (int t = 0; t < NOUT; ++t) out_i[t] += acc_i[t];
      field_corrections_at_site<DOUT>(a, i, out_i);
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < size; ++k) {
      T acc = 0;
      for (int t = 0; t < nthreads; ++t) acc += buffers[(size_t)t * size + k];
      out[k] = acc;
    }
  }
}

}  // namespace

template <typename T>
bool point_ewald_field(const RealSpaceArgs<T>& a, T* out) {
  if (!(a.periodic && !a.widths && a.beta > T(0) && a.din == 0 && a.dout <= 2)) return false;
  // the table covers beta r <= XMAX; beyond (tolerances far below 1e-10) the general loop runs
  if (!(a.beta * std::sqrt(a.cutoff2) < T(ErfcxTable::XMAX))) return false;
  if (a.dout == 0) point_ewald_simd<0>(a, out);
  if (a.dout == 1) point_ewald_simd<1>(a, out);
  if (a.dout == 2) point_ewald_scalar<2>(a, out);
  return true;
}

template bool point_ewald_field<float>(const RealSpaceArgs<float>&, float*);
template bool point_ewald_field<double>(const RealSpaceArgs<double>&, double*);

}  // namespace mlpolar
