// Fast CPU path of the charge embedding (embedding_cpu.cpp's forward and fused backward for MM
// point charges as sources): included by embedding_cpu.cpp only, so that it is compiled with that
// file's vector flags (CMakeLists.txt, MLPOLAR_AVX2).
#pragma once
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "embedding_impl.h"
#include "fast_exp.h"

#define MLP_ALWAYS inline __attribute__((always_inline))

namespace mlpolar {
namespace embedding_charges {

// ---------------------------------------------------------------------------------------------
// Fast path of the charge embedding (sources = MM point charges, coeffs [m, 1], no source widths,
// plain kernel): the forward T0..T(DOUT) at the ML sites and the fused first backward.
//  1. Binning: the MM atoms that the prefilter kept (already at their images about the ML
//     region's centre, or open boundaries) are counting-sorted into cells of side cutoff/4
//     (structure of arrays, x fastest), so that every (y, z) row of cells is contiguous.
//  2. Search: per ML site, the rows whose slab lies within the cutoff, and in each row the x range
//     the remaining radius allows: the scanned atoms are ~1.5x those inside the cutoff; the ones
//     inside are compacted branch-free into the site's partner list (transient, one site at a time:
//     nothing per pair survives the site).
//  3. Radial functions: the bare point kernel 1/r for every partner in one vectorised loop; the
//     switch over the last switch_width a register of partners at a time; the partners that need erf (the
//     Gaussian where a r < x_point) or erfc (Ewald) by the shared scalar embedding_radial. The
//     widths' derivative (Gaussian-type, one exponential per pair) is vectorised too.
//  4. Hermite tensor and contractions, a register of partners at a time (8 floats or 4 doubles) as small lane vectors
//     (hermite_tensor instantiated on Lanes<T>), which GCC maps to AVX2 registers.
// Results equal the generic loop's to rounding (the same formulas; the tests hold both against
// the brute force).
// ---------------------------------------------------------------------------------------------

// Lanes<T>::N values of T (one 256-bit register: 8 floats or 4 doubles) with elementwise
// arithmetic: hermite_tensor<L, Lanes<T>> runs N pairs at once. A GCC vector type underneath, so
// that every operation is one SIMD instruction (with a plain array GCC's SLP vectoriser packed
// hermite_tensor<4> but left hermite_tensor<3> scalar; 8 doubles in two registers went through
// memory). Partner lists are padded to LANES, a multiple of every N.
constexpr int LANES = 8;
template <typename T>
struct Lanes {
  static constexpr int N = 32 / sizeof(T);
  typedef T vec __attribute__((vector_size(sizeof(T) * N)));
  vec v;
  Lanes() = default;
  MLP_ALWAYS explicit Lanes(vec x) : v(x) {}
  template <typename S, std::enable_if_t<std::is_arithmetic_v<S>, int> = 0>
  MLP_ALWAYS Lanes(S s) : v(vec{} + T(s)) {}
  MLP_ALWAYS static Lanes load(const T* p) {
    Lanes r;
    std::memcpy(&r.v, p, sizeof(vec));
    return r;
  }
  MLP_ALWAYS void store(T* p) const { std::memcpy(p, &v, sizeof(vec)); }
  MLP_ALWAYS T sum() const {
    T s = 0;
    for (int l = 0; l < N; ++l) s += v[l];
    return s;
  }
};
#define MLP_LANE_OP(OP)                                                                         \
  template <typename T>                                                                         \
  MLP_ALWAYS Lanes<T> operator OP(const Lanes<T>& a, const Lanes<T>& b) {                       \
    return Lanes<T>(a.v OP b.v);                                                                \
  }                                                                                             \
  template <typename T>                                                                         \
  MLP_ALWAYS Lanes<T>& operator OP##=(Lanes<T>& a, const Lanes<T>& b) {                         \
    a.v = a.v OP b.v;                                                                           \
    return a;                                                                                   \
  }
MLP_LANE_OP(+)
MLP_LANE_OP(-)
MLP_LANE_OP(*)
MLP_LANE_OP(/)
#undef MLP_LANE_OP
template <typename T>
MLP_ALWAYS Lanes<T> operator-(const Lanes<T>& a) {
  return Lanes<T>(-a.v);
}

// switch_radial for LANES partners with a compile-time degree: the coefficients c_kj of
// D^k S = sum_j c_kj r^(j-2k) S^(j)(r) (c_{k+1,j} = (2k - j) c_kj - c_{k,j-1}) as constants.
// (GCC 12 at -O3 -mavx2 miscompiles switch_radial's runtime recursion on Lanes: B_4 came out wrong.)
template <int L>
struct SwitchCoefficients {
  double c[L + 1][L + 1] = {};
  constexpr SwitchCoefficients() {
    c[0][0] = 1;
    for (int k = 0; k < L; ++k)
      for (int j = 0; j <= k + 1; ++j) c[k + 1][j] = (j <= k ? (2 * k - j) * c[k][j] : 0.0) - (j > 0 ? c[k][j - 1] : 0.0);
  }
};

template <int L, typename T>
MLP_ALWAYS void switch_radial_lanes(const Lanes<T>& r, T cutoff, T w, Lanes<T>* BS) {
  static constexpr SwitchCoefficients<L> C;
  using V = Lanes<T>;
  V sx[10];
  switch_derivatives((V(cutoff) - r) / V(w), sx, L);
  const V ir = V(T(1)) / r;
  const V ir2 = ir * ir;
  V wj[L + 1], rj[L + 1];  // w^-j S_x^(j) and r^j
  wj[0] = sx[0];
  rj[0] = V(T(1));
  T iwp = T(1);
  for (int j = 1; j <= L; ++j) {
    iwp /= w;
    wj[j] = V(iwp) * sx[j];
    rj[j] = rj[j - 1] * r;
  }
  BS[0] = sx[0];
  V irk = V(T(1));  // r^-2k
  MLP_UNROLL
  for (int k = 1; k <= L; ++k) {
    irk = irk * ir2;
    V acc(T(0));
    MLP_UNROLL
    for (int j = 0; j <= k; ++j) acc += V(T(C.c[k][j])) * rj[j] * wj[j];
    BS[k] = acc * irk;
  }
}

// The kept MM atoms in cell order.
template <typename T>
struct ChargeCells {
  std::vector<T> x, y, z, q;
  std::vector<int> src;    // original source index of each slot
  std::vector<int> start;  // [ncell + 1] first slot of each cell
  int n[3] = {1, 1, 1};
  T lo[3] = {0, 0, 0};
  T h = 1, ih = 1;
  int size() const { return (int)src.size(); }
};

template <typename T>
ChargeCells<T> bin_charges(const EmbeddingArgs<T>& a) {
  ChargeCells<T> c;
  const int m = a.n_src_list;
  const T* p = a.src_pos;
  T hi[3];
  for (int d = 0; d < 3; ++d) {
    c.lo[d] = std::numeric_limits<T>::max();
    hi[d] = std::numeric_limits<T>::lowest();
  }
  for (int k = 0; k < m; ++k) {
    const int j = a.src_list[k];
    for (int d = 0; d < 3; ++d) {
      c.lo[d] = std::min(c.lo[d], p[3 * j + d]);
      hi[d] = std::max(hi[d], p[3 * j + d]);
    }
  }
  // cells of a quarter cutoff (rows then scan ~1.5x the cutoff sphere's atoms), coarser when the
  // kept atoms are sparse in a wide region (at most ~2 cells per atom)
  c.h = a.cutoff / 4;
  if (m > 0) {
    double cells = 1;
    for (int d = 0; d < 3; ++d) cells *= std::floor((double)(hi[d] - c.lo[d]) / (double)c.h) + 1;
    if (cells > 2.0 * m + 64) c.h *= (T)std::cbrt(cells / (2.0 * m + 64)) * T(1.01);
    for (int d = 0; d < 3; ++d) c.n[d] = (int)std::floor((double)(hi[d] - c.lo[d]) / (double)c.h) + 1;
  }
  c.ih = T(1) / c.h;
  const int ncell = c.n[0] * c.n[1] * c.n[2];
  std::vector<int> cell(m);
  c.start.assign(ncell + 1, 0);
  for (int k = 0; k < m; ++k) {
    const int j = a.src_list[k];
    int ci[3];
    for (int d = 0; d < 3; ++d) ci[d] = std::min(c.n[d] - 1, std::max(0, (int)((p[3 * j + d] - c.lo[d]) * c.ih)));
    cell[k] = (ci[2] * c.n[1] + ci[1]) * c.n[0] + ci[0];
    ++c.start[cell[k] + 1];
  }
  for (int q = 0; q < ncell; ++q) c.start[q + 1] += c.start[q];
  c.x.resize(m);
  c.y.resize(m);
  c.z.resize(m);
  c.q.resize(m);
  c.src.resize(m);
  std::vector<int> fill(c.start.begin(), c.start.end() - 1);
  for (int k = 0; k < m; ++k) {
    const int j = a.src_list[k], s = fill[cell[k]]++;
    c.x[s] = p[3 * j];
    c.y[s] = p[3 * j + 1];
    c.z[s] = p[3 * j + 2];
    c.q[s] = a.coeffs[j];
    c.src[s] = j;
  }
  return c;
}

// Partners of one ML site (inside the cutoff, not excluded), with room for their radial
// functions B_n (n <= LMAX) and the backward's per-partner results; lengths padded to LANES.
template <typename T>
struct SitePartners {
  static constexpr int LMAX = 5;
  int cap = 0, m = 0;
  std::vector<T> x, y, z, r2, q, B, out;
  std::vector<int> slot, switched, near;
  explicit SitePartners(int most) : cap((most + 2 * LANES) / LANES * LANES) {
    for (auto* v : {&x, &y, &z, &r2, &q}) v->assign(cap, T(0));
    B.assign((size_t)(LMAX + 1) * cap, T(0));
    out.assign((size_t)4 * cap, T(0));
    slot.assign(cap, 0);
    switched.assign(cap, 0);
    near.assign(cap, 0);
  }
  T* b(int n) { return B.data() + (size_t)n * cap; }
};

#if defined(__AVX2__)
// For each 8-bit mask, the lane indices of its set bits first (the AVX2 left-pack permutation).
// For 4-bit masks (doubles): the same as 32-bit lane pairs (pairs[mask]) and as 32-bit lanes (quads[mask]).
struct CompressTable {
  alignas(32) int perm[256][8];
  alignas(32) int pairs[16][8];
  alignas(16) int quads[16][4];
  CompressTable() {
    for (int mask = 0; mask < 256; ++mask) {
      int n = 0;
      for (int l = 0; l < 8; ++l)
        if (mask >> l & 1) perm[mask][n++] = l;
      for (; n < 8; ++n) perm[mask][n] = 0;
    }
    for (int mask = 0; mask < 16; ++mask) {
      int n = 0;
      for (int l = 0; l < 4; ++l)
        if (mask >> l & 1) {
          pairs[mask][2 * n] = 2 * l;
          pairs[mask][2 * n + 1] = 2 * l + 1;
          quads[mask][n++] = l;
        }
      for (; n < 4; ++n) pairs[mask][2 * n] = pairs[mask][2 * n + 1] = quads[mask][n] = 0;
    }
  }
};
#endif

// Step 2 for site i: the partners of receiver i inside the cutoff, excluded ones removed.
template <typename T>
void find_partners(const EmbeddingArgs<T>& a, const ChargeCells<T>& c, int i, SitePartners<T>& P) {
  const T xi = a.recv_pos[3 * i], yi = a.recv_pos[3 * i + 1], zi = a.recv_pos[3 * i + 2];
  // a search radius a hair above the cutoff: cell bounds and the atoms' cells may disagree in the
  // last bit; the exact test below decides
  const T rs = a.cutoff * T(1 + 1e-5) + T(1e-6), rs2 = rs * rs;
  auto range = [&](T u, T r, int d, int& k0, int& k1) {
    const T f0 = std::floor((u - r - c.lo[d]) * c.ih), f1 = std::floor((u + r - c.lo[d]) * c.ih);
    k0 = (int)std::max(T(0), std::min(f0, T(c.n[d])));
    k1 = (int)std::max(T(-1), std::min(f1, T(c.n[d] - 1)));
  };
  auto gap = [&](T u, int k, int d) {  // distance from u to the slab of cells k along axis d
    const T s0 = c.lo[d] + T(k) * c.h, s1 = s0 + c.h;
    return u < s0 ? s0 - u : (u > s1 ? u - s1 : T(0));
  };
  const T* __restrict X = c.x.data();
  const T* __restrict Y = c.y.data();
  const T* __restrict Z = c.z.data();
  const T* __restrict Q = c.q.data();
  T* __restrict px = P.x.data();
  T* __restrict py = P.y.data();
  T* __restrict pz = P.z.data();
  T* __restrict pr = P.r2.data();
  T* __restrict pq = P.q.data();
  int* __restrict ps = P.slot.data();
  const T c2 = a.cutoff2;
  int m = 0;
  int z0, z1;
  range(zi, rs, 2, z0, z1);
  for (int cz = z0; cz <= z1; ++cz) {
    const T gz = gap(zi, cz, 2), rz2 = rs2 - gz * gz;
    if (rz2 < T(0)) continue;
    int y0, y1;
    range(yi, std::sqrt(rz2), 1, y0, y1);
    for (int cy = y0; cy <= y1; ++cy) {
      const T gy = gap(yi, cy, 1), rx2 = rz2 - gy * gy;
      if (rx2 < T(0)) continue;
      int x0, x1;
      range(xi, std::sqrt(rx2), 0, x0, x1);
      if (x0 > x1) continue;
      const int row = (cz * c.n[1] + cy) * c.n[0];
      const int k0 = c.start[row + x0], n = c.start[row + x1 + 1] - k0;
      // every atom of the row's range as a candidate (a vector loop: no dependence between atoms)
#pragma omp simd
      for (int k = 0; k < n; ++k) {
        const T dx = xi - X[k0 + k], dy = yi - Y[k0 + k], dz = zi - Z[k0 + k];
        px[m + k] = dx;
        py[m + k] = dy;
        pz[m + k] = dz;
        pr[m + k] = dx * dx + dy * dy + dz * dz;
        pq[m + k] = Q[k0 + k];
        ps[m + k] = k0 + k;
      }
      m += n;
    }
  }
  // then the candidates inside the cutoff compacted in place (branch-free; the only chain from one
  // candidate to the next is the count)
  const int candidates = m;
  m = 0;
  int k = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    // eight at a time: the kept lanes moved to the front by one permutation (a table indexed by the
    // 8-bit mask) and stored at the count; the stores overlap only the block already read
    static const CompressTable table;
    const __m256 vc2 = _mm256_set1_ps(c2), zero = _mm256_setzero_ps();
    for (; k + 8 <= candidates; k += 8) {
      const __m256 r2 = _mm256_loadu_ps(pr + k);
      const int mask = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(r2, vc2, _CMP_LT_OQ),
                                                        _mm256_cmp_ps(r2, zero, _CMP_GT_OQ)));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mask]));
      auto move = [&](float* v) { _mm256_storeu_ps(v + m, _mm256_permutevar8x32_ps(_mm256_loadu_ps(v + k), perm)); };
      move(px);
      move(py);
      move(pz);
      move(pr);
      move(pq);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ps + m),
                          _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + k)), perm));
      m += __builtin_popcount(mask);
    }
  } else {
    // four doubles at a time: the permutation of their 32-bit halves; the four int slots by an
    // in-register (128-bit) permutation, so that no store reaches the next, unread block
    static const CompressTable table;
    const __m256d vc2 = _mm256_set1_pd(c2), zero = _mm256_setzero_pd();
    for (; k + 4 <= candidates; k += 4) {
      const __m256d r2 = _mm256_loadu_pd(pr + k);
      const int mask = _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(r2, vc2, _CMP_LT_OQ),
                                                        _mm256_cmp_pd(r2, zero, _CMP_GT_OQ)));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.pairs[mask]));
      auto move = [&](double* v) {
        const __m256 halves = _mm256_castpd_ps(_mm256_loadu_pd(v + k));
        _mm256_storeu_pd(v + m, _mm256_castps_pd(_mm256_permutevar8x32_ps(halves, perm)));
      };
      move(px);
      move(py);
      move(pz);
      move(pr);
      move(pq);
      const __m128i quad = _mm_load_si128(reinterpret_cast<const __m128i*>(table.quads[mask]));
      const __m128 slots = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + k)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(ps + m), _mm_castps_si128(_mm_permutevar_ps(slots, quad)));
      m += __builtin_popcount(mask);
    }
  }
