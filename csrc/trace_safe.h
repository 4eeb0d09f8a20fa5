// Helpers that keep the C++ autograd of the operators traceable by torch.compile / torch.export.
//
// Under tracing (AOTAutograd, inductor, opcheck's test_aot_dispatch_dynamic) the backward runs on
// FakeTensors wrapped by functionalization: sizes may be symbolic (numel()/size() throw), there is no
// data (item(), data_ptr() and at::tensor(std::vector), which copies into the new tensor's memory, all
// fail), and a kernel called directly instead of through the dispatcher sees no fake kernel. Eager
// calls keep the cheap paths; traced calls take the dispatched ones.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <vector>

namespace mlpolar {

// True when a Python tensor subclass or dispatch mode (fake tensors, functionalization, proxy
// tracing) handles the call, or when `t` has symbolic sizes: read no data, call only dispatched ops.
inline bool is_traced(const at::Tensor& t) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return true;
  if (!t.defined()) return false;
  return t.key_set().has(c10::DispatchKey::Python) || t.unsafeGetTensorImpl()->has_symbolic_sizes_strides();
}

// numel() > 0 for tensors whose sizes may be symbolic (absent optionals travel as empty tensors).
inline bool is_present(const at::Tensor& t) { return t.defined() && t.sym_numel() != 0; }

// size(dim) as a plain integer; under symbolic shapes this specialises the graph on it (guard), as
// it must for column counts that fix the derivative degree.
inline int64_t static_size(const at::Tensor& t, int64_t dim) {
  return t.sym_size(dim).guard_int(__FILE__, __LINE__);
}

// A small 1-D constant with `options`' dtype and device. Eager: one tensor from the host values.
// Traced: built from dispatched factory ops (one full() per entry, then cat), which FakeTensors and
// the graph capture record as constants (inductor folds them).
template <typename T>
at::Tensor small_constant(const std::vector<T>& values, const at::TensorOptions& options, bool traced) {
  if (!traced) return at::tensor(values, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value)).to(options);
  std::vector<at::Tensor> parts;
  parts.reserve(values.size());
  for (const T& v : values) parts.push_back(at::full({1}, v, options));
  return at::cat(parts);
}

}  // namespace mlpolar
