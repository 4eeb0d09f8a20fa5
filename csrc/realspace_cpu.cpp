// CPU real-space kernels: OpenMP over sites; each site gathers from its partners.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "point_ewald.h"
#include "realspace_args.h"

namespace mlpolar {
namespace {

// Sums the per-thread copies (inside a parallel region): out[k] = sum_t buffers[t][k].
template <typename T>
void reduce_thread_copies(const std::vector<T>& buffers, int nthreads, int64_t size, T* out) {
#pragma omp for schedule(static)
  for (int64_t k = 0; k < size; ++k) {
    T acc = 0;
    for (int t = 0; t < nthreads; ++t) acc += buffers[(size_t)t * size + k];
    out[k] = acc;
  }
}

// Each pair once (half pairs), accumulated into per-thread copies of the output that are
// summed at the end: no atomics, and the sum order is fixed for a given thread count.
template <int L>
struct FieldLoop {
  template <typename T>
  static void run(const RealSpaceArgs<T>& a, T* out) {
    const int64_t size = (int64_t)a.n * ncart(a.dout);
    const int nthreads = omp_get_max_threads();
    std::vector<T> buffers((size_t)nthreads * size, T(0));
#pragma omp parallel
    {
      T* mine = buffers.data() + (int64_t)omp_get_thread_num() * size;
#pragma omp for schedule(dynamic, 32)
      for (int i = 0; i < a.n; ++i) {
        field_half_pairs<L>(a, i, mine);
        field_corrections_at_site<L>(a, i, mine + (int64_t)i * ncart(a.dout));
      }
      reduce_thread_copies(buffers, nthreads, size, out);
    }
  }
};

// The same with compile-time degrees, sites in cell order (neighbour cells stay in cache).
template <int DIN, int DOUT, typename T>
void field_loop_fixed(const RealSpaceArgs<T>& a, T* out) {
  const int64_t size = (int64_t)a.n * ncart(DOUT);
  const int nthreads = omp_get_max_threads();
  std::vector<T> buffers((size_t)nthreads * size, T(0));
#pragma omp parallel
  {
    T* mine = buffers.data() + (int64_t)omp_get_thread_num() * size;
#pragma omp for schedule(dynamic, 64)
    for (int k = 0; k < a.n; ++k) {
      field_half_pairs_fixed<DIN, DOUT>(a, k, mine);
      const int i = a.periodic ? a.cell_atoms[k] : k;
      field_corrections_at_site<DIN + DOUT>(a, i, mine + (int64_t)i * ncart(DOUT));
    }
    reduce_thread_copies(buffers, nthreads, size, out);
  }
}

template <typename T>
bool field_fixed(const RealSpaceArgs<T>& a, T* out) {
  if (point_ewald_field(a, out)) return true;
#define MLP_CASE(I, O)              \
  if (a.din == I && a.dout == O) {  \
    field_loop_fixed<I, O>(a, out); \
    return true;                    \
  }
  MLP_CASE(0, 0) MLP_CASE(0, 1) MLP_CASE(0, 2) MLP_CASE(0, 3)
  MLP_CASE(1, 0) MLP_CASE(1, 1) MLP_CASE(1, 2) MLP_CASE(1, 3)
  MLP_CASE(2, 0) MLP_CASE(2, 1) MLP_CASE(2, 2) MLP_CASE(2, 3)
#undef MLP_CASE
  return false;
}

template <int DIN1, int DOUT1, int DIN2, int DOUT2, typename T>
void field2_loop_fixed(const RealSpaceArgs<T>& a, RealSpaceArgs<T> a2, T* out1, T* out2) {
  const int64_t size1 = (int64_t)a.n * ncart(DOUT1), size2 = (int64_t)a.n * ncart(DOUT2);
  const int nthreads = omp_get_max_threads();
  std::vector<T> buffers((size_t)nthreads * (size1 + size2), T(0));
#pragma omp parallel
  {
    T* mine1 = buffers.data() + (int64_t)omp_get_thread_num() * (size1 + size2);
    T* mine2 = mine1 + size1;
#pragma omp for schedule(dynamic, 64)
    for (int k = 0; k < a.n; ++k) {
      field2_half_pairs_fixed<DIN1, DOUT1, DIN2, DOUT2>(a, a2.coeffs, k, mine1, mine2);
      const int i = a.periodic ? a.cell_atoms[k] : k;
      field_corrections_at_site<DIN1 + DOUT1>(a, i, mine1 + (int64_t)i * ncart(DOUT1));
      field_corrections_at_site<DIN2 + DOUT2>(a2, i, mine2 + (int64_t)i * ncart(DOUT2));
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < size1 + size2; ++k) {
      T acc = 0;
      for (int t = 0; t < nthreads; ++t) acc += buffers[(size_t)t * (size1 + size2) + k];
      if (k < size1)
        out1[k] = acc;
      else
        out2[k - size1] = acc;
    }
  }
}

template <typename T>
bool field2_fixed(const RealSpaceArgs<T>& a, const RealSpaceArgs<T>& a2, T* out1, T* out2) {
  // first-order backward of a field of degree din -> dout: (din -> dout + 1) and (dout -> din + 1)
#define MLP_CASE(I, O)                                         \
  if (a.din == I && a.dout == O + 1 && a2.din == O && a2.dout == I + 1) { \
    field2_loop_fixed<I, O + 1, O, I + 1>(a, a2, out1, out2);  \
    return true;                                               \
  }
  MLP_CASE(0, 0) MLP_CASE(0, 1) MLP_CASE(0, 2)
  MLP_CASE(1, 0) MLP_CASE(1, 1) MLP_CASE(1, 2)
  MLP_CASE(2, 0) MLP_CASE(2, 1) MLP_CASE(2, 2)
#undef MLP_CASE
  return false;
}

template <int L>
struct VirialLoop {
  template <typename T>
  static void run(const RealSpaceArgs<T>& a, T* out) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < a.n; ++i) virial_at_site<L>(a, i, out + (int64_t)i * 9);
  }
};

}  // namespace

