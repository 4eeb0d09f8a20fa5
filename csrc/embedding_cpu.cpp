// CPU embedding kernel: OpenMP over the receivers that the prefilter kept; each gathers from
// the selected sources (no atomics, no per-thread copies, no per-pair storage). The charge
// embedding (MM charges as sources: mm_features' forward and fused backward) takes the fast path
// of embedding_charges_cpu.h where its conditions hold.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "embedding_args.h"
#include "embedding_charges_cpu.h"
#include "ops.h"
#include "realspace_args.h"

#include <algorithm>
#include <vector>

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
      // into a buffer kept per thread: a fresh [nw, 3] tensor every call (~300 KB at 25k atoms) came
      // back page-faulting from the allocator each time. Safe because the tensor lives only as long
      // as the one call's EmbeddingInputs, and one call makes one prefilter per thread.
      static thread_local std::vector<T> imaged_buffer;
      if (imaged_buffer.size() < (size_t)(3 * nw)) imaged_buffer.resize((size_t)(3 * nw));
      out.wide_imaged = at::from_blob(imaged_buffer.data(), {nw, 3}, wt.options());
      T* __restrict dst = out.wide_imaged.data_ptr<T>();
      const T* __restrict src = w;
      std::vector<unsigned char> inside(nw);
      unsigned char* __restrict in = inside.data();
      // both threads above ~16k sites (the loop is ~2 ns a site; a parallel region costs ~5 us)
#pragma omp parallel for simd schedule(static) if (nw > 16384)
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
void fused_backward_loop(const EmbeddingArgs<T>& a, const T* G, T* g_recv, T* g_src, T* g_q, T* g_w,
                         const embedding_charges::ChargeCells<T>* cached) {
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
  if (cached || embedding_charges::fast_path_applies(a)) {
    embedding_charges::backward<DOUT>(a, G, g_recv, g_src, g_q, g_w, cached);
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

// The forward's search (binned MM atoms, ML sites at their images) as tensors for the backward:
// {x, y, z, q of the kept MM atoms in cell order [4, k] (T); their source indices then the cell
// starts (int32); lo[3], cell side, cell counts[3], imaged flag (double); ML positions as the
// kernel saw them [n, 3]}. O(kept MM atoms + cells): nothing per pair.
template <typename T>
std::vector<at::Tensor> pack_search(const embedding_charges::ChargeCells<T>& c, const EmbeddingArgs<T>& a,
                                    const at::TensorOptions& opts) {
  const int64_t k = c.size();
  at::Tensor f = at::empty({4, k}, opts);
  T* fp = f.data_ptr<T>();
  std::copy(c.x.begin(), c.x.end(), fp);
  std::copy(c.y.begin(), c.y.end(), fp + k);
  std::copy(c.z.begin(), c.z.end(), fp + 2 * k);
  std::copy(c.q.begin(), c.q.end(), fp + 3 * k);
  at::Tensor idx = at::empty({k + (int64_t)c.start.size()}, opts.dtype(at::kInt));
  int* ip = idx.data_ptr<int>();
  std::copy(c.src.begin(), c.src.end(), ip);
  std::copy(c.start.begin(), c.start.end(), ip + k);
  at::Tensor meta = at::empty({8}, opts.dtype(at::kDouble));
  double* m = meta.data_ptr<double>();
  for (int d = 0; d < 3; ++d) {
    m[d] = (double)c.lo[d];
    m[4 + d] = (double)c.n[d];
  }
  m[3] = (double)c.h;
  m[7] = a.imaged ? 1.0 : 0.0;
  at::Tensor recv = at::empty({a.n_recv, 3}, opts);
  std::copy(a.recv_pos, a.recv_pos + 3 * (int64_t)a.n_recv, recv.data_ptr<T>());
  return {f, idx, meta, recv};
}

template <typename T>
embedding_charges::ChargeCells<T> unpack_search(const std::vector<at::Tensor>& s) {
  embedding_charges::ChargeCells<T> c;
  const int64_t k = s[0].size(1);
  const T* fp = s[0].data_ptr<T>();
  c.x.assign(fp, fp + k);
  c.y.assign(fp + k, fp + 2 * k);
  c.z.assign(fp + 2 * k, fp + 3 * k);
  c.q.assign(fp + 3 * k, fp + 4 * k);
  const int* ip = s[1].data_ptr<int>();
  c.src.assign(ip, ip + k);
  c.start.assign(ip + k, ip + s[1].numel());
  const double* m = s[2].data_ptr<double>();
  for (int d = 0; d < 3; ++d) {
    c.lo[d] = (T)m[d];
    c.n[d] = (int)m[4 + d];
  }
  c.h = (T)m[3];
  c.ih = T(1) / c.h;
  return c;
}

}  // namespace

std::vector<at::Tensor> embedding_charge_forward_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos,
                                                     const at::Tensor& charges, const c10::optional<at::Tensor>& recv_widths,
                                                     const c10::optional<at::Tensor>& box, const at::Tensor& exclusions,
                                                     double cutoff, double switch_width, double beta, int64_t deg_out) {
  check_embedding_args(recv_pos, src_pos, charges, recv_widths, c10::nullopt, box, exclusions, cutoff, switch_width,
                       beta, deg_out, 0);
  at::Tensor out = at::zeros({recv_pos.size(0), (int64_t)ncart((int)deg_out)}, recv_pos.options());
  std::vector<at::Tensor> result{out};
  AT_DISPATCH_FLOATING_TYPES(recv_pos.scalar_type(), "embedding_charge_forward_cpu", [&] {
    auto in = make_embedding_inputs<scalar_t>(recv_pos, src_pos, charges, recv_widths, c10::nullopt, box, exclusions,
                                              cutoff, switch_width, beta, (int)deg_out, 0);
    embedding_charges::ChargeCells<scalar_t> cells;
    if (embedding_charges::forward(in.args, out.data_ptr<scalar_t>(), &cells)) {
      for (auto& t : pack_search(cells, in.args, recv_pos.options())) result.push_back(t);
    } else if (!embedding_fixed(in.args, out.data_ptr<scalar_t>())) {
      dispatch_degree<EmbeddingLoop>(in.args.din + (int)deg_out, in.args, out.data_ptr<scalar_t>());
    }
  });
  return result;
}

