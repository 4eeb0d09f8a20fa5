// Pair math for Gaussian-smeared Cartesian multipoles, shared by the CPU (csrc/) and
// CUDA (cuda/) kernels. Plain C++ on raw numbers: no torch headers.
//
// Multipoles and potential derivatives are packed by Cartesian multi-index (t,u,v):
// degree 0: (000); degree 1: (100)(010)(001); degree 2: (200)(110)(101)(020)(011)(002); ...
// A source j with *source coefficients* c_s produces at x = r - r_j the potential
//     phi(x) = sum_s c_s d^s K(x)                      (d^s = d^t/dx^t d^u/dy^u d^v/dz^v)
// and its derivatives d^t phi(x) = sum_s c_s R_{t+s}(x), where R_m = d^m K is the Hermite
// tensor of the radial kernel K(r). For the Gaussian charge pair kernel K = erf(a r)/r,
// a = 1/sqrt(2(s_i^2 + s_j^2)). The radial functions B_n = (-(1/r) d/dr)^n K feed the
// McMurchie-Davidson recursion R^{(n)}_{t+1,u,v} = t R^{(n+1)}_{t-1,u,v} + x R^{(n+1)}_{t,u,v},
// R^{(n)}_{000} = (-1)^n B_n.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MLP_HD __host__ __device__ __forceinline__
#else
#define MLP_HD inline
#endif

#if defined(__CUDACC__)
#define MLP_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define MLP_UNROLL _Pragma("GCC unroll 128")
#else
#define MLP_UNROLL
#endif

