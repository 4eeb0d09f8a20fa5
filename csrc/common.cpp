// Argument checks, the reduced-box test and the cell list: one copy for every device.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "multipole_math.h"
#include "ops.h"
#include "pme_impl.h"

namespace mlpolar {

int degree_of_columns(int64_t ncols, const char* what) {
  for (int d = 0; d <= MAX_DEGREE; ++d)
    if (ncart(d) == ncols) return d;
  TORCH_CHECK(false, what, " has ", ncols, " columns; expected a packed Cartesian degree (1, 4, 10, 20, 35, ... columns)");
}

void check_field_args(const at::Tensor& positions, const at::Tensor& coeffs, const c10::optional<at::Tensor>& widths,
                      const c10::optional<at::Tensor>& box, const at::Tensor& excl_ptr, const at::Tensor& excl_idx,
                      int64_t deg_total) {
  TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must have shape [n, 3], got ", positions.sizes());
  const int64_t n = positions.size(0);
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) == n, "coeffs must have shape [n, ncart(d)] with n = ", n, ", got ",
              coeffs.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
              "positions must be float32 or float64");
  TORCH_CHECK(coeffs.scalar_type() == positions.scalar_type(), "coeffs must have the dtype of positions");
  TORCH_CHECK(coeffs.device() == positions.device(), "coeffs must be on the device of positions");
  TORCH_CHECK(deg_total <= MAX_DEGREE, "total derivative degree ", deg_total, " exceeds the supported ", MAX_DEGREE);
  if (widths.has_value()) {
    TORCH_CHECK(widths->dim() == 1 && widths->size(0) == n, "widths must have shape [n]");
    TORCH_CHECK(widths->scalar_type() == positions.scalar_type() && widths->device() == positions.device(),
                "widths must have the dtype and device of positions");
  }
  if (box.has_value()) {
    TORCH_CHECK(box->dim() == 2 && box->size(0) == 3 && box->size(1) == 3, "box must have shape [3, 3]");
  }
  TORCH_CHECK(excl_ptr.scalar_type() == at::kLong && excl_idx.scalar_type() == at::kLong,
              "exclusion tensors must be int64");
  TORCH_CHECK(excl_ptr.dim() == 1 && excl_ptr.size(0) == n + 1, "exclusion_ptr must have shape [n + 1]");
  TORCH_CHECK(excl_ptr.device() == positions.device() && excl_idx.device() == positions.device(),
              "exclusion tensors must be on the device of positions");
}

void check_pme_args(const at::Tensor& grid_positions, const at::Tensor& other, int64_t deg, int64_t order) {
  TORCH_CHECK(grid_positions.dim() == 2 && grid_positions.size(1) == 3, "grid_positions must have shape [n, 3]");
  TORCH_CHECK(grid_positions.scalar_type() == other.scalar_type() && grid_positions.device() == other.device(),
              "grid_positions and the coefficients/grid must share dtype and device");
  TORCH_CHECK(order >= 3 && order <= MAX_PME_ORDER, "PME spline order must be in [3, ", MAX_PME_ORDER, "], got ", order);
  TORCH_CHECK(deg < order && deg <= MAX_DEGREE, "derivative degree ", deg, " needs a B-spline order of at least ", deg + 1,
              " (order is ", order, ")");
}

std::array<double, 9> host_box(const at::Tensor& box, double cutoff) {
  at::Tensor b = box.detach().to(at::kCPU, at::kDouble).contiguous();
  std::array<double, 9> h;
  for (int k = 0; k < 9; ++k) h[k] = b.data_ptr<double>()[k];
  const double tol = 1e-6 * std::max({std::fabs(h[0]), std::fabs(h[4]), std::fabs(h[8])});
  TORCH_CHECK(h[0] > 0 && h[4] > 0 && h[8] > 0 && std::fabs(h[1]) <= tol && std::fabs(h[2]) <= tol &&
                  std::fabs(h[5]) <= tol,
              "box must be in OpenMM's reduced form: rows a = (ax,0,0), b = (bx,by,0), c = (cx,cy,cz) with ax, by, cz > 0");
  TORCH_CHECK(std::fabs(h[3]) <= 0.5 * h[0] + tol && std::fabs(h[6]) <= 0.5 * h[0] + tol &&
                  std::fabs(h[7]) <= 0.5 * h[4] + tol,
              "box must be reduced (|bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2); reduce it as OpenMM does "
              "(openmm.app.internal.unitcell.reducePeriodicBoxVectors)");
  const double half = 0.5 * std::min({h[0], h[4], h[8]});
  TORCH_CHECK(cutoff > 0 && cutoff <= half, "cutoff ", cutoff, " nm must be positive and at most half the smallest box width (",
              half, " nm); use a larger box or a smaller cutoff");
  return h;
}

CellList build_cell_list(const at::Tensor& positions, const at::Tensor& box, double cutoff) {
  auto h = host_box(box, cutoff);
  // Perpendicular widths of the cell: V / |b x c|, V / |c x a|, V / |a x b|.
  auto cross_norm = [&](int p, int q) {
    const double* u = &h[3 * p];
    const double* v = &h[3 * q];
    const double c0 = u[1] * v[2] - u[2] * v[1], c1 = u[2] * v[0] - u[0] * v[2], c2 = u[0] * v[1] - u[1] * v[0];
    return std::sqrt(c0 * c0 + c1 * c1 + c2 * c2);
  };
  const double volume = h[0] * h[4] * h[8];
  const double width[3] = {volume / cross_norm(1, 2), volume / cross_norm(2, 0), volume / cross_norm(0, 1)};
  CellList cl;
  for (int a = 0; a < 3; ++a)
    cl.ncell[a] = std::max(1, std::min(1024, (int)std::floor(width[a] * cl.reach / cutoff)));
  const int64_t total = (int64_t)cl.ncell[0] * cl.ncell[1] * cl.ncell[2];

  at::Tensor b = box.detach().to(positions.options().dtype(at::kDouble));
  at::Tensor frac = at::matmul(positions.detach().to(at::kDouble), at::inverse(b));
  frac = frac - at::floor(frac);
  frac = at::where(frac >= 1.0, frac - 1.0, frac);  // rounding of values just below an integer
  at::Tensor wrapped = at::matmul(frac, b);
  at::Tensor nc = at::tensor({(double)cl.ncell[0], (double)cl.ncell[1], (double)cl.ncell[2]}, b.options());
  at::Tensor idx = at::floor(frac * nc).to(at::kLong);
  idx = at::minimum(at::maximum(idx, at::zeros_like(idx)), nc.to(at::kLong) - 1);
  at::Tensor flat = (idx.select(1, 0) * cl.ncell[1] + idx.select(1, 1)) * cl.ncell[2] + idx.select(1, 2);
  at::Tensor order = at::argsort(flat);
  at::Tensor counts = at::bincount(flat, {}, total);
  at::Tensor start = at::zeros({total + 1}, flat.options());
  start.slice(0, 1).copy_(at::cumsum(counts, 0));
  cl.cell_of = flat.to(at::kInt).contiguous();
  cl.cell_start = start.to(at::kInt).contiguous();
  cl.cell_atoms = order.to(at::kInt).contiguous();
  cl.pos_wrapped = wrapped.to(positions.scalar_type()).contiguous();
  cl.cell_pos = cl.pos_wrapped.index_select(0, order).contiguous();
  return cl;
}

}  // namespace mlpolar
