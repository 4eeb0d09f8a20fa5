// Per-receiver work of the embedding operator (issue 3), shared by the CPU loop
// (csrc/embedding_cpu.cpp) and the CUDA kernel (cuda/embedding.cu). Two site sets: receivers
// (the ML sites in the forward) and sources (MM charges in the forward); the backward runs the
// same code with the roles swapped. Each receiver gathers from its sources, so nothing is
// written twice and no per-pair array exists.
//
// Pair kernel: f(r) = S(r) K(r) with K = erf(a r)/r, a = 1/sqrt(2 (s_i^2 + s_j^2)) (1/r for point
// pairs), and S a C4 switch on [r_on, cutoff] so that T0..T3 and their first derivatives (the
// forces of an energy built from T3) are continuous at the cutoff. Under Ewald (beta > 0) the
// real-space kernel is K - erf(beta r)/r without switch, as in the electrostatics core.
#pragma once
#include "multipole_math.h"

namespace mlpolar {

template <typename T>
struct EmbeddingArgs {
  int n_recv = 0, n_src = 0;
  const T* recv_pos = nullptr;     // [n_recv, 3] nm
  const T* src_pos = nullptr;      // [n_src, 3] nm
  const T* recv_widths = nullptr;  // [n_recv] sigma (nm) or nullptr (points)
  const T* src_widths = nullptr;   // [n_src] or nullptr
  const T* coeffs = nullptr;       // [n_src, ncart(din)] source coefficients
  int din = 0, dout = 0;
  // 0: the pair kernel f; 1 (2): df/d(sigma) of the receiver's (source's) width instead
  int width_derivative = 0;
  // prefilter: receivers worth visiting and the sources each of them scans
  const int* recv_list = nullptr;  // [n_recv_list]
  int n_recv_list = 0;
  const int* src_list = nullptr;   // [n_src_list]
  int n_src_list = 0;
  bool periodic = false;
  bool imaged = false;  // positions already moved to their images about the compact set's centre
  T box[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  T cutoff = 0, cutoff2 = 0;
  T switch_on = 0, switch_width = 0;  // switch on [switch_on, cutoff]; width 0: hard cutoff
  T beta = 0;
  const int64_t* excl_ptr = nullptr;  // [n_recv + 1] CSR by receiver
  const int64_t* excl_idx = nullptr;  // source indices
};

// S(x) = 1 - smoothstep_4(x) = smoothstep_4(y), y = 1 - x (C4 at both ends), with
// smoothstep_4(y) = y^5 (126 - 420 y + 540 y^2 - 315 y^3 + 70 y^4). Written in y = (cutoff - r)/w so
// that S and its derivatives vanish near the cutoff without cancellation. sx[j] = d^j S / dx^j,
// j <= jmax (a pair of total degree L needs j <= L only).
template <typename T>
MLP_HD void switch_derivatives(T y, T* sx, int jmax = 9) {
  // d^j/dy^j of sum_m c_m y^m, c = (0,0,0,0,0,126,-420,540,-315,70): row j holds the coefficient
  // c_m m!/(m-j)! of y^(m-j), m = j..9 (Horner below; exact integers)
  constexpr double D[10][10] = {
      {0, 0, 0, 0, 0, 126, -420, 540, -315, 70},
      {0, 0, 0, 0, 630, -2520, 3780, -2520, 630, 0},
      {0, 0, 0, 2520, -12600, 22680, -17640, 5040, 0, 0},
      {0, 0, 7560, -50400, 113400, -105840, 35280, 0, 0, 0},
      {0, 15120, -151200, 453600, -529200, 211680, 0, 0, 0, 0},
      {15120, -302400, 1360800, -2116800, 1058400, 0, 0, 0, 0, 0},
      {-302400, 2721600, -6350400, 4233600, 0, 0, 0, 0, 0, 0},
      {2721600, -12700800, 12700800, 0, 0, 0, 0, 0, 0, 0},
      {-12700800, 25401600, 0, 0, 0, 0, 0, 0, 0, 0},
      {25401600, 0, 0, 0, 0, 0, 0, 0, 0, 0}};
  for (int j = 0; j <= 9; ++j) sx[j] = 0;
  for (int j = 0; j <= jmax && j <= 9; ++j) {
    T acc = 0;
    for (int k = 9 - j; k >= 0; --k) acc = acc * y + T(D[j][k]);
    sx[j] = (j % 2) ? -acc : acc;  // d/dx = -d/dy
  }
}

// B_k[S] = (-(1/r) d/dr)^k S for k = 0..L. With D = -(1/r) d/dr, D^k S = sum_j c_kj r^(j-2k) S^(j)(r)
// and c_{k+1,j} = (2k - j) c_kj - c_{k,j-1}; S^(j)(r) = w^-j S_x^(j)(x). Written in x so that
// float32 does not lose digits expanding powers of (r - r_on).
template <typename T>
MLP_HD void switch_radial(T r, T cutoff, T w, int L, T* BS) {
  T sx[10];
  switch_derivatives((cutoff - r) / w, sx, L);
  T c[MAX_DEGREE + 2], cn[MAX_DEGREE + 2];
  for (int j = 0; j <= L + 1; ++j) c[j] = 0;
  c[0] = 1;
  BS[0] = sx[0];
  const T ir = T(1) / r, iw = T(1) / w;
  for (int k = 0; k < L; ++k) {
    for (int j = 0; j <= k + 1; ++j) cn[j] = (j <= k ? T(2 * k - j) * c[j] : T(0)) - (j > 0 ? c[j - 1] : T(0));
    for (int j = 0; j <= k + 1; ++j) c[j] = cn[j];
    // B_{k+1} = sum_j c_j r^(j - 2(k+1)) w^-j S_x^(j)
    T acc = 0, rp = 1;
    for (int q = 0; q < 2 * (k + 1); ++q) rp *= ir;  // r^-(2k+2)
    T wp = 1;
    for (int j = 0; j <= k + 1; ++j) {
      if (j <= 9) acc += c[j] * rp * wp * sx[j];
      rp *= r;
      wp *= iw;
    }
    BS[k + 1] = acc;
  }
}

// x = a r beyond which B_n, n <= L, of erf(a r)/r equal those of 1/r to working precision: the
// difference is B_n of erfc(a r)/r, relative size ~ (2x^2)^L exp(-x^2) / ((2L-1)!! x sqrt(pi)),
// below 1e-17 (double) / 1e-9 (float) for x > 6.5 + L/2 (double) / 4.5 + L/2 (float).
template <typename T>
MLP_HD T x_point(int L) {
  return (sizeof(T) == 8 ? T(6.5) : T(4.5)) + T(0.5) * T(L);
}

// B_n, n <= L, of dK/d(sigma_w), K = erf(a r)/r, a = (2(s_i^2 + s_j^2))^-1/2, sigma_w one of the two
// widths: dK/da = (2/sqrt(pi)) exp(-a^2 r^2), da/d(sigma_w) = -2 sigma_w a^3, and since
// D exp(-a^2 r^2) = 2a^2 exp(-a^2 r^2) (D = -(1/r) d/dr),
//   B_n = -(4/sqrt(pi)) sigma_w a^3 (2a^2)^n exp(-a^2 r^2).
// A Gaussian-type radial function: zero at sigma_w = 0 (point limit, one-sided) and once the
// exponential underflows (a r large), which also keeps a^3 (2a^2)^n of tiny widths out.
template <typename T>
MLP_HD void radial_width_derivative(T r2, T sigma_w, T inv_two_s, int L, T* B) {
  const T a2 = inv_two_s, x2 = a2 * r2;
  const T g = (sigma_w > T(0) && x2 < T(sizeof(T) == 8 ? 740 : 100)) ? exp(-x2) : T(0);
  if (g == T(0)) {
    for (int n = 0; n <= L; ++n) B[n] = 0;
    return;
  }
  B[0] = -T(2) * Const<T>::two_over_sqrt_pi * sigma_w * a2 * sqrt(a2) * g;
  for (int n = 1; n <= L; ++n) B[n] = B[n - 1] * T(2) * a2;
}

// B_n, n <= L, of the pair kernel between receiver i and source j at distance r (r2 = r^2), or
// of its derivative by one of the widths (a.width_derivative).
template <typename T>
MLP_HD void embedding_radial(const EmbeddingArgs<T>& a, int i, int j, T r2, int L, T* B) {
  const T r = sqrt(r2);
  T s = 0;
  if (a.recv_widths) s += a.recv_widths[i] * a.recv_widths[i];
  if (a.src_widths) s += a.src_widths[j] * a.src_widths[j];
  s *= T(2);
  if (a.width_derivative) {
    // the Ewald subtraction erf(beta r)/r does not depend on the widths
    const T* w = a.width_derivative == 1 ? a.recv_widths : a.src_widths;
    const T sw = w ? w[a.width_derivative == 1 ? i : j] : T(0);
    if (s <= T(0) || sw <= T(0)) {
      for (int n = 0; n <= L; ++n) B[n] = 0;
      return;
    }
    radial_width_derivative(r2, sw, T(1) / s, L, B);
  } else if (s <= T(0)) {
    if (a.beta > T(0))
      radial_erfc(r, r2, a.beta, L, B);
    else
      radial_point(r2, L, B);
  } else if (s * x_point<T>(L) * x_point<T>(L) < r2) {
    // a r beyond x_point: the pair sees a point charge (erf and exp skipped, most pairs of a cutoff)
    if (a.beta > T(0))
      radial_erfc(r, r2, a.beta, L, B);
    else
      radial_point(r2, L, B);
  } else {
    radial_erf(r, r2, T(1) / sqrt(s), L, B);
    if (a.beta > T(0)) {
      T Bb[MAX_DEGREE + 1];
      radial_erf(r, r2, a.beta, L, Bb);
      for (int n = 0; n <= L; ++n) B[n] -= Bb[n];
    }
  }
  if (a.beta > T(0) || a.switch_width <= T(0) || r <= a.switch_on) return;
  // (the width derivative of S K is S dK/d(sigma): the same Leibniz sum)
  // Leibniz: D is a derivation, so D^n (S K) = sum_k C(n,k) D^k S D^(n-k) K
  T BS[MAX_DEGREE + 1], BK[MAX_DEGREE + 1];
  switch_radial(r, a.cutoff, a.switch_width, L, BS);
  for (int n = 0; n <= L; ++n) BK[n] = B[n];
  for (int n = 0; n <= L; ++n) {
    T acc = 0, binom = 1;
    for (int k = 0; k <= n; ++k) {
      acc += binom * BS[k] * BK[n - k];
      binom = binom * T(n - k) / T(k + 1);
    }
    B[n] = acc;
  }
}

template <typename T>
MLP_HD bool embedding_excluded(const EmbeddingArgs<T>& a, int i, int j) {
  for (int64_t k = a.excl_ptr[i]; k < a.excl_ptr[i + 1]; ++k)
    if (a.excl_idx[k] == j) return true;
  return false;
}

// Displacement x = r_i - r_j: the minimum image for every pair inside the cutoff. When the
// positions were imaged about the centre of the compact set (reach <= half the box), the plain
// difference already is that image; `force_image` asks for it at any distance (exclusions).
template <typename T>
MLP_HD T embedding_displacement(const EmbeddingArgs<T>& a, int i, int j, T& x, T& y, T& z, bool force_image = false) {
  x = a.recv_pos[3 * i] - a.src_pos[3 * j];
  y = a.recv_pos[3 * i + 1] - a.src_pos[3 * j + 1];
  z = a.recv_pos[3 * i + 2] - a.src_pos[3 * j + 2];
  if (a.periodic && (force_image || !a.imaged)) minimum_image(a.box, x, y, z);
  return x * x + y * y + z * z;
}

// Contribution of source j (position k in the source list) to receiver i: out[t] += sum_s c_s R_{t+s}.
// Returns nothing when the pair is outside the cutoff or excluded.
template <int L, typename T>
MLP_HD void embedding_pair(const EmbeddingArgs<T>& a, int i, int j, T* out) {
  T x, y, z;
  const T r2 = embedding_displacement(a, i, j, x, y, z);
  if (r2 >= a.cutoff2 || r2 <= T(0) || embedding_excluded(a, i, j)) return;
  T B[MAX_DEGREE + 1], R[ncart(L)];
  embedding_radial(a, i, j, r2, L, B);
  hermite_tensor<L>(x, y, z, B, R);
  contract_field(R, a.coeffs + (int64_t)j * ncart(a.din), a.din, a.dout, out);
}

// Ewald exclusion corrections of receiver i: the reciprocal sum contains erf(beta r)/r of
// every excluded pair (minimum image), which is taken out here.
template <int L, typename T>
MLP_HD void embedding_corrections(const EmbeddingArgs<T>& a, int i, T* out) {
  if (a.beta <= T(0) || a.width_derivative) return;  // erf(beta r)/r: no width in it
  T B[MAX_DEGREE + 1], R[ncart(L)];
  for (int64_t k = a.excl_ptr[i]; k < a.excl_ptr[i + 1]; ++k) {
    const int j = (int)a.excl_idx[k];
    T x, y, z;
    const T r2 = embedding_displacement(a, i, j, x, y, z, true);
    radial_erf(sqrt(r2), r2, a.beta, L, B);
    for (int n = 0; n <= L; ++n) B[n] = -B[n];
    hermite_tensor<L>(x, y, z, B, R);
    contract_field(R, a.coeffs + (int64_t)j * ncart(a.din), a.din, a.dout, out);
  }
}

// All of receiver i (out zeroed by the caller).
template <int L, typename T>
MLP_HD void embedding_at_receiver(const EmbeddingArgs<T>& a, int i, T* out) {
  for (int k = 0; k < a.n_src_list; ++k) embedding_pair<L>(a, i, a.src_list[k], out);
  embedding_corrections<L>(a, i, out);
}

}  // namespace mlpolar

namespace mlpolar {

// The same with compile-time degrees (the hot cases: forward DIN = 0, backward DOUT <= 1):
// unrolled contraction into a local accumulator.
template <int DIN, int DOUT, typename T>
MLP_HD void embedding_at_receiver_fixed(const EmbeddingArgs<T>& a, int i, T* out) {
  constexpr int L = DIN + DOUT, NIN = ncart(DIN), NOUT = ncart(DOUT);
  T acc[NOUT];
  for (int k = 0; k < NOUT; ++k) acc[k] = 0;
  T B[L + 1], R[ncart(L)];
  for (int k = 0; k < a.n_src_list; ++k) {
    const int j = a.src_list[k];
    T x, y, z;
    const T r2 = embedding_displacement(a, i, j, x, y, z);
    if (r2 >= a.cutoff2 || r2 <= T(0) || embedding_excluded(a, i, j)) continue;
    embedding_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_fixed<DIN, DOUT, false>(R, a.coeffs + (int64_t)j * NIN, acc);
  }
  embedding_corrections<L>(a, i, acc);
  for (int k = 0; k < NOUT; ++k) out[k] += acc[k];
}

}  // namespace mlpolar
