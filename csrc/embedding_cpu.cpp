// CPU embedding kernel: OpenMP over the receivers that the prefilter kept; each gathers from
// the selected sources (no atomics, no per-thread copies, no per-pair storage).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "embedding_args.h"
#include "ops.h"
#include "realspace_args.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#define MLP_ALWAYS inline __attribute__((always_inline))

namespace mlpolar {

void check_embedding_args(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                          const c10::optional<at::Tensor>& recv_widths, const c10::optional<at::Tensor>& src_widths,
                          const c10::optional<at::Tensor>& box, const at::Tensor& exclusions, double cutoff,
                          double switch_width, double beta, int64_t deg_out, int64_t width_derivative) {
  TORCH_CHECK(recv_pos.dim() == 2 && recv_pos.size(1) == 3, "recv_positions must have shape [n, 3], got ", recv_pos.sizes());
  TORCH_CHECK(src_pos.dim() == 2 && src_pos.size(1) == 3, "src_positions must have shape [m, 3], got ", src_pos.sizes());
  TORCH_CHECK(recv_pos.scalar_type() == at::kFloat || recv_pos.scalar_type() == at::kDouble,
              "recv_positions must be float32 or float64");
  const auto dt = recv_pos.scalar_type();
  const auto dev = recv_pos.device();
  TORCH_CHECK(src_pos.scalar_type() == dt && coeffs.scalar_type() == dt, "src_positions and coeffs must have the dtype of recv_positions");
  TORCH_CHECK(src_pos.device() == dev && coeffs.device() == dev, "src_positions and coeffs must be on the device of recv_positions");
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) == src_pos.size(0), "coeffs must have shape [m, ncart(d)], m = ",
              src_pos.size(0), ", got ", coeffs.sizes());
  const int din = degree_of_columns(coeffs.size(1), "coeffs");
  TORCH_CHECK(deg_out >= 0 && din + deg_out <= MAX_DEGREE, "total derivative degree ", din + deg_out, " exceeds the supported ", MAX_DEGREE);
  auto check_w = [&](const c10::optional<at::Tensor>& w, int64_t n, const char* name) {
    if (!w.has_value()) return;
    TORCH_CHECK(w->dim() == 1 && w->size(0) == n, name, " must have shape [", n, "]");
    TORCH_CHECK(w->scalar_type() == dt && w->device() == dev, name, " must have the dtype and device of the positions");
  };
  check_w(recv_widths, recv_pos.size(0), "recv_widths");
  check_w(src_widths, src_pos.size(0), "src_widths");
  if (box.has_value()) TORCH_CHECK(box->dim() == 2 && box->size(0) == 3 && box->size(1) == 3, "box must have shape [3, 3]");
  TORCH_CHECK(exclusions.dim() == 2 && exclusions.size(1) == 2 && exclusions.scalar_type() == at::kLong,
              "exclusions must be an int64 tensor [P, 2] of (receiver, source) pairs");
  TORCH_CHECK(exclusions.device() == dev, "exclusions must be on the device of the positions");
  TORCH_CHECK(cutoff > 0, "cutoff must be positive (nm), got ", cutoff);
  TORCH_CHECK(switch_width >= 0 && switch_width < cutoff, "switch_width must be in [0, cutoff), got ", switch_width);
  TORCH_CHECK(beta >= 0 && (beta == 0 || box.has_value()), "an Ewald splitting parameter needs a periodic box");
  TORCH_CHECK(width_derivative >= 0 && width_derivative <= 2,
              "width_derivative must be 0 (the field), 1 (its derivative by the receivers' widths) or 2 (by the "
              "sources' widths), got ", width_derivative);
}

