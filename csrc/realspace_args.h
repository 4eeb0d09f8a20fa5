// Builds the raw-pointer argument block of the real-space kernels from tensors (any device).
#pragma once
#include <ATen/ATen.h>

#include "ops.h"
#include "realspace_impl.h"

namespace mlpolar {

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Keeps the tensors that the raw pointers in `args` point into alive.
template <typename T>
struct RealSpaceInputs {
  RealSpaceArgs<T> args;
  at::Tensor pos, coeffs, widths, grad, excl_ptr, excl_idx;
  CellList cells;
};

template <typename T>
RealSpaceInputs<T> make_realspace_inputs(const at::Tensor& positions, const at::Tensor& coeffs,
                                         const c10::optional<at::Tensor>& widths, const c10::optional<at::Tensor>& box,
                                         const at::Tensor& excl_ptr, const at::Tensor& excl_idx, double cutoff,
                                         double beta, int dout, bool include_self) {
  RealSpaceInputs<T> in;
  RealSpaceArgs<T>& a = in.args;
  in.pos = positions.contiguous();
  in.coeffs = coeffs.contiguous();
  in.excl_ptr = excl_ptr.contiguous();
  in.excl_idx = excl_idx.contiguous();
  a.n = (int)positions.size(0);
  a.pos = ptr<T>(in.pos);
  a.coeffs = ptr<T>(in.coeffs);
  a.din = degree_of_columns(coeffs.size(1), "coeffs");
  a.dout = dout;
  if (widths.has_value()) {
    in.widths = widths->contiguous();
    a.widths = ptr<T>(in.widths);
  }
  a.beta = (T)beta;
  a.include_self = include_self;
  a.excl_ptr = ptr<int64_t>(in.excl_ptr);
  a.excl_idx = in.excl_idx.numel() ? ptr<int64_t>(in.excl_idx) : nullptr;
  if (box.has_value()) {
    auto h = host_box(*box, cutoff);
    a.periodic = true;
    for (int k = 0; k < 9; ++k) a.box[k] = (T)h[k];
    a.cutoff2 = (T)(cutoff * cutoff);
    in.cells = build_cell_list(positions, *box, cutoff);
    a.cell_of = ptr<int>(in.cells.cell_of);
    a.cell_start = ptr<int>(in.cells.cell_start);
    a.cell_atoms = ptr<int>(in.cells.cell_atoms);
    a.pos_wrapped = ptr<T>(in.cells.pos_wrapped);
    a.cell_pos = ptr<T>(in.cells.cell_pos);
    a.reach = in.cells.reach;
    for (int k = 0; k < 3; ++k) a.ncell[k] = in.cells.ncell[k];
  } else {
    TORCH_CHECK(beta == 0, "an Ewald splitting parameter needs a periodic box");
  }
  return in;
}

// Calls F<L>::run(args...) for the runtime degree L in [0, MAX_DEGREE].
template <template <int> class F, typename... Args>
void dispatch_degree(int L, Args&&... args) {
  switch (L) {
    case 0: F<0>::run(args...); break;
    case 1: F<1>::run(args...); break;
    case 2: F<2>::run(args...); break;
    case 3: F<3>::run(args...); break;
    case 4: F<4>::run(args...); break;
    case 5: F<5>::run(args...); break;
    case 6: F<6>::run(args...); break;
    case 7: F<7>::run(args...); break;
    case 8: F<8>::run(args...); break;
    default: TORCH_CHECK(false, "derivative degree ", L, " is above the supported ", MAX_DEGREE);
  }
}

}  // namespace mlpolar
