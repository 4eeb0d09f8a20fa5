// Launchers of the CUDA kernels, callable from C++ without CUDA or torch headers.
// `stream` is a cudaStream_t. Errors are thrown as std::runtime_error.
#pragma once
#include "pme_impl.h"
#include "realspace_impl.h"

namespace mlpolar {
namespace cuda {

template <typename T>
void launch_field(const RealSpaceArgs<T>& args, int degree, T* out, void* stream);
template <typename T>
void launch_virial(const RealSpaceArgs<T>& args, int degree, T* per_site_out, void* stream);
template <typename T>
void launch_spread(const PmeGrid& grid, int n, const T* u, const T* coeffs, int deg, T* out_grid, void* stream);
template <typename T>
void launch_gather(const PmeGrid& grid, int n, const T* u, const T* in_grid, int deg, T* out, void* stream);

}  // namespace cuda
}  // namespace mlpolar