namespace {

template <typename T>
Prefilter prefilter_loop(const at::Tensor& compact_t, const at::Tensor& wide_t, const c10::optional<std::array<double, 9>>& h,
                         double cutoff, const c10::optional<at::Tensor>& also) {
  Prefilter out;
  const at::Tensor ct = compact_t.contiguous(), wt = wide_t.contiguous();
  const T* c = ct.data_ptr<T>();
  const T* w = wt.data_ptr<T>();
  const int64_t nc = ct.size(0), nw = wt.size(0);
  const bool* extra = nullptr;
  at::Tensor also_c;
  if (also.has_value()) {
    also_c = also->contiguous();
    extra = also_c.data_ptr<bool>();
  }
  std::vector<int> kept;
  auto image = [&](double& x, double& y, double& z) {
    if (!h.has_value()) return;
    const double* b = h->data();
    minimum_image(b, x, y, z);
  };
  if (nc == 0) {
    for (int64_t k = 0; k < nw; ++k)
      if (extra && extra[k]) kept.push_back((int)k);
  } else {
    double centre[3] = {0, 0, 0};
    for (int64_t k = 0; k < nc; ++k) {
      double d[3] = {(double)c[3 * k] - c[0], (double)c[3 * k + 1] - c[1], (double)c[3 * k + 2] - c[2]};
      image(d[0], d[1], d[2]);
      for (int a = 0; a < 3; ++a) centre[a] += d[a] / nc;
    }
    for (int a = 0; a < 3; ++a) centre[a] += c[a];
    double radius2 = 0;
    for (int64_t k = 0; k < nc; ++k) {
      double x = c[3 * k] - centre[0], y = c[3 * k + 1] - centre[1], z = c[3 * k + 2] - centre[2];
      image(x, y, z);
      radius2 = std::max(radius2, x * x + y * y + z * z);
    }
    const double reach = std::sqrt(radius2) + cutoff;
    if (h.has_value() && reach > 0.5 * std::min({(*h)[0], (*h)[4], (*h)[8]})) {
      out.list = at::arange(nw, wide_t.options().dtype(at::kInt));
      return out;
    }
    const double lim = reach * (1 + 1e-9) + 1e-9, lim2 = lim * lim;
    kept.reserve(nw / 4 + 16);
    if (!h.has_value()) {
      for (int64_t k = 0; k < nw; ++k) {
        const double x = w[3 * k] - centre[0], y = w[3 * k + 1] - centre[1], z = w[3 * k + 2] - centre[2];
        if (x * x + y * y + z * z < lim2 || (extra && extra[k])) kept.push_back((int)k);
      }
    } else {
      // One vectorised pass: every row moved to its image about the centre (whole lattice vectors
      // off the original position, as imaged_about_cpu; the kernel reads the kept rows, and the
      // exclusion partners it images per pair), and the test on that image; then the compaction.
      const double* b = h->data();
      const double i0 = 1.0 / b[0], i4 = 1.0 / b[4], i8 = 1.0 / b[8], c0 = centre[0], c1 = centre[1], c2 = centre[2];
      out.wide_imaged = at::empty_like(wt);
      T* __restrict dst = out.wide_imaged.data_ptr<T>();
      const T* __restrict src = w;
      std::vector<unsigned char> inside(nw);
      unsigned char* __restrict in = inside.data();
#pragma omp simd
      for (int64_t k = 0; k < nw; ++k) {
        const double x = src[3 * k] - c0, y = src[3 * k + 1] - c1, z = src[3 * k + 2] - c2;
        const double sc = std::nearbyint(z * i8);
        const double sb = std::nearbyint((y - sc * b[7]) * i4);
        const double sa = std::nearbyint((x - sc * b[6] - sb * b[3]) * i0);
        const double dx = sa * b[0] + sb * b[3] + sc * b[6], dy = sb * b[4] + sc * b[7], dz = sc * b[8];
        const double ix = x - dx, iy = y - dy, iz = z - dz;
        dst[3 * k] = src[3 * k] - (T)dx;
        dst[3 * k + 1] = src[3 * k + 1] - (T)dy;
        dst[3 * k + 2] = src[3 * k + 2] - (T)dz;
        in[k] = ix * ix + iy * iy + iz * iz < lim2;
      }
      kept.resize(nw);
      int nk = 0;
      for (int64_t k = 0; k < nw; ++k) {
        kept[nk] = (int)k;
        nk += in[k] | (extra ? (unsigned char)extra[k] : (unsigned char)0);
      }
      kept.resize(nk);
    }
    out.centre = at::tensor(std::vector<double>(centre, centre + 3), at::TensorOptions().dtype(at::kDouble)).view({1, 3});
    out.imaged = h.has_value();
  }
  out.list = at::empty({(int64_t)kept.size()}, wide_t.options().dtype(at::kInt));
  std::copy(kept.begin(), kept.end(), out.list.data_ptr<int>());
  return out;
}

}  // namespace

