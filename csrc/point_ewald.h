// Ewald real space of point charges on the CPU (point_ewald_cpu.cpp): the MM-charge fast path
// of multipole_field.
#pragma once
#include "realspace_impl.h"

namespace mlpolar {

// Potential derivatives of degree a.dout <= 2 at every site (site order) from point charges
// (no widths, a.din == 0) under Ewald splitting in a periodic box. Returns false, doing nothing,
// for any other case (the general loops handle it).
template <typename T>
bool point_ewald_field(const RealSpaceArgs<T>& a, T* out);

}  // namespace mlpolar