at::Tensor multipole_field_cpu(const at::Tensor& positions, const at::Tensor& coeffs,
                               const c10::optional<at::Tensor>& widths, const c10::optional<at::Tensor>& box,
                               const at::Tensor& excl_ptr, const at::Tensor& excl_idx, double cutoff, double beta,
                               int64_t deg_out, bool include_self) {
  const int din = degree_of_columns(coeffs.size(1), "coeffs");
  check_field_args(positions, coeffs, widths, box, excl_ptr, excl_idx, din + deg_out);
  at::Tensor out = at::empty({positions.size(0), (int64_t)ncart((int)deg_out)}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "multipole_field_cpu", [&] {
    auto in = make_realspace_inputs<scalar_t>(positions, coeffs, widths, box, excl_ptr, excl_idx, cutoff, beta,
                                              (int)deg_out, include_self);
    if (!field_fixed(in.args, out.data_ptr<scalar_t>()))
      dispatch_degree<FieldLoop>(din + (int)deg_out, in.args, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> multipole_field2_cpu(const at::Tensor& positions, const at::Tensor& coeffs1,
                                                       const at::Tensor& coeffs2, const c10::optional<at::Tensor>& widths,
                                                       const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr,
                                                       const at::Tensor& excl_idx, double cutoff, double beta,
                                                       int64_t deg1, int64_t deg2, bool include_self) {
  const int din1 = degree_of_columns(coeffs1.size(1), "coeffs1"), din2 = degree_of_columns(coeffs2.size(1), "coeffs2");
  TORCH_CHECK(din1 + deg1 == din2 + deg2, "multipole_field2: both fields need the same total degree");
  check_field_args(positions, coeffs1, widths, box, excl_ptr, excl_idx, din1 + deg1);
  check_field_args(positions, coeffs2, widths, box, excl_ptr, excl_idx, din2 + deg2);
  at::Tensor out1 = at::empty({positions.size(0), (int64_t)ncart((int)deg1)}, positions.options());
  at::Tensor out2 = at::empty({positions.size(0), (int64_t)ncart((int)deg2)}, positions.options());
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "multipole_field2_cpu", [&] {
    auto in1 = make_realspace_inputs<scalar_t>(positions, coeffs1, widths, box, excl_ptr, excl_idx, cutoff, beta,
                                               (int)deg1, include_self);
    RealSpaceArgs<scalar_t> a2 = in1.args;
    at::Tensor c2 = coeffs2.contiguous();
    a2.coeffs = c2.data_ptr<scalar_t>();
    a2.din = din2;
    a2.dout = (int)deg2;
    done = field2_fixed(in1.args, a2, out1.data_ptr<scalar_t>(), out2.data_ptr<scalar_t>());
  });
  if (!done) {
    out1 = multipole_field_cpu(positions, coeffs1, widths, box, excl_ptr, excl_idx, cutoff, beta, deg1, include_self);
    out2 = multipole_field_cpu(positions, coeffs2, widths, box, excl_ptr, excl_idx, cutoff, beta, deg2, include_self);
  }
  return {out1, out2};
}

at::Tensor multipole_virial_cpu(const at::Tensor& positions, const at::Tensor& coeffs,
                                const c10::optional<at::Tensor>& widths, const c10::optional<at::Tensor>& box,
                                const at::Tensor& excl_ptr, const at::Tensor& excl_idx, double cutoff, double beta,
                                bool include_self, const at::Tensor& grad_field) {
  const int din = degree_of_columns(coeffs.size(1), "coeffs");
  const int dout = degree_of_columns(grad_field.size(1), "grad_field");
  check_field_args(positions, coeffs, widths, box, excl_ptr, excl_idx, din + dout + 1);
  at::Tensor per_site = at::empty({positions.size(0), 9}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "multipole_virial_cpu", [&] {
    auto in = make_realspace_inputs<scalar_t>(positions, coeffs, widths, box, excl_ptr, excl_idx, cutoff, beta, dout,
                                              include_self);
    in.grad = grad_field.contiguous();
    in.args.grad = in.grad.data_ptr<scalar_t>();
    dispatch_degree<VirialLoop>(din + dout + 1, in.args, per_site.data_ptr<scalar_t>());
  });
  return per_site.sum(0).view({3, 3});
}

}  // namespace mlpolar
