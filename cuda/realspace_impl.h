// Per-site real-space work shared by the CPU loop (csrc/realspace_cpu.cpp, OpenMP over sites)
// and the CUDA kernel (cuda/realspace.cu, one thread per site). Each site gathers from all its
// partners, so nothing is written by two threads and results do not depend on thread order.
#pragma once
#include "multipole_math.h"

namespace mlpolar {

template <typename T>
struct RealSpaceArgs {
  int n = 0;                        // number of sites
  const T* pos = nullptr;           // [n,3] nm
  const T* coeffs = nullptr;        // [n, ncart(din)] source coefficients
  int din = 0;
  const T* widths = nullptr;        // [n] Gaussian sigma (nm); nullptr: point sites
  int dout = 0;
  bool periodic = false;
  T box[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // rows a, b, c (reduced form)
  T cutoff2 = 0;
  T beta = 0;                       // Ewald splitting parameter (1/nm); 0: no reciprocal part
  bool include_self = false;        // Gaussian self-interaction of each site
  // cell list (periodic only): cells at least cutoff/reach wide in each box direction
  const int* cell_of = nullptr;     // [n]
  const int* cell_start = nullptr;  // [ncell + 1]
  const int* cell_atoms = nullptr;  // [n], atoms sorted by cell
  const T* pos_wrapped = nullptr;   // [n,3] positions wrapped into the box, by site
  const T* cell_pos = nullptr;      // [n,3] the same, in cell order
  int ncell[3] = {1, 1, 1};
  int reach = 2;                    // neighbour cells -reach..reach along each axis
  // exclusions, CSR, symmetric
  const int64_t* excl_ptr = nullptr;  // [n + 1]
  const int64_t* excl_idx = nullptr;
  // for the virial: grad of the loss with respect to the output field, [n, ncart(dout)]
  const T* grad = nullptr;
};

template <typename T>
MLP_HD bool is_excluded(const RealSpaceArgs<T>& a, int i, int j) {
  for (int64_t k = a.excl_ptr[i]; k < a.excl_ptr[i + 1]; ++k)
    if (a.excl_idx[k] == j) return true;
  return false;
}

MLP_HD int floor_div(int a, int b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

// Calls f(j, x, y, z, r2) for every partner j != i that interacts in real space:
// all non-excluded sites (open boundaries) or the non-excluded periodic images inside the
// cutoff. HALF visits only j > i (each pair once). With the cutoff at most half the box there
// is at most one image of j inside the cutoff; cells are visited with their image shift, so
// no minimum-image arithmetic runs in the inner loop.
template <bool HALF, typename T, typename F>
MLP_HD void for_each_partner(const RealSpaceArgs<T>& a, int i, F& f) {
  if (!a.periodic) {
    const T xi = a.pos[3 * i], yi = a.pos[3 * i + 1], zi = a.pos[3 * i + 2];
    for (int j = HALF ? i + 1 : 0; j < a.n; ++j) {
      if (j == i || is_excluded(a, i, j)) continue;
      T x = xi - a.pos[3 * j], y = yi - a.pos[3 * j + 1], z = zi - a.pos[3 * j + 2];
      f(j, x, y, z, x * x + y * y + z * z);
    }
    return;
  }
  const T xi = a.pos_wrapped[3 * i], yi = a.pos_wrapped[3 * i + 1], zi = a.pos_wrapped[3 * i + 2];
  const int c = a.cell_of[i];
  const int cz = c % a.ncell[2], cy = (c / a.ncell[2]) % a.ncell[1], cx = c / (a.ncell[2] * a.ncell[1]);
  for (int ox = -a.reach; ox <= a.reach; ++ox) {
    const int sx = floor_div(cx + ox, a.ncell[0]), nx = cx + ox - sx * a.ncell[0];
    for (int oy = -a.reach; oy <= a.reach; ++oy) {
      const int sy = floor_div(cy + oy, a.ncell[1]), ny = cy + oy - sy * a.ncell[1];
      for (int oz = -a.reach; oz <= a.reach; ++oz) {
        const int sz = floor_div(cz + oz, a.ncell[2]), nz = cz + oz - sz * a.ncell[2];
        // the neighbour cell's atoms sit at (wrapped position + shift)
        const T hx = xi - (sx * a.box[0] + sy * a.box[3] + sz * a.box[6]);
        const T hy = yi - (sy * a.box[4] + sz * a.box[7]);
        const T hz = zi - sz * a.box[8];
        const int nc = (nx * a.ncell[1] + ny) * a.ncell[2] + nz;
        for (int k = a.cell_start[nc]; k < a.cell_start[nc + 1]; ++k) {
          const int j = a.cell_atoms[k];
          if (HALF ? (j <= i) : (j == i)) continue;
          const T x = hx - a.cell_pos[3 * k], y = hy - a.cell_pos[3 * k + 1], z = hz - a.cell_pos[3 * k + 2];
          const T r2 = x * x + y * y + z * z;
          if (r2 >= a.cutoff2 || is_excluded(a, i, j)) continue;
          f(j, x, y, z, r2);
        }
      }
    }
  }
}

// B_n of the real-space pair kernel: Gaussian (or point) interaction minus the part the
// reciprocal sum carries (erf(beta r)/r) when beta > 0.
template <typename T>
MLP_HD void pair_radial(const RealSpaceArgs<T>& a, int i, int j, T r2, int L, T* B) {
  const T r = sqrt(r2);
  T s = 0;
  if (a.widths) s = T(2) * (a.widths[i] * a.widths[i] + a.widths[j] * a.widths[j]);
  if (s <= T(0)) {
    if (a.beta > T(0)) {
      radial_erfc(r, r2, a.beta, L, B);
    } else {
      radial_point(r2, L, B);
    }
    return;
  }
  radial_erf(r, r2, T(1) / sqrt(s), L, B);
  if (a.beta > T(0)) {
    T Bb[MAX_DEGREE + 1];
    radial_erf(r, r2, a.beta, L, Bb);
    for (int n = 0; n <= L; ++n) B[n] -= Bb[n];
  }
}

// Self term of site i (x = 0): its own Gaussian (if requested) minus the reciprocal sum's
// self-interaction (if beta > 0). Returns false when there is nothing to add.
template <typename T>
MLP_HD bool self_radial(const RealSpaceArgs<T>& a, int i, int L, T* B) {
  bool any = false;
  for (int n = 0; n <= L; ++n) B[n] = 0;
  if (a.include_self && a.widths && a.widths[i] > T(0)) {
    radial_erf(T(0), T(0), T(1) / (T(2) * a.widths[i]), L, B);
    any = true;
  }
  if (a.beta > T(0)) {
    T Bb[MAX_DEGREE + 1];
    radial_erf(T(0), T(0), a.beta, L, Bb);
    for (int n = 0; n <= L; ++n) B[n] -= Bb[n];
    any = true;
  }
  return any;
}

// Visits the correction terms of site i: excluded partners (the reciprocal sum included them;
// remove -erf(beta r)/r at the minimum image) and the self term. f(j, x, y, z, B).
template <int L, typename T, typename F>
MLP_HD void for_each_correction(const RealSpaceArgs<T>& a, int i, F& f) {
  T B[MAX_DEGREE + 1];
  if (a.beta > T(0)) {
    for (int64_t k = a.excl_ptr[i]; k < a.excl_ptr[i + 1]; ++k) {
      const int j = (int)a.excl_idx[k];
      if (j == i) continue;
      T x = a.pos[3 * i] - a.pos[3 * j], y = a.pos[3 * i + 1] - a.pos[3 * j + 1], z = a.pos[3 * i + 2] - a.pos[3 * j + 2];
      if (a.periodic) minimum_image(a.box, x, y, z);
      const T r2 = x * x + y * y + z * z;
      radial_erf(sqrt(r2), r2, a.beta, L, B);
      for (int n = 0; n <= L; ++n) B[n] = -B[n];
      f(j, x, y, z, B);
    }
  }
  if (self_radial(a, i, L, B)) f(i, T(0), T(0), T(0), B);
}

// Adds the excluded-pair and self corrections to the field at site i.
template <int L, typename T>
MLP_HD void field_corrections_at_site(const RealSpaceArgs<T>& a, int i, T* out) {
  const int nin = ncart(a.din);
  T R[ncart(L)];
  auto corr = [&](int j, T x, T y, T z, const T* B) {
    hermite_tensor<L>(x, y, z, B, R);
    contract_field(R, a.coeffs + (int64_t)j * nin, a.din, a.dout, out);
  };
  for_each_correction<L>(a, i, corr);
}

// Field of all sources at site i: out[t] = d^t phi(r_i), |t| <= dout (no Coulomb constant).
template <int L, typename T>
MLP_HD void field_at_site(const RealSpaceArgs<T>& a, int i, T* out) {
  const int nin = ncart(a.din), nout = ncart(a.dout);
  for (int k = 0; k < nout; ++k) out[k] = 0;
  T R[ncart(L)];
  auto pair = [&](int j, T x, T y, T z, T r2) {
    T B[MAX_DEGREE + 1];
    pair_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_field(R, a.coeffs + (int64_t)j * nin, a.din, a.dout, out);
  };
  for_each_partner<false>(a, i, pair);
  field_corrections_at_site<L>(a, i, out);
}

// Half-shell stencil of the periodic CPU loop: site i (at position k_i in cell order) meets
// the later sites of its own cell and all sites of the neighbour cells whose offset is
// lexicographically positive. Every pair is met once: at most one image lies inside the cutoff.
// g(kbeg, kend, hx, hy, hz) gets each neighbour cell's range in cell order and site i's position
// shifted by that cell's image offset (partner k sits at hx - cell_pos[3k], ...).
template <typename T, typename G>
MLP_HD void for_each_half_shell_cell(const RealSpaceArgs<T>& a, int ki, G& g) {
  const int i = a.cell_atoms[ki];
  const T xi = a.cell_pos[3 * ki], yi = a.cell_pos[3 * ki + 1], zi = a.cell_pos[3 * ki + 2];
  const int c = a.cell_of[i];
  const int cz = c % a.ncell[2], cy = (c / a.ncell[2]) % a.ncell[1], cx = c / (a.ncell[2] * a.ncell[1]);
  for (int ox = 0; ox <= a.reach; ++ox) {
    const int sx = floor_div(cx + ox, a.ncell[0]), nx = cx + ox - sx * a.ncell[0];
    for (int oy = (ox ? -a.reach : 0); oy <= a.reach; ++oy) {
      const int sy = floor_div(cy + oy, a.ncell[1]), ny = cy + oy - sy * a.ncell[1];
      for (int oz = ((ox || oy) ? -a.reach : 0); oz <= a.reach; ++oz) {
        const int sz = floor_div(cz + oz, a.ncell[2]), nz = cz + oz - sz * a.ncell[2];
        const T hx = xi - (sx * a.box[0] + sy * a.box[3] + sz * a.box[6]);
        const T hy = yi - (sy * a.box[4] + sz * a.box[7]);
        const T hz = zi - sz * a.box[8];
        const int nc = (nx * a.ncell[1] + ny) * a.ncell[2] + nz;
        const int kbeg = (ox || oy || oz) ? a.cell_start[nc] : ki + 1;
        g(kbeg, a.cell_start[nc + 1], hx, hy, hz);
      }
    }
  }
}

template <typename T, typename F>
MLP_HD void for_each_half_shell_partner(const RealSpaceArgs<T>& a, int ki, F& f) {
  const int i = a.cell_atoms[ki];
  auto cell = [&](int kbeg, int kend, T hx, T hy, T hz) {
    for (int k = kbeg; k < kend; ++k) {
      const T x = hx - a.cell_pos[3 * k], y = hy - a.cell_pos[3 * k + 1], z = hz - a.cell_pos[3 * k + 2];
      const T r2 = x * x + y * y + z * z;
      if (r2 >= a.cutoff2) continue;
      const int j = a.cell_atoms[k];
      if (is_excluded(a, i, j)) continue;
      f(j, x, y, z, r2);
    }
  };
  for_each_half_shell_cell(a, ki, cell);
}

// Pair terms of site i (cell-order position ki when periodic) with its half-shell partners,
// added to both ends, with compile-time degrees.
template <int DIN, int DOUT, typename T>
MLP_HD void field_half_pairs_fixed(const RealSpaceArgs<T>& a, int ki, T* out_all) {
  constexpr int L = DIN + DOUT, NIN = ncart(DIN), NOUT = ncart(DOUT);
  const int i = a.periodic ? a.cell_atoms[ki] : ki;
  T R[ncart(L)];
  T acc_i[NOUT];
  for (int k = 0; k < NOUT; ++k) acc_i[k] = 0;
  const T* ci = a.coeffs + (int64_t)i * NIN;
  auto pair = [&](int j, T x, T y, T z, T r2) {
    T B[L + 1];
    pair_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_fixed<DIN, DOUT, false>(R, a.coeffs + (int64_t)j * NIN, acc_i);
    contract_fixed<DIN, DOUT, true>(R, ci, out_all + (int64_t)j * NOUT);
  };
  if (a.periodic)
    for_each_half_shell_partner(a, ki, pair);
  else
    for_each_partner<true>(a, i, pair);
  T* out_i = out_all + (int64_t)i * NOUT;
  for (int k = 0; k < NOUT; ++k) out_i[k] += acc_i[k];
}

// Two fields in one pass (the first-order backward of multipole_field): coefficients c1 of
// degree DIN1 to output degree DOUT1 and c2 (DIN2 -> DOUT2), DIN1 + DOUT1 == DIN2 + DOUT2, so
// each pair's radial functions and Hermite tensor serve both.
template <int DIN1, int DOUT1, int DIN2, int DOUT2, typename T>
MLP_HD void field2_half_pairs_fixed(const RealSpaceArgs<T>& a, const T* c2, int ki, T* out1, T* out2) {
  static_assert(DIN1 + DOUT1 == DIN2 + DOUT2, "both fields need the same total degree");
  constexpr int L = DIN1 + DOUT1, NIN1 = ncart(DIN1), NOUT1 = ncart(DOUT1), NIN2 = ncart(DIN2), NOUT2 = ncart(DOUT2);
  const int i = a.periodic ? a.cell_atoms[ki] : ki;
  T R[ncart(L)];
  T acc1[NOUT1], acc2[NOUT2];
  for (int k = 0; k < NOUT1; ++k) acc1[k] = 0;
  for (int k = 0; k < NOUT2; ++k) acc2[k] = 0;
  const T* c1i = a.coeffs + (int64_t)i * NIN1;
  const T* c2i = c2 + (int64_t)i * NIN2;
  auto pair = [&](int j, T x, T y, T z, T r2) {
    T B[L + 1];
    pair_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_fixed<DIN1, DOUT1, false>(R, a.coeffs + (int64_t)j * NIN1, acc1);
    contract_fixed<DIN1, DOUT1, true>(R, c1i, out1 + (int64_t)j * NOUT1);
    contract_fixed<DIN2, DOUT2, false>(R, c2 + (int64_t)j * NIN2, acc2);
    contract_fixed<DIN2, DOUT2, true>(R, c2i, out2 + (int64_t)j * NOUT2);
  };
  if (a.periodic)
    for_each_half_shell_partner(a, ki, pair);
  else
    for_each_partner<true>(a, i, pair);
  for (int k = 0; k < NOUT1; ++k) out1[(int64_t)i * NOUT1 + k] += acc1[k];
  for (int k = 0; k < NOUT2; ++k) out2[(int64_t)i * NOUT2 + k] += acc2[k];
}

// Pair terms of site i with its partners j > i, added to both ends: out_i gets the field of j,
// out_j the field of i (R(-x) = (-1)^|m| R(x)). Each pair's radial functions are computed once.
template <int L, typename T>
MLP_HD void field_half_pairs(const RealSpaceArgs<T>& a, int i, T* out_all) {
  const int nin = ncart(a.din), nout = ncart(a.dout);
  T R[ncart(L)];
  T* out_i = out_all + (int64_t)i * nout;
  auto pair = [&](int j, T x, T y, T z, T r2) {
    T B[MAX_DEGREE + 1];
    pair_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    contract_field(R, a.coeffs + (int64_t)j * nin, a.din, a.dout, out_i);
    contract_field<true>(R, a.coeffs + (int64_t)i * nin, a.din, a.dout, out_all + (int64_t)j * nout);
  };
  for_each_partner<true>(a, i, pair);
}

// Half the pair virial sum_j x_ij (x) dLoss/dx_ij of site i, out[3a+b] = sum x_a g_b / 2
// (each pair is visited from both ends). L = din + dout + 1.
template <int L, typename T>
MLP_HD void virial_at_site(const RealSpaceArgs<T>& a, int i, T* out) {
  const int nin = ncart(a.din), nout = ncart(a.dout);
  for (int k = 0; k < 9; ++k) out[k] = 0;
  T R[ncart(L)];
  auto add = [&](int j, T x, T y, T z) {
    T g[3] = {0, 0, 0};
    contract_pair_gradient(R, a.grad + (int64_t)i * nout, a.grad + (int64_t)j * nout, a.coeffs + (int64_t)i * nin,
                           a.coeffs + (int64_t)j * nin, a.din, a.dout, g);
    const T xs[3] = {x, y, z};
    for (int p = 0; p < 3; ++p)
      for (int q = 0; q < 3; ++q) out[3 * p + q] += T(0.5) * xs[p] * g[q];
  };
  auto pair = [&](int j, T x, T y, T z, T r2) {
    T B[MAX_DEGREE + 1];
    pair_radial(a, i, j, r2, L, B);
    hermite_tensor<L>(x, y, z, B, R);
    add(j, x, y, z);
  };
  for_each_partner<false>(a, i, pair);
  auto corr = [&](int j, T x, T y, T z, const T* B) {
    if (j == i) return;  // the self term does not depend on the box
    hermite_tensor<L>(x, y, z, B, R);
    add(j, x, y, z);
  };
  for_each_correction<L>(a, i, corr);
}

}  // namespace mlpolar