Prefilter prefilter_cpu(const at::Tensor& compact, const at::Tensor& wide, const c10::optional<std::array<double, 9>>& h,
                        double cutoff, const c10::optional<at::Tensor>& also) {
  return wide.scalar_type() == at::kFloat ? prefilter_loop<float>(compact, wide, h, cutoff, also)
                                          : prefilter_loop<double>(compact, wide, h, cutoff, also);
}

at::Tensor imaged_about_cpu(const at::Tensor& pos, const at::Tensor& centre, const std::array<double, 9>& h) {
  at::Tensor out = at::empty_like(pos, at::MemoryFormat::Contiguous);
  const at::Tensor p = pos.contiguous();
  const double* cc = centre.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "imaged_about_cpu", [&] {
    const scalar_t* src = p.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t k = 0; k < p.size(0); ++k) {
      // whole lattice vectors off the original position (as minimum_image() finds them): a site
      // already at its image stays bit-identical
      const double x = src[3 * k] - cc[0], y = src[3 * k + 1] - cc[1], z = src[3 * k + 2] - cc[2];
      const double sc = std::round(z / h[8]);
      const double sb = std::round((y - sc * h[7]) / h[4]);
      const double sa = std::round((x - sc * h[6] - sb * h[3]) / h[0]);
      dst[3 * k] = src[3 * k] - (scalar_t)(sa * h[0] + sb * h[3] + sc * h[6]);
      dst[3 * k + 1] = src[3 * k + 1] - (scalar_t)(sb * h[4] + sc * h[7]);
      dst[3 * k + 2] = src[3 * k + 2] - (scalar_t)(sc * h[8]);
    }
  });
  return out;
}

namespace {

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
//     partners that need more (the Gaussian's erf where a r < x_point, the switch in its last
//     switch_width, the erfc of Ewald) are recomputed by the shared scalar embedding_radial.
//  4. Hermite tensor and contractions, W partners at a time as small lane vectors (hermite_tensor
//     instantiated on Lanes<T>), which GCC maps to AVX2 registers.
// ---------------------------------------------------------------------------------------------

// W values of T with elementwise arithmetic: hermite_tensor<L, Lanes<T>> runs W pairs at once.
constexpr int LANES = 8;
template <typename T>
struct Lanes {
  T v[LANES];
  Lanes() = default;
  template <typename S, std::enable_if_t<std::is_arithmetic_v<S>, int> = 0>
  MLP_ALWAYS Lanes(S s) {
    for (int l = 0; l < LANES; ++l) v[l] = T(s);
  }
  MLP_ALWAYS static Lanes load(const T* p) {
    Lanes r;
    for (int l = 0; l < LANES; ++l) r.v[l] = p[l];
    return r;
  }
  MLP_ALWAYS void store(T* p) const {
    for (int l = 0; l < LANES; ++l) p[l] = v[l];
  }
  MLP_ALWAYS T sum() const {
    T s = 0;
    for (int l = 0; l < LANES; ++l) s += v[l];
    return s;
  }
};
#define MLP_LANE_OP(OP)                                                                         \
  template <typename T>                                                                         \
  MLP_ALWAYS Lanes<T> operator OP(const Lanes<T>& a, const Lanes<T>& b) {                       \
    Lanes<T> r;                                                                                 \
    for (int l = 0; l < LANES; ++l) r.v[l] = a.v[l] OP b.v[l];                                  \
    return r;                                                                                   \
  }                                                                                             \
  template <typename T>                                                                         \
  MLP_ALWAYS Lanes<T>& operator OP##=(Lanes<T>& a, const Lanes<T>& b) {                         \
    for (int l = 0; l < LANES; ++l) a.v[l] OP## = b.v[l];                                       \
    return a;                                                                                   \
  }