namespace mlpolar {

using std::erf;
using std::erfc;
using std::exp;
using std::fabs;
using std::floor;
using std::round;
using std::sqrt;

constexpr int MAX_DEGREE = 8;  // highest total derivative degree a pair evaluation supports

MLP_HD constexpr int ncart(int d) { return (d + 1) * (d + 2) * (d + 3) / 6; }

// Packed index of the monomial (t,u,v).
MLP_HD constexpr int cidx(int t, int u, int v) {
  return (t + u + v) * (t + u + v + 1) * (t + u + v + 2) / 6 + (u + v) * (u + v + 1) / 2 + v;
}

template <typename T>
struct Const {
  static constexpr T two_over_sqrt_pi = T(1.1283791670955126);
  static constexpr T inv_sqrt_pi = T(0.5641895835477563);
  static constexpr T eps = sizeof(T) == 8 ? T(1e-17) : T(1e-8);
};

// B_n, n = 0..L, of the point kernel 1/r.
template <typename T>
MLP_HD void radial_point(T r2, int L, T* B) {
  T ir2 = T(1) / r2;
  B[0] = sqrt(ir2);
  for (int n = 1; n <= L; ++n) B[n] = T(2 * n - 1) * B[n - 1] * ir2;
}

// B_n of erfc(a r)/r (the Ewald real-space kernel of point multipoles): upward recursion is
// stable because both terms are positive.
template <typename T>
MLP_HD void radial_erfc(T r, T r2, T a, int L, T* B) {
  T x = a * r;
  T g = exp(-x * x) * Const<T>::inv_sqrt_pi / a;
  T ir2 = T(1) / r2;
  B[0] = erfc(x) / r;
  T fac = 1;
  for (int n = 1; n <= L; ++n) {
    fac *= T(2) * a * a;
    B[n] = (T(2 * n - 1) * B[n - 1] + fac * g) * ir2;
  }
}

// B_n of erf(a r)/r (a Gaussian charge pair). At short range the upward recursion cancels
// catastrophically, so there B_L comes from its Taylor series in (a r)^2 and the lower
// orders from the (stable) downward recursion; r = 0 is exact (self terms).
template <typename T>
MLP_HD void radial_erf(T r, T r2, T a, int L, T* B) {
  T x = a * r;
  T x2 = x * x;
  T g = exp(-x2) * Const<T>::inv_sqrt_pi / a;
  if (x < T(0.5) + T(0.25) * L) {
    T sum = 0, term = 1;  // term = (-x^2)^m / m!
    for (int m = 0; m < 90; ++m) {
      T add = term / T(2 * m + 2 * L + 1);
      sum += add;
      if (fabs(add) < Const<T>::eps * fabs(sum)) break;
      term *= -x2 / T(m + 1);
    }
    T pre = Const<T>::two_over_sqrt_pi * a;
    for (int n = 0; n < L; ++n) pre *= T(2) * a * a;
    B[L] = pre * sum;
    T fac = 1;
    for (int n = 0; n < L; ++n) fac *= T(2) * a * a;  // (2a^2)^L
    for (int n = L; n >= 1; --n) {
      B[n - 1] = (r2 * B[n] + fac * g) / T(2 * n - 1);
      fac /= T(2) * a * a;
    }
  } else {
    T ir2 = T(1) / r2;
    B[0] = erf(x) / r;
    T fac = 1;
    for (int n = 1; n <= L; ++n) {
      fac *= T(2) * a * a;
      B[n] = (T(2 * n - 1) * B[n - 1] - fac * g) * ir2;
    }
  }
}

// Hermite tensor R_m = d^m K(x) for all |m| <= L from B_0..B_L.
template <int L, typename T>
MLP_HD void hermite_tensor(T x, T y, T z, const T* B, T* R) {
  T buf[ncart(L)];
  T* prev = (L % 2 == 0) ? R : buf;  // ping-pong so that level 0 lands in R
  T* cur = (L % 2 == 0) ? buf : R;
  prev[0] = (L % 2) ? -B[L] : B[L];
MLP_UNROLL
  for (int n = L - 1; n >= 0; --n) {
    const int D = L - n;
    cur[0] = (n % 2) ? -B[n] : B[n];
MLP_UNROLL
    for (int d = 1; d <= D; ++d) {
MLP_UNROLL
      for (int t = d; t >= 0; --t) {
MLP_UNROLL
        for (int u = d - t; u >= 0; --u) {
          const int v = d - t - u;
          T val;
          if (t > 0)
            val = x * prev[cidx(t - 1, u, v)] + (t > 1 ? T(t - 1) * prev[cidx(t - 2, u, v)] : T(0));
          else if (u > 0)
            val = y * prev[cidx(t, u - 1, v)] + (u > 1 ? T(u - 1) * prev[cidx(t, u - 2, v)] : T(0));
          else
            val = z * prev[cidx(t, u, v - 1)] + (v > 1 ? T(v - 1) * prev[cidx(t, u, v - 2)] : T(0));
          cur[cidx(t, u, v)] = val;
        }
      }
    }
    T* tmp = prev;
    prev = cur;
    cur = tmp;
  }
}

// out[t] += sum_s c[s] R[t+s] for |t| <= dout, |s| <= din (din + dout <= L). MIRROR: the same
// pair seen from the other site, R(-x)[t+s] = (-1)^{|t|+|s|} R(x)[t+s].
template <bool MIRROR = false, typename T>
MLP_HD void contract_field(const T* R, const T* c, int din, int dout, T* out) {
  int it = 0;
  for (int dt = 0; dt <= dout; ++dt)
    for (int t1 = dt; t1 >= 0; --t1)
      for (int t2 = dt - t1; t2 >= 0; --t2) {
        const int t3 = dt - t1 - t2;
        T acc = 0;
        int is = 0;
        for (int ds = 0; ds <= din; ++ds) {
          T part = 0;
          for (int s1 = ds; s1 >= 0; --s1)
            for (int s2 = ds - s1; s2 >= 0; --s2) part += c[is++] * R[cidx(t1 + s1, t2 + s2, ds - s1 - s2 + t3)];
          acc += (MIRROR && (ds + dt) % 2) ? -part : part;
        }
        out[it++] += acc;
      }
}

// contract_field with compile-time degrees: fully unrolled, with
// every packed index a constant (the hot paths: charges, dipoles, quadrupoles; fields to degree 3).
template <int DIN, int DOUT, bool MIRROR, typename T>
MLP_HD void contract_fixed(const T* R, const T* c, T* out) {
  int it = 0;
  MLP_UNROLL
  for (int dt = 0; dt <= DOUT; ++dt)
    MLP_UNROLL
    for (int t1 = dt; t1 >= 0; --t1)
      MLP_UNROLL
      for (int t2 = dt - t1; t2 >= 0; --t2) {
        const int t3 = dt - t1 - t2;
        T acc = 0;
        int is = 0;
        MLP_UNROLL
        for (int ds = 0; ds <= DIN; ++ds)
          MLP_UNROLL
          for (int s1 = ds; s1 >= 0; --s1)
            MLP_UNROLL
            for (int s2 = ds - s1; s2 >= 0; --s2) {
              const T term = c[is++] * R[cidx(t1 + s1, t2 + s2, ds - s1 - s2 + t3)];
              acc += (MIRROR && ((ds + dt) % 2)) ? -term : term;
            }
        out[it++] += acc;
      }
}

// g[a] += sum_{t,s} w_{ts} R[t+s+e_a], with w_{ts} = gi[t] cj[s] + (-1)^{|t|+|s|} gj[t] ci[s]:
// the derivative of G_i.V_{j->i} + G_j.V_{i->j} with respect to x = r_i - r_j (for virials).
template <typename T>
MLP_HD void contract_pair_gradient(const T* R, const T* gi, const T* gj, const T* ci, const T* cj, int din,
                                   int dout, T* g) {
  int it = 0;
  for (int dt = 0; dt <= dout; ++dt)
    for (int t1 = dt; t1 >= 0; --t1)
      for (int t2 = dt - t1; t2 >= 0; --t2) {
        const int t3 = dt - t1 - t2;
        int is = 0;
        for (int ds = 0; ds <= din; ++ds)
          for (int s1 = ds; s1 >= 0; --s1)
            for (int s2 = ds - s1; s2 >= 0; --s2) {
              const int s3 = ds - s1 - s2;
              const T sign = ((dt + ds) % 2) ? T(-1) : T(1);
              const T w = gi[it] * cj[is] + sign * gj[it] * ci[is];
              g[0] += w * R[cidx(t1 + s1 + 1, t2 + s2, t3 + s3)];
              g[1] += w * R[cidx(t1 + s1, t2 + s2 + 1, t3 + s3)];
              g[2] += w * R[cidx(t1 + s1, t2 + s2, t3 + s3 + 1)];
              ++is;
            }
        ++it;
      }
}

// Minimum image in an OpenMM reduced triclinic box (rows a, b, c; a = (ax,0,0), b = (bx,by,0)).
template <typename T>
MLP_HD void minimum_image(const T* box, T& x, T& y, T& z) {
  T s = round(z / box[8]);
  x -= s * box[6];
  y -= s * box[7];
  z -= s * box[8];
  s = round(y / box[4]);
  x -= s * box[3];
  y -= s * box[4];
  s = round(x / box[0]);
  x -= s * box[0];
}

}  // namespace mlpolar
