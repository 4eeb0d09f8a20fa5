// CPU real-space kernels: OpenMP over sites; each site gathers from its partners.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <omp.h>

#include <vector>

#include "ops.h"
#include "realspace_args.h"

namespace mlpolar {
namespace {

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
#pragma omp for schedule(static)
      for (int64_t k = 0; k < size; ++k) {
        T acc = 0;
        for (int t = 0; t < nthreads; ++t) acc += buffers[(size_t)t * size + k];
        out[k] = acc;
      }
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
#pragma omp for schedule(static)
    for (int64_t k = 0; k < size; ++k) {
      T acc = 0;
      for (int t = 0; t < nthreads; ++t) acc += buffers[(size_t)t * size + k];
      out[k] = acc;
    }
  }
}

template <typename T>
bool field_fixed(const RealSpaceArgs<T>& a, T* out) {
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