std::vector<at::Tensor> embedding_charge_backward_cpu(const at::Tensor& recv_pos, const at::Tensor& src_pos,
                                                      const at::Tensor& charges, const c10::optional<at::Tensor>& recv_widths,
                                                      const c10::optional<at::Tensor>& box, const at::Tensor& exclusions,
                                                      double cutoff, double switch_width, double beta,
                                                      const at::Tensor& grad, bool want_widths,
                                                      const std::vector<at::Tensor>& search) {
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
    const bool cached = search.size() == 4;
    auto in = make_embedding_inputs<scalar_t>(recv_pos, src_pos, charges, recv_widths, c10::nullopt, box, exclusions,
                                              cutoff, switch_width, beta, dout + 1, 0, /*search=*/!cached);
    embedding_charges::ChargeCells<scalar_t> cells;
    if (cached) {
      TORCH_CHECK(search[0].scalar_type() == recv_pos.scalar_type() && search[3].size(0) == nr,
                  "embedding_charge_backward: the forward's search does not belong to these inputs");
      cells = unpack_search<scalar_t>(search);
      // the sites where the forward's kernel saw them (images about the ML region's centre); the
      // MM side is read from the cells (the raw positions only for the excluded pairs, imaged per pair)
      in.recv_pos = search[3];
      in.args.recv_pos = search[3].data_ptr<scalar_t>();
      in.args.imaged = search[2].data_ptr<double>()[7] != 0.0;
    }
    scalar_t* gw = g_w.defined() ? g_w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* G = Gc.data_ptr<scalar_t>();
    auto* gr = g_recv.data_ptr<scalar_t>();
    auto* gs = g_src.data_ptr<scalar_t>();
    auto* gq = g_q.data_ptr<scalar_t>();
    switch (dout) {
      case 0: fused_backward_loop<0>(in.args, G, gr, gs, gq, gw, cached ? &cells : nullptr); break;
      case 1: fused_backward_loop<1>(in.args, G, gr, gs, gq, gw, cached ? &cells : nullptr); break;
      case 2: fused_backward_loop<2>(in.args, G, gr, gs, gq, gw, cached ? &cells : nullptr); break;
      default: fused_backward_loop<3>(in.args, G, gr, gs, gq, gw, cached ? &cells : nullptr); break;
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
    if (embedding_charges::forward(in.args, out.data_ptr<scalar_t>())) return;
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
