// Builds the raw-pointer argument block of the embedding kernels from tensors (any device):
// the receiver-keyed exclusion CSR and the ML-centric prefilter, both with device-agnostic torch ops.
#pragma once
#include <ATen/ATen.h>

#include "embedding_impl.h"
#include "ops.h"

namespace mlpolar {

// Keeps the tensors that the raw pointers in `args` point into alive.
template <typename T>
struct EmbeddingInputs {
  EmbeddingArgs<T> args;
  at::Tensor recv_pos, src_pos, coeffs, recv_widths, src_widths, excl_ptr, excl_idx, recv_list, src_list;
};

// Lattice vector n_a a + n_b b + n_c c (integers n) that the minimum image of d [n, 3] (double)
// subtracts in a reduced box, found as minimum_image() does per pair.
inline at::Tensor image_shift_rows(const at::Tensor& d, const std::array<double, 9>& h) {
  at::Tensor x = d.select(1, 0), y = d.select(1, 1), z = d.select(1, 2);
  at::Tensor sc = at::round(z / h[8]);
  at::Tensor sb = at::round((y - sc * h[7]) / h[4]);
  at::Tensor sa = at::round((x - sc * h[6] - sb * h[3]) / h[0]);
  return at::stack({sa * h[0] + sb * h[3] + sc * h[6], sb * h[4] + sc * h[7], sc * h[8]}, 1);
}

inline at::Tensor minimum_image_rows(const at::Tensor& d, const std::array<double, 9>& h) {
  return d - image_shift_rows(d, h);
}

struct Prefilter {
  at::Tensor list;    // int32 indices of the kept sites of the wide set
  at::Tensor centre;  // [1, 3] double, centre of the compact set (when `imaged`)
  bool imaged = false;
  // CPU: the wide set's positions with the kept rows already at their images about `centre`
  // (undefined: image them with imaged_about)
  at::Tensor wide_imaged;
};

// Indices (int32) of the sites of `wide` that can be within `cutoff` of some site of `compact`:
// those within R + cutoff of the compact set's centroid, R its radius. Everything when the
// compact set is not compact enough for minimum images about its centroid to be unique; when
// they are unique (reach <= half the box), every pair inside the cutoff is the difference of the
// two sites' images about the centre, and `imaged` says so.
Prefilter prefilter_cpu(const at::Tensor& compact, const at::Tensor& wide, const c10::optional<std::array<double, 9>>& h,
                        double cutoff, const c10::optional<at::Tensor>& also);

inline Prefilter prefilter(const at::Tensor& compact, const at::Tensor& wide, const c10::optional<std::array<double, 9>>& h,
                           double cutoff, const c10::optional<at::Tensor>& also) {
  if (wide.device().is_cpu()) return prefilter_cpu(compact, wide, h, cutoff, also);
  Prefilter out;
  const auto idx_opts = wide.options().dtype(at::kInt);
  if (wide.size(0) == 0 || compact.size(0) == 0) {
    out.list = (also.has_value() && wide.size(0) > 0) ? at::nonzero(*also).view({-1}).to(at::kInt).contiguous()
                                                      : at::empty({0}, idx_opts);
    return out;
  }
  at::Tensor c = compact.detach().to(at::kDouble), w = wide.detach().to(at::kDouble);
  auto image = [&](const at::Tensor& d) { return h.has_value() ? minimum_image_rows(d, *h) : d; };
  at::Tensor c0 = c.slice(0, 0, 1);
  at::Tensor centre = c0 + image(c - c0).mean(0, true);
  at::Tensor radius = image(c - centre).norm(2, 1).max();
  const double reach = radius.item<double>() + cutoff;
  if (h.has_value() && reach > 0.5 * std::min({(*h)[0], (*h)[4], (*h)[8]})) {
    out.list = at::arange(wide.size(0), idx_opts);
    return out;
  }
  at::Tensor mask = image(w - centre).norm(2, 1) < reach * (1 + 1e-9) + 1e-9;
  if (also.has_value()) mask = at::logical_or(mask, *also);
  out.list = at::nonzero(mask).view({-1}).to(at::kInt).contiguous();
  out.centre = centre;
  out.imaged = h.has_value();
  return out;
}

// Positions moved to their minimum images about `centre` (dtype of `pos`).
at::Tensor imaged_about_cpu(const at::Tensor& pos, const at::Tensor& centre, const std::array<double, 9>& h);

inline at::Tensor imaged_about(const at::Tensor& pos, const at::Tensor& centre, const std::array<double, 9>& h) {
  if (pos.device().is_cpu()) return imaged_about_cpu(pos, centre, h);
  // whole lattice vectors off the original positions: a site already at its image stays bit-identical
  at::Tensor shift = image_shift_rows(pos.detach().to(at::kDouble) - centre, h);
  return (pos.detach() - shift.to(pos.scalar_type())).contiguous();
}

template <typename T>
EmbeddingInputs<T> make_embedding_inputs(const at::Tensor& recv_pos, const at::Tensor& src_pos, const at::Tensor& coeffs,
                                         const c10::optional<at::Tensor>& recv_widths,
                                         const c10::optional<at::Tensor>& src_widths, const c10::optional<at::Tensor>& box,
                                         const at::Tensor& exclusions, double cutoff, double switch_width, double beta,
                                         int dout, int width_derivative = 0, bool search = true) {
  EmbeddingInputs<T> in;
  EmbeddingArgs<T>& a = in.args;
  const int64_t nr = recv_pos.size(0), ns = src_pos.size(0);
  in.recv_pos = recv_pos.contiguous();
  in.src_pos = src_pos.contiguous();
  in.coeffs = coeffs.contiguous();
  a.n_recv = (int)nr;
  a.n_src = (int)ns;
  a.recv_pos = static_cast<const T*>(in.recv_pos.data_ptr());
  a.src_pos = static_cast<const T*>(in.src_pos.data_ptr());
  a.coeffs = static_cast<const T*>(in.coeffs.data_ptr());
  a.din = degree_of_columns(coeffs.size(1), "coeffs");
  a.dout = dout;
  a.width_derivative = width_derivative;
  if (recv_widths.has_value()) {
    in.recv_widths = recv_widths->contiguous();
    a.recv_widths = static_cast<const T*>(in.recv_widths.data_ptr());
  }
  if (src_widths.has_value()) {
    in.src_widths = src_widths->contiguous();
    a.src_widths = static_cast<const T*>(in.src_widths.data_ptr());
  }
  a.cutoff = (T)cutoff;
  a.cutoff2 = (T)(cutoff * cutoff);
  a.switch_width = (T)switch_width;
  a.switch_on = (T)(cutoff - switch_width);
  a.beta = (T)beta;
  c10::optional<std::array<double, 9>> h;
  if (box.has_value()) {
    h = host_box(*box, cutoff);
    a.periodic = true;
    for (int k = 0; k < 9; ++k) a.box[k] = (T)(*h)[k];
  }
  // exclusion CSR keyed by receiver (duplicates removed)
  const auto long_opts = recv_pos.options().dtype(at::kLong);
  at::Tensor pairs = exclusions.to(long_opts);
  in.excl_ptr = at::zeros({nr + 1}, long_opts);
  if (pairs.size(0) > 0) {
    at::Tensor key = std::get<0>(at::_unique(pairs.select(1, 0) * ns + pairs.select(1, 1), /*sorted=*/true));
    at::Tensor ri = at::floor_divide(key, ns);
    in.excl_idx = (key - ri * ns).contiguous();
    in.excl_ptr.slice(0, 1).copy_(at::cumsum(at::bincount(ri, {}, nr), 0));
  } else {
    in.excl_idx = at::zeros({1}, long_opts);
  }
  a.excl_ptr = static_cast<const int64_t*>(in.excl_ptr.data_ptr());
  a.excl_idx = static_cast<const int64_t*>(in.excl_idx.data_ptr());
  // ML-centric search: the compact (smaller) set selects the sites of the other within reach
  // (search = false: the caller brings the forward's search; every receiver listed, no source)
  Prefilter pf;
  if (!search) {
    in.recv_list = at::arange(nr, recv_pos.options().dtype(at::kInt));
    in.src_list = at::empty({0}, src_pos.options().dtype(at::kInt));
  } else if (nr <= ns) {
    in.recv_list = at::arange(nr, recv_pos.options().dtype(at::kInt));
    pf = prefilter(recv_pos, src_pos, h, cutoff, c10::nullopt);
    in.src_list = pf.list;
  } else {
    // receivers with exclusions must be visited for their Ewald corrections
    at::Tensor has_excl = (in.excl_ptr.slice(0, 1) - in.excl_ptr.slice(0, 0, nr)) > 0;
    pf = prefilter(src_pos, recv_pos, h, cutoff, has_excl);
    in.recv_list = pf.list;
    in.src_list = at::arange(ns, src_pos.options().dtype(at::kInt));
  }
  if (pf.imaged) {
    const bool src_wide = nr <= ns;
    in.recv_pos = (!src_wide && pf.wide_imaged.defined()) ? pf.wide_imaged : imaged_about(recv_pos, pf.centre, *h);
    in.src_pos = (src_wide && pf.wide_imaged.defined()) ? pf.wide_imaged : imaged_about(src_pos, pf.centre, *h);
    a.recv_pos = static_cast<const T*>(in.recv_pos.data_ptr());
    a.src_pos = static_cast<const T*>(in.src_pos.data_ptr());
    a.imaged = true;
  }
  a.recv_list = in.recv_list.numel() ? static_cast<const int*>(in.recv_list.data_ptr()) : nullptr;
  a.n_recv_list = (int)in.recv_list.numel();
  a.src_list = in.src_list.numel() ? static_cast<const int*>(in.src_list.data_ptr()) : nullptr;
  a.n_src_list = (int)in.src_list.numel();
  return in;
}

}  // namespace mlpolar
