// exp of non-positive arguments without libm, shared by the vectorised CPU loops
// (point_ewald_cpu.cpp, embedding_charges_cpu.h): a plain inline function the compiler can
// vectorise, where a call into libm would stop it.
#pragma once

#include <bit>
#include <cstdint>

namespace mlpolar {

// exp(x) for -80 <= x <= 0 without libm, so that the compiler can vectorise it: x = k ln2 + f
// with |f| <= ln2/2 (k rounded by the 1.5 * 2^52 shift), exp(f) by its Taylor series (to f^12 in
// double, relative error ~2e-16; to f^6 in float, ~1e-7), 2^k assembled in the exponent bits.
inline double exp_neg(double x) {
  constexpr double log2e = 1.4426950408889634, ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10;
  constexpr double shift = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * log2e + shift;
  const double k = t - shift;
  const double f = (x - k * ln2_hi) - k * ln2_lo;
  double p = 1.0 / 479001600.0;  // 1/12!
  p = p * f + 1.0 / 39916800.0;
  p = p * f + 1.0 / 3628800.0;
  p = p * f + 1.0 / 362880.0;
  p = p * f + 1.0 / 40320.0;
  p = p * f + 1.0 / 5040.0;
  p = p * f + 1.0 / 720.0;
  p = p * f + 1.0 / 120.0;
  p = p * f + 1.0 / 24.0;
  p = p * f + 1.0 / 6.0;
  p = p * f + 0.5;
  p = p * f + 1.0;
  p = p * f + 1.0;
  const uint64_t bits = std::bit_cast<uint64_t>(t);  // low mantissa bits hold k (two's complement)
  return p * std::bit_cast<double>((bits + 1023u) << 52);
}

inline float exp_neg(float x) {
  constexpr float log2e = 1.44269504f, ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  constexpr float shift = 12582912.0f;  // 1.5 * 2^23
  const float t = x * log2e + shift;
  const float k = t - shift;
  const float f = (x - k * ln2_hi) - k * ln2_lo;
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const uint32_t bits = std::bit_cast<uint32_t>(t);
  return p * std::bit_cast<float>((bits + 127u) << 23);
}

}  // namespace mlpolar