#endif
  for (; k < candidates; ++k) {
    const T r2 = pr[k];
    px[m] = px[k];
    py[m] = py[k];
    pz[m] = pz[k];
    pr[m] = r2;
    pq[m] = pq[k];
    ps[m] = ps[k];
    m += (r2 < c2) & (r2 > T(0));
  }
  if (a.excl_ptr[i + 1] > a.excl_ptr[i]) {
    int kept = 0;
    for (int p = 0; p < m; ++p) {
      if (embedding_excluded(a, i, c.src[ps[p]])) continue;
      px[kept] = px[p];
      py[kept] = py[p];
      pz[kept] = pz[p];
      pr[kept] = pr[p];
      pq[kept] = pq[p];
      ps[kept] = ps[p];
      ++kept;
    }
    m = kept;
  }
  // pad to whole lanes with harmless far pairs of zero charge
  for (int p = m; p < (m + LANES - 1) / LANES * LANES; ++p) {
    px[p] = py[p] = T(0);
    pz[p] = a.cutoff;
    pr[p] = a.cutoff2;
    pq[p] = T(0);
    ps[p] = 0;
  }
  P.m = m;
}

// The switch applied to the radial functions Bn[n][p] of the listed partners sw[0..nsw):
// D^n (S K) = sum_k C(n,k) D^k S D^(n-k) K (as in embedding_radial), LANES partners at a time.
template <int L, typename T>
void switch_partners(const EmbeddingArgs<T>& a, T* const* Bn, const T* r2, const int* sw, int nsw) {
  using V = Lanes<T>;
  for (int b = 0; b < nsw; b += V::N) {
    const int nl = std::min(V::N, nsw - b);
    V rr, BK[L + 1], BS[L + 1];
    for (int l = 0; l < V::N; ++l) {
      const int p = sw[b + std::min(l, nl - 1)];
      rr.v[l] = r2[p];
      for (int n = 0; n <= L; ++n) BK[n].v[l] = Bn[n][p];
    }
    for (int l = 0; l < V::N; ++l) rr.v[l] = std::sqrt(rr.v[l]);
    switch_radial_lanes<L>(rr, a.cutoff, a.switch_width, BS);
    V B[L + 1];
    MLP_UNROLL
    for (int n = 0; n <= L; ++n) {
      V acc(T(0));
      T binom = 1;
      MLP_UNROLL
      for (int k = 0; k <= n; ++k) {
        acc += V(binom) * BS[k] * BK[n - k];
        binom = binom * T(n - k) / T(k + 1);
      }
      B[n] = acc;
    }
    for (int l = 0; l < nl; ++l)
      for (int n = 0; n <= L; ++n) Bn[n][sw[b + l]] = B[n].v[l];
  }
}

