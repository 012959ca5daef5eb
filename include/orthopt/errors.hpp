// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace orthopt {

/// Every exception orthopt throws derives from one of these two standard types, so a host can catch
/// `std::invalid_argument` / `std::domain_error` without knowing orthopt, or `orthopt::error` for all.
/// A throwing call leaves its outputs, parameters and optimizer state untouched: checks run before any
/// write.
class error {
 public:
  virtual ~error() = default;
  [[nodiscard]] virtual const char* what() const noexcept = 0;
};

/// A view, plan or state whose shape does not fit the call (wrong extents, empty matrix, bad stride).
class shape_error : public std::invalid_argument, public error {
 public:
  explicit shape_error(const std::string& message) : std::invalid_argument(message) {}
  [[nodiscard]] const char* what() const noexcept override { return std::invalid_argument::what(); }
};

/// An input whose values cannot be processed (NaN or Inf entries, an invalid hyper-parameter).
class value_error : public std::domain_error, public error {
 public:
  explicit value_error(const std::string& message) : std::domain_error(message) {}
  [[nodiscard]] const char* what() const noexcept override { return std::domain_error::what(); }
};

namespace detail {
/// A number as an error message shows it: the fewest significant digits that read back as the same
/// double, as Python's repr writes it ("4.0000001", "1e-50", "0.1", "1.0", "nan", "inf"), so the
/// offending value is visible exactly (std::to_string prints six decimals: 4.0000001 as "4.000000",
/// 1e-9 as "0.000000").
inline std::string value_text(double v) {
  char buf[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (v != v || std::strtod(buf, nullptr) == v) break;  // NaN never compares equal: one pass
  }
  std::string text = buf;
  if (text.find_first_not_of("-0123456789") == std::string::npos) text += ".0";  // an integral value
  return text;
}
}  // namespace detail

}  // namespace orthopt
