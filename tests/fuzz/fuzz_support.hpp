// Shared pieces of the libFuzzer targets (tests/fuzz/): reading shapes, strides and values from the
// fuzzer's bytes, and the failure policy.
//
// The policy: orthopt may refuse an input only with orthopt::error (value_error or shape_error). Any
// other exception escapes the target, which libFuzzer reports as a crash (std::terminate → abort), as
// it does for AddressSanitizer and UndefinedBehaviorSanitizer reports and for a failed ORTHOPT_FUZZ_CHECK.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/view.hpp"

/// A property the target checks; on failure it prints where and aborts (libFuzzer saves the input).
#define ORTHOPT_FUZZ_CHECK(cond)                                                         \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: ORTHOPT_FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (false)

namespace orthopt_fuzz {

using orthopt::index_t;

/// ORTHOPT_FUZZ_VERBOSE=1 prints what each input did (to replay a crash file and see why).
inline bool verbose() {
  static const bool on = std::getenv("ORTHOPT_FUZZ_VERBOSE") != nullptr;
  return on;
}

/// A value of T: a raw bit pattern (any NaN payload, Inf, denormal), one of the special values, or an
/// ordinary number of a fuzzed magnitude.
template <class T>
T value(FuzzedDataProvider& in) {
  using lim = std::numeric_limits<T>;
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: {
      unsigned char bytes[sizeof(T)] = {};
      const std::vector<std::uint8_t> got = in.ConsumeBytes<std::uint8_t>(sizeof(T));
      if (!got.empty()) std::memcpy(bytes, got.data(), got.size());
      T v;
      std::memcpy(&v, bytes, sizeof(T));
      return v;
    }
    case 1: {
      const T special[] = {T(0), -T(0), lim::quiet_NaN(), lim::infinity(), -lim::infinity(), lim::denorm_min(),
                           lim::min(), lim::max(), lim::lowest(), T(1e-30), T(3e38), T(-1), lim::epsilon()};
      return special[in.ConsumeIntegralInRange<std::size_t>(0, sizeof special / sizeof special[0] - 1)];
    }
    case 2: return static_cast<T>(in.ConsumeFloatingPointInRange<double>(-1.0, 1.0));
    default: {
      const double m = in.ConsumeFloatingPointInRange<double>(-1.0, 1.0);
      const int e = in.ConsumeIntegralInRange<int>(lim::min_exponent - lim::digits, lim::max_exponent);
      const double v = std::ldexp(m, e);
      // A double beyond T's range converts to T with undefined behaviour: say ±Inf explicitly.
      if (std::abs(v) > static_cast<double>(lim::max())) return v > 0 ? lim::infinity() : -lim::infinity();
      return static_cast<T>(v);
    }
  }
}

/// A double hyper-parameter: usually near `typical`, sometimes any bit pattern (NaN, Inf, negative, huge).
inline double parameter(FuzzedDataProvider& in, double typical) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return typical;
    case 1: return value<double>(in);
    case 2: return typical * in.ConsumeFloatingPointInRange<double>(0.0, 2.0);
    default: return 1.0 - std::ldexp(1.0, -in.ConsumeIntegralInRange<int>(0, 60));  // β near 1
  }
}

/// A strided rows×cols view (count matrices, batch stride fuzzed) placed inside `storage`, which it sizes
/// so that every element the view addresses lies inside it, whatever the signs of the strides: views
/// with zero or negative strides, or that overlap themselves, reach orthopt, which must refuse those it
/// cannot use. Extents stay small (the targets are about edge cases, not size).
template <class T>
struct strided {
  std::vector<T> storage;
  orthopt::matrix_view<T> view{};
  index_t count = 1;
  index_t batch_stride = 0;

  strided(FuzzedDataProvider& in, index_t rows, index_t cols, index_t n = 1) : count(n) {
    index_t rs = cols, cs = 1;  // row-major unless the bytes say otherwise
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: break;
      case 1: rs = 1, cs = rows; break;                                          // column-major
      case 2: rs = cols + in.ConsumeIntegralInRange<index_t>(1, 3), cs = 1; break;  // padded rows
      case 3: rs = 1, cs = rows + in.ConsumeIntegralInRange<index_t>(1, 3); break;  // padded columns
      case 4: rs = 2 * cols, cs = 2; break;                                     // every other element
      default:  // anything, including 0, negative and self-overlapping strides
        rs = in.ConsumeIntegralInRange<index_t>(-8, 8), cs = in.ConsumeIntegralInRange<index_t>(-8, 8);
    }
    const index_t extent = (rows > 0 ? rows - 1 : 0) * (rs < 0 ? -rs : rs) + (cols > 0 ? cols - 1 : 0) * (cs < 0 ? -cs : cs) + 1;
    batch_stride = count > 1 ? (in.ConsumeBool() ? extent : in.ConsumeIntegralInRange<index_t>(-extent, 2 * extent)) : 0;
    const index_t bs_abs = batch_stride < 0 ? -batch_stride : batch_stride;
    const index_t total = extent + (count - 1) * bs_abs + 1;
    storage.assign(static_cast<std::size_t>(3 * total + 8), T(0));
    // The first element sits in the middle third, so negative strides stay inside too (and a view
    // shifted by up to 4 elements).
    T* origin = storage.data() + total + 4;
    view = orthopt::matrix_view<T>(origin, rows, cols, rs, cs);
  }
  /// Fills every addressed element (repeated addresses get the last value) from the bytes.
  void fill(FuzzedDataProvider& in) {
    for (index_t k = 0; k < count; ++k)
      for (index_t i = 0; i < view.rows; ++i)
        for (index_t j = 0; j < view.cols; ++j) view.data[k * batch_stride + i * view.row_stride + j * view.col_stride] = value<T>(in);
  }
  orthopt::batch_view<T> batch() const { return {view, count, batch_stride}; }
  std::vector<T> copy() const { return storage; }
};

/// Byte equality (NaN payloads included, where == on the values would fail).
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// Whether a Newton–Schulz configuration is promised a finite result on finite input of type T: the
/// standard algorithm always; the Gram algorithm where the rounding growth of its run between restarts
/// stays below 0.01 of the precision (plans refuse growth·u ≥ 1; between 0.01 and 1 a nearly singular
/// input can still diverge: docs/errors-and-guarantees.md).
template <class T>
bool finite_result_promised(const orthopt::ns_config& c) {
  if (c.algorithm != orthopt::ns_algorithm::gram) return true;
  const double u = orthopt::storage_epsilon<T>::value / 2;
  return c.gram_rounding_growth(c.gram_restart_iteration(u)) * u < 0.01;
}

template <class T>
bool all_finite(const orthopt::matrix_view<T>& v) {
  for (index_t i = 0; i < v.rows; ++i)
    for (index_t j = 0; j < v.cols; ++j)
      if (!std::isfinite(static_cast<double>(v(i, j)))) return false;
  return true;
}

}  // namespace orthopt_fuzz