MLP_LANE_OP(+)
MLP_LANE_OP(-)
MLP_LANE_OP(*)
MLP_LANE_OP(/)
#undef MLP_LANE_OP
template <typename T>
MLP_ALWAYS Lanes<T> operator-(const Lanes<T>& a) {
  Lanes<T> r;
  for (int l = 0; l < LANES; ++l) r.v[l] = -a.v[l];
  return r;
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
  std::vector<int> slot, switched;
  explicit SitePartners(int most) : cap((most + 2 * LANES) / LANES * LANES) {
    for (auto* v : {&x, &y, &z, &r2, &q}) v->assign(cap, T(0));
    B.assign((size_t)(LMAX + 1) * cap, T(0));
    out.assign((size_t)4 * cap, T(0));
    slot.assign(cap, 0);
    switched.assign(cap, 0);
  }
  T* b(int n) { return B.data() + (size_t)n * cap; }
};

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
      const int kend = c.start[row + x1 + 1];
      for (int k = c.start[row + x0]; k < kend; ++k) {
        const T dx = xi - X[k], dy = yi - Y[k], dz = zi - Z[k], r2 = dx * dx + dy * dy + dz * dz;
        px[m] = dx;
        py[m] = dy;
        pz[m] = dz;
        pr[m] = r2;
        pq[m] = Q[k];
        ps[m] = k;
        m += (r2 < c2) & (r2 > T(0));
      }
    }
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
  for (int b = 0; b < nsw; b += LANES) {
    const int nl = std::min(LANES, nsw - b);
    V rr, BK[L + 1], BS[L + 1];
    for (int l = 0; l < LANES; ++l) {
      const int p = sw[b + std::min(l, nl - 1)];
      rr.v[l] = r2[p];
      for (int n = 0; n <= L; ++n) BK[n].v[l] = Bn[n][p];
    }
    for (int l = 0; l < LANES; ++l) rr.v[l] = std::sqrt(rr.v[l]);
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

// exp(x) for x <= 0 without libm so that loops vectorise (as point_ewald_cpu.cpp's exp_neg):
// x = k ln2 + f, |f| <= ln2/2, exp(f) by its Taylor series (relative error ~2e-16 in double,
// ~1e-7 in float), 2^k assembled in the exponent bits; valid for x >= -700 (double), -85 (float).
inline double exp_neg(double x) {
  constexpr double log2e = 1.4426950408889634, ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10;
  constexpr double shift = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * log2e + shift;
  const double k = t - shift;
  const double f = (x - k * ln2_hi) - k * ln2_lo;
  double p = 1.0 / 479001600.0;
  p = p * f + 1.0 / 39916800.0;
  p = p * f + 1.0 / 3628800.0;
  p = p * f + 1.0 / 362880.0;
  p = p * f + 1.0 / 40320.0;
  p = p * f + 1.0 / 5040.0;
  p = p * f + 1.0 / 720.0;
  p = p * f + 1.0 / 120.0;
  p = p * f + 1.0 / 24.0;
  p = p * f + 1.0 / 6.0;
  p = p * f + 0.5;
  p = p * f + 1.0;
  p = p * f + 1.0;
  const uint64_t bits = std::bit_cast<uint64_t>(t);
  return p * std::bit_cast<double>((bits + 1023u) << 52);
}

inline float exp_neg(float x) {
  constexpr float log2e = 1.44269504f, ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  constexpr float shift = 12582912.0f;  // 1.5 * 2^23
  const float t = x * log2e + shift;
  const float k = t - shift;
  const float f = (x - k * ln2_hi) - k * ln2_lo;
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const uint32_t bits = std::bit_cast<uint32_t>(t);
  return p * std::bit_cast<float>((bits + 127u) << 23);
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
  int* sw = P.switched.data();
  int nsw = 0;
  for (int p = 0; p < P.m; ++p) {
    if (every || r2[p] <= near2) {
      T B[L + 1];
      embedding_radial(a, i, c.src[P.slot[p]], r2[p], L, B);
      for (int n = 0; n <= L; ++n) Bn[n][p] = B[n];
    } else if (r2[p] > on2) {
      sw[nsw++] = p;
    }
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
  for (int p = 0; p < P.m; p += LANES) {
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
  for (int p = 0; p < P.m; p += LANES) {
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
  for (int p = 0; p < P.m; p += LANES) {
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
bool charge_fast_path_applies(const EmbeddingArgs<T>& a) {
  return a.din == 0 && !a.src_widths && a.width_derivative == 0 && a.n_recv_list == a.n_recv &&
         (!a.periodic || a.imaged) && a.n_recv > 0;
}

template <int DOUT, typename T>
void charge_forward(const EmbeddingArgs<T>& a, T* out) {
  constexpr int NOUT = ncart(DOUT);
  const ChargeCells<T> c = bin_charges(a);
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
}

template <typename T>
bool charge_forward_fixed(const EmbeddingArgs<T>& a, T* out) {
  if (!charge_fast_path_applies(a)) return false;
  switch (a.dout) {
    case 0: charge_forward<0>(a, out); return true;
    case 1: charge_forward<1>(a, out); return true;
    case 2: charge_forward<2>(a, out); return true;
    case 3: charge_forward<3>(a, out); return true;
    case 4: charge_forward<4>(a, out); return true;
    default: return false;
  }
}

// The fused backward on the fast path: threads split the ML sites; each thread adds the MM side
// (q w, u per partner) into its own cell-order columns, reduced at the end.
template <int DOUT, typename T>
void charge_backward(const EmbeddingArgs<T>& a, const T* G, T* g_recv, T* g_src, T* g_q, T* g_w) {
  constexpr int NOUT = ncart(DOUT);
  const ChargeCells<T> c = bin_charges(a);
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

template <int L>
struct EmbeddingLoop {
  template <typename T>
  static void run(const EmbeddingArgs<T>& a, T* out) {
    const int nout = ncart(a.dout);
    // threads only pay off beyond a few thousand pairs (their start-up costs microseconds)
    const bool parallel = (int64_t)a.n_recv_list * a.n_src_list > 4096;
#pragma omp parallel for schedule(dynamic, 4) if (parallel)
    for (int k = 0; k < a.n_recv_list; ++k) {
      const int i = a.recv_list[k];
      embedding_at_receiver<L>(a, i, out + (int64_t)i * nout);
    }
  }
};

template <int DIN, int DOUT, typename T>
void embedding_loop_fixed(const EmbeddingArgs<T>& a, T* out) {
  const bool parallel = (int64_t)a.n_recv_list * a.n_src_list > 4096;
#pragma omp parallel for schedule(dynamic, 4) if (parallel)
  for (int k = 0; k < a.n_recv_list; ++k) {
    const int i = a.recv_list[k];
    embedding_at_receiver_fixed<DIN, DOUT>(a, i, out + (int64_t)i * ncart(DOUT));
  }
}

// Compile-time degrees for the calls of mm_features and its first and second derivatives.
template <typename T>
bool embedding_fixed(const EmbeddingArgs<T>& a, T* out) {
#define MLP_CASE(I, O)                  \
  if (a.din == I && a.dout == O) {      \
    embedding_loop_fixed<I, O>(a, out); \
    return true;                        \
  }
  MLP_CASE(0, 0) MLP_CASE(0, 1) MLP_CASE(0, 2) MLP_CASE(0, 3) MLP_CASE(0, 4) MLP_CASE(0, 5)
  MLP_CASE(1, 0) MLP_CASE(2, 0) MLP_CASE(3, 0) MLP_CASE(4, 0)
  MLP_CASE(1, 1) MLP_CASE(2, 1) MLP_CASE(3, 1) MLP_CASE(4, 1) MLP_CASE(3, 2)
#undef MLP_CASE
  return false;
}

// Fused backward of the charge embedding (sources = MM charges, din = 0), DOUT = degree of the
// features: one pass over the pairs gives every first derivative of L = sum_it G_it V_it,
//   V_it = sum_j q_j R_t(r_i - r_j):  dL/dr_i = sum_j q_j w_j,  dL/dr_j = -q_j w_j,
//   w_a = sum_t G_it R_{t+e_a},  dL/dq_j = sum_i sum_t G_it R_t,
//   dL/ds_i = sum_j q_j sum_t G_it R'_t (R' of the width-derivative kernel),
// instead of a degree-DOUT+1 forward and a transposed pass that recompute the same radial
// functions. Threads split the sources (each MM row written by one thread); the few ML rows
// are summed per thread and reduced once.
template <int DOUT, typename T>
void fused_backward_loop(const EmbeddingArgs<T>& a, const T* G, T* g_recv, T* g_src, T* g_q, T* g_w) {
  constexpr int L = DOUT + 1, NOUT = ncart(DOUT);
  EmbeddingArgs<T> aw = a;
  aw.width_derivative = 1;
  const int nr = a.n_recv;
  // contributions of one pair (x = r_i - r_j, radial functions B of degree <= L)
  auto pair = [&](int i, int j, T x, T y, T z, const T* B, T* gr, T* gs, T& gq) {
    T R[ncart(L)];
    hermite_tensor<L>(x, y, z, B, R);
    const T* Gi = G + (int64_t)i * NOUT;
    T w0 = 0, w1 = 0, w2 = 0, q = 0;
    int it = 0;
    MLP_UNROLL
    for (int dt = 0; dt <= DOUT; ++dt)
      MLP_UNROLL
      for (int t1 = dt; t1 >= 0; --t1)
        MLP_UNROLL
        for (int t2 = dt - t1; t2 >= 0; --t2) {
          const int t3 = dt - t1 - t2;
          const T g = Gi[it++];
          q += g * R[cidx(t1, t2, t3)];
          w0 += g * R[cidx(t1 + 1, t2, t3)];
          w1 += g * R[cidx(t1, t2 + 1, t3)];
          w2 += g * R[cidx(t1, t2, t3 + 1)];
        }
    const T qj = a.coeffs[j];
    gr[3 * i] += qj * w0;
    gr[3 * i + 1] += qj * w1;
    gr[3 * i + 2] += qj * w2;
    gs[0] -= qj * w0;
    gs[1] -= qj * w1;
    gs[2] -= qj * w2;
    gq += q;
  };
  auto width_pair = [&](int i, int j, T x, T y, T z, T r2, T* gw) {
    T B[DOUT + 1], R[NOUT];
    embedding_radial(aw, i, j, r2, DOUT, B);
    hermite_tensor<DOUT>(x, y, z, B, R);
    const T* Gi = G + (int64_t)i * NOUT;
    T acc = 0;
    for (int t = 0; t < NOUT; ++t) acc += Gi[t] * R[t];
    gw[i] += a.coeffs[j] * acc;
  };
  const bool parallel = (int64_t)a.n_recv_list * a.n_src_list > 4096;
  if (charge_fast_path_applies(a)) {
    charge_backward<DOUT>(a, G, g_recv, g_src, g_q, g_w);
  } else {
#pragma omp parallel if (parallel)
  {
    std::vector<T> gr(3 * (size_t)nr, T(0)), gw(g_w ? nr : 0, T(0));
#pragma omp for schedule(dynamic, 64)
    for (int k = 0; k < a.n_src_list; ++k) {
      const int j = a.src_list[k];
      T gs[3] = {0, 0, 0}, gq = 0;
      for (int kk = 0; kk < a.n_recv_list; ++kk) {
        const int i = a.recv_list[kk];
        T x, y, z;
        const T r2 = embedding_displacement(a, i, j, x, y, z);
        if (r2 >= a.cutoff2 || r2 <= T(0) || embedding_excluded(a, i, j)) continue;
        T B[L + 1];
        embedding_radial(a, i, j, r2, L, B);
        pair(i, j, x, y, z, B, gr.data(), gs, gq);
        if (g_w) width_pair(i, j, x, y, z, r2, gw.data());
      }
      g_src[3 * (int64_t)j] += gs[0];
      g_src[3 * (int64_t)j + 1] += gs[1];
      g_src[3 * (int64_t)j + 2] += gs[2];
      g_q[j] += gq;
    }
#pragma omp critical
    {
      for (int k = 0; k < 3 * nr; ++k) g_recv[k] += gr[k];
      if (g_w)
        for (int k = 0; k < nr; ++k) g_w[k] += gw[k];
    }
  }
  }
  // Ewald: the reciprocal part's erf(beta r)/r of excluded pairs taken out (no width in it)
  if (a.beta > T(0)) {
    for (int kk = 0; kk < a.n_recv_list; ++kk) {
      const int i = a.recv_list[kk];
      for (int64_t e = a.excl_ptr[i]; e < a.excl_ptr[i + 1]; ++e) {
        const int j = (int)a.excl_idx[e];
        T x, y, z;
        const T r2 = embedding_displacement(a, i, j, x, y, z, true);
        T B[L + 1], gs[3] = {0, 0, 0}, gq = 0;
        radial_erf(sqrt(r2), r2, a.beta, L, B);
        for (int n = 0; n <= L; ++n) B[n] = -B[n];
        pair(i, j, x, y, z, B, g_recv, gs, gq);
        for (int c = 0; c < 3; ++c) g_src[3 * (int64_t)j + c] += gs[c];
        g_q[j] += gq;
      }
    }
  }
}

}  // namespace

std::vector<at::Tensor> embedding_charge_backward_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos,
                                                      const at::Tensor& charges, const c10::optional<at::Tensor>& recv_widths,
                                                      const c10::optional<at::Tensor>& box, const at::Tensor& exclusions,
                                                      double cutoff, double switch_width, double beta,
                                                      const at::Tensor& grad, bool want_widths) {
  const int64_t nr = recv_pos.size(0), ns = src_pos.size(0);
  const int dout = degree_of_columns(grad.size(1), "grad");
  TORCH_CHECK(charges.dim() == 2 && charges.size(1) == 1, "embedding_charge_backward: charges must be [m, 1]");
  TORCH_CHECK(dout <= 3, "embedding_charge_backward: feature degree above 3");
  check_embedding_args(recv_pos, src_pos, charges, recv_widths, c10::nullopt, box, exclusions, cutoff, switch_width,
                       beta, dout + 1, 0);
  at::Tensor g_recv = at::zeros({nr, 3}, recv_pos.options()), g_src = at::zeros({ns, 3}, recv_pos.options());
  at::Tensor g_q = at::zeros({ns, 1}, recv_pos.options());
  at::Tensor g_w = (want_widths && recv_widths.has_value()) ? at::zeros({nr}, recv_pos.options()) : at::Tensor();
  const at::Tensor Gc = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(recv_pos.scalar_type(), "embedding_charge_backward_cpu", [&] {
    auto in = make_embedding_inputs<scalar_t>(recv_pos, src_pos, charges, recv_widths, c10::nullopt, box, exclusions,
                                              cutoff, switch_width, beta, dout + 1, 0);
    scalar_t* gw = g_w.defined() ? g_w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* G = Gc.data_ptr<scalar_t>();
    auto* gr = g_recv.data_ptr<scalar_t>();
    auto* gs = g_src.data_ptr<scalar_t>();
    auto* gq = g_q.data_ptr<scalar_t>();
    switch (dout) {
      case 0: fused_backward_loop<0>(in.args, G, gr, gs, gq, gw); break;
      case 1: fused_backward_loop<1>(in.args, G, gr, gs, gq, gw); break;
      case 2: fused_backward_loop<2>(in.args, G, gr, gs, gq, gw); break;
      default: fused_backward_loop<3>(in.args, G, gr, gs, gq, gw); break;
    }
  });
  return {g_recv, g_src, g_q, g_w};
}

at::Tensor embedding_field_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                               const c10::optional<at::Tensor>& recv_widths, const c10::optional<at::Tensor>& src_widths,
                               const c10::optional<at::Tensor>& box, const at::Tensor& exclusions, double cutoff,
                               double switch_width, double beta, int64_t deg_out, int64_t width_derivative) {
  check_embedding_args(recv_pos, src_pos, coeffs, recv_widths, src_widths, box, exclusions, cutoff, switch_width, beta,
                       deg_out, width_derivative);
  at::Tensor out = at::zeros({recv_pos.size(0), (int64_t)ncart((int)deg_out)}, recv_pos.options());
  AT_DISPATCH_FLOATING_TYPES(recv_pos.scalar_type(), "embedding_field_cpu", [&] {
    auto in = make_embedding_inputs<scalar_t>(recv_pos, src_pos, coeffs, recv_widths, src_widths, box, exclusions,
                                              cutoff, switch_width, beta, (int)deg_out, (int)width_derivative);
    if (charge_forward_fixed(in.args, out.data_ptr<scalar_t>())) return;
    if (!embedding_fixed(in.args, out.data_ptr<scalar_t>()))
      dispatch_degree<EmbeddingLoop>(in.args.din + (int)deg_out, in.args, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace mlpolar

namespace mlpolar {
namespace {
at::Tensor embedding_field_meta(const at::Tensor& recv_pos, const at::Tensor&, const at::Tensor&,
                                const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                const c10::optional<at::Tensor>&, const at::Tensor&, double, double, double,
                                int64_t deg_out, int64_t) {
  return at::empty({recv_pos.size(0), (int64_t)ncart((int)deg_out)}, recv_pos.options());
}
}  // namespace
}  // namespace mlpolar

TORCH_LIBRARY_FRAGMENT(mlpolar, m) {
  // Potential derivatives d^t phi(r_i), |t| <= deg_out, at each receiver i from the sources'
  // Gaussian (or point) multipoles (packed source coefficients): the MM embedding (receivers =
  // ML sites, sources = MM charges) and, with the roles swapped, its backward. Pairs inside
  // `cutoff` (minimum image with a box) with a C4 switch over the last `switch_width`; with
  // beta > 0 (box needed) the unswitched Ewald real-space kernel minus erf(beta r)/r instead,
  // plus the removal of erf(beta r)/r for excluded pairs. exclusions: [P, 2] (receiver, source).
  // width_derivative 1 (2): the same sums with the pair kernel replaced by its derivative with
  // respect to the receiver's (source's) Gaussian width, for the widths' gradients.
  m.def("embedding_field(Tensor recv_positions, Tensor src_positions, Tensor coeffs, Tensor? recv_widths, "
        "Tensor? src_widths, Tensor? box, Tensor exclusions, float cutoff, float switch_width, float beta, "
        "int deg_out, int width_derivative=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(mlpolar, CPU, m) { m.impl("embedding_field", &mlpolar::embedding_field_cpu); }
TORCH_LIBRARY_IMPL(mlpolar, Meta, m) { m.impl("embedding_field", &mlpolar::embedding_field_meta); }
