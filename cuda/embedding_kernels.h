// Launcher of the CUDA embedding kernel, callable from C++ without CUDA or torch headers.
#pragma once
#include "embedding_impl.h"

namespace mlpolar {
namespace cuda {

// out [n_recv, ncart(dout)] must be zeroed; rows of the listed receivers are written. `stream` is a cudaStream_t.
template <typename T>
void launch_embedding(const EmbeddingArgs<T>& args, T* out, void* stream);

}  // namespace cuda
}  // namespace mlpolar