// exp_neg: fast_exp.h (x <= 0, vectorisable)

// B_0..B_L of erf(a r)/r (radial_erf's upward recursion, a r >= its series threshold) for the
// listed partners nv[0..nn) in float, vectorised: erfc by Numerical Recipes' erfcc (relative error
// <= 1.2e-7, i.e. erf to ~1e-8 for a r >= 1.25) and exp by exp_neg. The scalar erff/expf of these
// pairs (~5% of them at sigma = 0.05 nm) had cost ~12% of the operator.
template <int L>
void near_radial_float(float a, const float* r2, const int* nv, int nn, float* const* Bn) {
  constexpr int CH = 64;
  const float two_a2 = 2.0f * a * a, gpre = Const<float>::inv_sqrt_pi / a;
  for (int b = 0; b < nn; b += CH) {
    const int nc = std::min(CH, nn - b);
    float tr[CH], tB[L + 1][CH];
    for (int k = 0; k < nc; ++k) tr[k] = r2[nv[b + k]];
#pragma omp simd
    for (int k = 0; k < nc; ++k) {
      const float rr = tr[k], r = std::sqrt(rr), x = a * r, t = 1.0f / (1.0f + 0.5f * x);
      float poly = 0.17087277f;
      poly = poly * t - 0.82215223f;
      poly = poly * t + 1.48851587f;
      poly = poly * t - 1.13520398f;
      poly = poly * t + 0.27886807f;
      poly = poly * t - 0.18628806f;
      poly = poly * t + 0.09678418f;
      poly = poly * t + 0.37409196f;
      poly = poly * t + 1.00002368f;
      poly = poly * t - 1.26551223f;
      const float erfc = t * exp_neg(std::min(0.0f, poly - x * x));
      const float g = exp_neg(-x * x) * gpre, ir2 = 1.0f / rr;
      float v = (1.0f - erfc) / r, fac = 1.0f;
      tB[0][k] = v;
      MLP_UNROLL
      for (int n = 1; n <= L; ++n) {
        fac *= two_a2;
        v = (float(2 * n - 1) * v - fac * g) * ir2;
        tB[n][k] = v;
      }
    }
    for (int k = 0; k < nc; ++k)
      for (int n = 0; n <= L; ++n) Bn[n][nv[b + k]] = tB[n][k];
  }
}

