// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
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

}  // namespace orthopt