// Step 3: B_0..B_L of every partner of site i (widths of receiver i only).
template <int L, typename T>
void partner_radial(const EmbeddingArgs<T>& a, const ChargeCells<T>& c, int i, SitePartners<T>& P) {
  const int mp = (P.m + LANES - 1) / LANES * LANES;
  const T* __restrict r2 = P.r2.data();
  T* Bn[L + 1];
  for (int n = 0; n <= L; ++n) Bn[n] = P.b(n);
  {
    T* __restrict B = P.B.data();
    const int cap = P.cap;
#pragma omp simd
    for (int p = 0; p < mp; ++p) {  // radial_point
      const T ir2 = T(1) / r2[p];
      T b = std::sqrt(ir2);
      B[p] = b;
      MLP_UNROLL
      for (int n = 1; n <= L; ++n) {
        b = T(2 * n - 1) * b * ir2;
        B[n * cap + p] = b;
      }
    }
  }
  // partners that are not bare points: where embedding_radial would take erf (a r < x_point),
  // the switch (r > switch_on) or the Ewald kernel
  const T s = a.recv_widths ? T(2) * a.recv_widths[i] * a.recv_widths[i] : T(0);
  const T near2 = s > T(0) ? s * x_point<T>(L) * x_point<T>(L) : T(-1);
  const T on2 = a.switch_width > T(0) ? a.switch_on * a.switch_on : std::numeric_limits<T>::max();
  const bool every = a.beta > T(0);
  // float, plain kernel: the close pairs past radial_erf's series threshold in one vector loop
  // (their switch, if any, below with the others); closer ones (rare) by the scalar path
  const bool vector_near = std::is_same_v<T, float> && !every && s > T(0) && !a.src_widths && a.width_derivative == 0;
  const T x_series = T(0.5) + T(0.25) * T(L), series2 = vector_near ? s * x_series * x_series : near2;
  int* sw = P.switched.data();
  int* nv = P.near.data();
  int nsw = 0, nn = 0;
  for (int p = 0; p < P.m; ++p) {
    if (every || r2[p] <= near2) {
      if (vector_near && r2[p] >= series2) {
        nv[nn++] = p;
        if (r2[p] > on2) sw[nsw++] = p;
        continue;
      }
      T B[L + 1];
      embedding_radial(a, i, c.src[P.slot[p]], r2[p], L, B);
      for (int n = 0; n <= L; ++n) Bn[n][p] = B[n];
    } else if (r2[p] > on2) {
      sw[nsw++] = p;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (nn) near_radial_float<L>(T(1) / std::sqrt(s), r2, nv, nn, Bn);
  }
  switch_partners<L>(a, Bn, r2, sw, nsw);
}

// Forward of site i: acc[t] = sum_p q_p R_t(x_p), |t| <= DOUT.
template <int DOUT, typename T>
__attribute__((noinline)) void site_forward(SitePartners<T>& P, T* acc) {
  constexpr int NOUT = ncart(DOUT);
  using V = Lanes<T>;
  V sum[NOUT];
  for (int t = 0; t < NOUT; ++t) sum[t] = V(T(0));
  for (int p = 0; p < P.m; p += V::N) {
    V B[DOUT + 1], R[NOUT];
    for (int n = 0; n <= DOUT; ++n) B[n] = V::load(P.b(n) + p);
    hermite_tensor<DOUT>(V::load(P.x.data() + p), V::load(P.y.data() + p), V::load(P.z.data() + p), B, R);
    const V q = V::load(P.q.data() + p);
    MLP_UNROLL
    for (int t = 0; t < NOUT; ++t) sum[t] += q * R[t];
  }
  for (int t = 0; t < NOUT; ++t) acc[t] += sum[t].sum();
}

// Fused backward of site i (see fused_backward_loop): with w_a = sum_t G_t R_{t+e_a} and
// u = sum_t G_t R_t per partner, dL/dr_i += q w, and per partner out = (q w, u) for the MM side.
template <int DOUT, typename T>
__attribute__((noinline)) void site_backward(SitePartners<T>& P, const T* Gi, T* gri) {
  constexpr int L = DOUT + 1;
  using V = Lanes<T>;
  V g0(T(0)), g1(T(0)), g2(T(0));
  T* __restrict o = P.out.data();
  for (int p = 0; p < P.m; p += V::N) {
    V B[L + 1], R[ncart(L)];
    for (int n = 0; n <= L; ++n) B[n] = V::load(P.b(n) + p);
    hermite_tensor<L>(V::load(P.x.data() + p), V::load(P.y.data() + p), V::load(P.z.data() + p), B, R);
    V w0(T(0)), w1(T(0)), w2(T(0)), u(T(0));
    int it = 0;
    MLP_UNROLL
    for (int dt = 0; dt <= DOUT; ++dt)
      MLP_UNROLL
      for (int t1 = dt; t1 >= 0; --t1)
        MLP_UNROLL
        for (int t2 = dt - t1; t2 >= 0; --t2) {
          const int t3 = dt - t1 - t2;
          const V g(Gi[it++]);
          u += g * R[cidx(t1, t2, t3)];
          w0 += g * R[cidx(t1 + 1, t2, t3)];
          w1 += g * R[cidx(t1, t2 + 1, t3)];
          w2 += g * R[cidx(t1, t2, t3 + 1)];
        }
    const V q = V::load(P.q.data() + p);
    w0 = q * w0;
    w1 = q * w1;
    w2 = q * w2;
    g0 += w0;
    g1 += w1;
    g2 += w2;
    w0.store(o + p);
    w1.store(o + P.cap + p);
    w2.store(o + 2 * P.cap + p);
    u.store(o + 3 * P.cap + p);
  }
  gri[0] += g0.sum();
  gri[1] += g1.sum();
  gri[2] += g2.sum();
}

// dL/ds_i of site i: sum_p q_p sum_t G_t R'_t, R' the Hermite tensor of the width derivative of
// the pair kernel (Gaussian-type radial functions; the switch's Leibniz sum in embedding_radial).
template <int DOUT, typename T>
T site_width_gradient(const EmbeddingArgs<T>& a, int i, SitePartners<T>& P, const T* Gi) {
  constexpr int NOUT = ncart(DOUT);
  if (!a.recv_widths || a.recv_widths[i] <= T(0)) return T(0);
  // radial_width_derivative with the receiver's width only (a^2 = 1/(2 sigma^2)):
  // B_n = C_n exp(-a^2 r^2), C_0 = -(4/sqrt(pi)) sigma a^3, C_n = 2a^2 C_(n-1); zero where the
  // scalar exponential is negligible or underflows
  const T sig = a.recv_widths[i], a2 = T(1) / (T(2) * sig * sig);
  constexpr T XMAX = sizeof(T) == 8 ? T(700) : T(85);
  T C[DOUT + 1];
  C[0] = -T(2) * Const<T>::two_over_sqrt_pi * sig * a2 * std::sqrt(a2);
  for (int n = 1; n <= DOUT; ++n) C[n] = C[n - 1] * T(2) * a2;
  const int mp = (P.m + LANES - 1) / LANES * LANES;
  const T* __restrict r2 = P.r2.data();
  T* __restrict B = P.B.data();
  const int cap = P.cap;
#pragma omp simd
  for (int p = 0; p < mp; ++p) {
    const T x2 = std::min(a2 * r2[p], XMAX);
    const T g = a2 * r2[p] < XMAX ? exp_neg(-x2) : T(0);
    MLP_UNROLL
    for (int n = 0; n <= DOUT; ++n) B[n * cap + p] = g > T(0) ? C[n] * g : T(0);  // (C may overflow for tiny widths)
  }
  if (a.beta <= T(0) && a.switch_width > T(0)) {  // the switch: S dK/d(sigma), the same Leibniz sum
    const T on2 = a.switch_on * a.switch_on;
    int* sw = P.switched.data();
    int nsw = 0;
    for (int p = 0; p < P.m; ++p) {
      sw[nsw] = p;
      nsw += r2[p] > on2;
    }
    T* Bn[DOUT + 1];
    for (int n = 0; n <= DOUT; ++n) Bn[n] = P.b(n);
    switch_partners<DOUT>(a, Bn, r2, sw, nsw);
  }
  using V = Lanes<T>;
  V acc(T(0));
  for (int p = 0; p < P.m; p += V::N) {
    V B[DOUT + 1], R[NOUT];
    for (int n = 0; n <= DOUT; ++n) B[n] = V::load(P.b(n) + p);
    hermite_tensor<DOUT>(V::load(P.x.data() + p), V::load(P.y.data() + p), V::load(P.z.data() + p), B, R);
    V s(T(0));
    MLP_UNROLL
    for (int t = 0; t < NOUT; ++t) s += V(Gi[t]) * R[t];
    acc += V::load(P.q.data() + p) * s;
  }
  return acc.sum();
}

// Whether the fast path computes this call: the charge embedding with ML sites as receivers
// (all of them listed), MM charges as sources, and pair displacements that need no per-pair
// image (open boundaries, or everything imaged about the ML region's centre).
template <typename T>
bool fast_path_applies(const EmbeddingArgs<T>& a) {
  return a.din == 0 && !a.src_widths && a.width_derivative == 0 && a.n_recv_list == a.n_recv &&
         (!a.periodic || a.imaged) && a.n_recv > 0;
}

template <int DOUT, typename T>
void forward_degree(const EmbeddingArgs<T>& a, T* out, ChargeCells<T>* keep) {
  constexpr int NOUT = ncart(DOUT);
  ChargeCells<T> c = bin_charges(a);
  const bool parallel = (int64_t)a.n_recv * c.size() > 100000;
#pragma omp parallel if (parallel)
  {
    SitePartners<T> P(c.size());
#pragma omp for schedule(dynamic, 4)
    for (int k = 0; k < a.n_recv_list; ++k) {
      const int i = a.recv_list[k];
      T acc[NOUT];
      for (int t = 0; t < NOUT; ++t) acc[t] = 0;
      find_partners(a, c, i, P);
      partner_radial<DOUT>(a, c, i, P);
      site_forward<DOUT>(P, acc);
      embedding_corrections<DOUT>(a, i, acc);  // Ewald: excluded pairs' erf(beta r)/r out
      for (int t = 0; t < NOUT; ++t) out[(int64_t)i * NOUT + t] += acc[t];
    }
  }
  if (keep) *keep = std::move(c);
}

// The forward on the fast path (false: it does not apply). `keep`: where to leave the binned MM
// atoms for the backward of the same call (its search is then not repeated).
template <typename T>
bool forward(const EmbeddingArgs<T>& a, T* out, ChargeCells<T>* keep = nullptr) {
  if (!fast_path_applies(a)) return false;
  switch (a.dout) {
    case 0: forward_degree<0>(a, out, keep); return true;
    case 1: forward_degree<1>(a, out, keep); return true;
    case 2: forward_degree<2>(a, out, keep); return true;
    case 3: forward_degree<3>(a, out, keep); return true;
    case 4: forward_degree<4>(a, out, keep); return true;
    default: return false;
  }
}

// The fused backward on the fast path: threads split the ML sites; each thread adds the MM side
// (q w, u per partner) into its own cell-order columns, reduced at the end.
// `cached`: the forward's binned MM atoms (same positions and charges), or null to bin them here.
template <int DOUT, typename T>
void backward(const EmbeddingArgs<T>& a, const T* G, T* g_recv, T* g_src, T* g_q, T* g_w,
              const ChargeCells<T>* cached = nullptr) {
  constexpr int NOUT = ncart(DOUT);
  ChargeCells<T> binned;
  if (!cached) binned = bin_charges(a);
  const ChargeCells<T>& c = cached ? *cached : binned;
  const int m = c.size();
  const bool parallel = (int64_t)a.n_recv * m > 100000;
  const int nthreads = parallel ? std::max(1, omp_get_max_threads()) : 1;
  std::vector<T> cols((size_t)nthreads * 4 * m, T(0));
#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    T* mine = cols.data() + (size_t)omp_get_thread_num() * 4 * m;
    SitePartners<T> P(m);
#pragma omp for schedule(dynamic, 4)
    for (int k = 0; k < a.n_recv_list; ++k) {
      const int i = a.recv_list[k];
      const T* Gi = G + (int64_t)i * NOUT;
      find_partners(a, c, i, P);
      partner_radial<DOUT + 1>(a, c, i, P);
      site_backward<DOUT>(P, Gi, g_recv + 3 * (int64_t)i);
      const T* o = P.out.data();
      const int* sl = P.slot.data();
      for (int p = 0; p < P.m; ++p) {
        T* dst = mine + 4 * (size_t)sl[p];
        dst[0] -= o[p];
        dst[1] -= o[P.cap + p];
        dst[2] -= o[2 * P.cap + p];
        dst[3] += o[3 * P.cap + p];
      }
      if (g_w) g_w[i] += site_width_gradient<DOUT>(a, i, P, Gi);
    }
  }
  for (int t = 0; t < nthreads; ++t) {
    const T* col = cols.data() + (size_t)t * 4 * m;
    for (int s = 0; s < m; ++s) {
      const int j = c.src[s];
      g_src[3 * (int64_t)j] += col[4 * s];
      g_src[3 * (int64_t)j + 1] += col[4 * s + 1];
      g_src[3 * (int64_t)j + 2] += col[4 * s + 2];
      g_q[j] += col[4 * s + 3];
    }
  }
}

}  // namespace embedding_charges
}  // namespace mlpolar
