// SPDX-License-Identifier: Apache-2.0
//
// DLPack arrays (nanobind's ndarray: numpy, torch, JAX, CuPy ...) as orthopt views, zero-copy. Strides
// are taken as they are (any row and column stride, in elements); nothing is copied or converted: an
// array of the wrong element type or on the wrong device is refused, never stepped as a copy.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "orthopt/errors.hpp"
#include "orthopt/tensor_views.hpp"
#include "orthopt/view.hpp"

namespace orthopt::python {

namespace nb = nanobind;

/// A wrong element type, device or kind of argument (Python: orthopt.BadTypeError, a TypeError).
struct type_problem : std::exception {
  std::string message;
  explicit type_problem(std::string m) : message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

using array = nb::ndarray<>;               // writable (parameters, outputs)
using ro_array = nb::ndarray<nb::ro>;      // read-only (inputs, gradients)

/// The element types the module knows; dtype_name gives their numpy/torch names for messages.
enum class element { float32, float64, bfloat16, other };

template <class A>
element element_of(const A& a) {
  const auto d = a.dtype();
  if (d.lanes != 1) return element::other;
  if (d.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float)) {
    if (d.bits == 32) return element::float32;
    if (d.bits == 64) return element::float64;
  }
  if (d.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat) && d.bits == 16) return element::bfloat16;
  return element::other;
}

inline const char* element_name(element e) {
  switch (e) {
    case element::float32: return "float32";
    case element::float64: return "float64";
    case element::bfloat16: return "bfloat16";
    case element::other: break;
  }
  return "an unsupported element type";
}

template <class A>
std::string dtype_text(const A& a) {
  const auto d = a.dtype();
  const element e = element_of(a);
  if (e != element::other) return element_name(e);
  return "dtype (code " + std::to_string(d.code) + ", " + std::to_string(d.bits) + " bits, " + std::to_string(d.lanes) +
         " lanes)";
}

template <class A>
std::string shape_text(const A& a) {
  std::string s = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// The device kind of an array: "cpu" or "cuda" (others are refused by name).
template <class A>
bool on_cpu(const A& a) {
  return a.device_type() == nb::device::cpu::value;
}
template <class A>
bool on_cuda(const A& a) {
  return a.device_type() == nb::device::cuda::value;
}

/// The trailing two dimensions of an array with ndim ≥ 2 as a matrix view (row and column strides in
/// elements), at `base` (the address of the first element of this matrix).
template <class T, class A>
matrix_view<T> trailing_matrix(const A& a, T* base) {
  const std::size_t n = a.ndim();
  return matrix_view<T>(base, static_cast<index_t>(a.shape(n - 2)), static_cast<index_t>(a.shape(n - 1)),
                        static_cast<index_t>(a.stride(n - 2)), static_cast<index_t>(a.stride(n - 1)));
}

/// An array [..., m, n] as batches of m×n matrices: one batch_view per index of the dimensions before
/// the last three (the third-to-last dimension is each batch's count and stride), so any strides work.
/// ndim 2: one batch of one matrix. `visit(batch_view<T>)` is called for each.
template <class T, class A, class Visit>
void for_each_batch(const A& a, T* data, Visit&& visit) {
  const std::size_t n = a.ndim();
  if (n == 2) {
    visit(batch_view<T>(trailing_matrix<T>(a, data), 1, 0));
    return;
  }
  const std::size_t outer = n - 3;  // dimensions iterated here
  std::vector<std::int64_t> idx(outer, 0);
  for (std::size_t d = 0; d < outer; ++d)
    if (a.shape(d) == 0) return;
  if (a.shape(n - 3) == 0) return;
  while (true) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < outer; ++d) offset += idx[d] * a.stride(d);
    visit(batch_view<T>(trailing_matrix<T>(a, data + offset), static_cast<index_t>(a.shape(n - 3)),
                        static_cast<index_t>(a.stride(n - 3))));
    std::size_t d = outer;
    while (d > 0) {
      --d;
      if (++idx[d] < static_cast<std::int64_t>(a.shape(d))) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (outer == 0) return;
  }
}

/// How a parameter's array becomes the matrices an optimizer steps:
///   ndim 0 → 1×1; ndim 1 → 1×n (a vector: the router sends it to AdamW);
///   ndim 2 → the matrix, any strides; ndim ≥ 3 → d0 × (d1·…) (convolution filters, as
///   KellerJordan/Muon flattens them; the trailing dimensions must be one contiguous block), or with
///   `batch`, a batch of d0·… matrices of the last two dimensions (stacked experts);
///   `row_blocks` k > 1 splits the rows into k equal blocks updated independently (fused QKV).
template <class T, class A>
batch_view<T> param_matrices(const std::string& name, const A& a, T* data, bool batch, int row_blocks) {
  const std::size_t n = a.ndim();
  const auto fail = [&](const std::string& why) {
    throw shape_error("orthopt: parameter '" + name + "' of shape " + shape_text(a) + ": " + why);
  };
  for (std::size_t d = 0; d < n; ++d)
    if (a.shape(d) == 0) fail("an empty tensor has nothing to optimize");
  batch_view<T> view;
  if (n == 0) {
    view = as_batch(matrix_view<T>(data, 1, 1, 1, 1));
  } else if (n == 1) {
    view = as_batch(matrix_view<T>(data, 1, static_cast<index_t>(a.shape(0)), static_cast<index_t>(a.shape(0)),
                                   static_cast<index_t>(a.stride(0))));
  } else if (n == 2) {
    view = as_batch(trailing_matrix<T>(a, data));
  } else if (batch) {
    // Leading dimensions must collapse into one batch stride.
    for (std::size_t d = 0; d + 3 < n; ++d) {
      if (a.stride(d) != a.stride(d + 1) * static_cast<std::int64_t>(a.shape(d + 1))) {
        fail("batch=True needs the leading dimensions to be one strided run (make the tensor contiguous)");
      }
    }
    std::int64_t count = 1;
    for (std::size_t d = 0; d + 2 < n; ++d) count *= static_cast<std::int64_t>(a.shape(d));
    view = batch_view<T>(trailing_matrix<T>(a, data), static_cast<index_t>(count), static_cast<index_t>(a.stride(n - 3)));
  } else {
    // d0 × (d1·…·d_{n-1}): the trailing dimensions must be row-major contiguous.
    std::int64_t expected = 1, cols = 1;
    for (std::size_t d = n; d-- > 1;) {
      if (a.shape(d) != 1 && a.stride(d) != expected) {
        fail("flattening dimensions 1.. into columns needs them contiguous (make the tensor contiguous, or pass batch=True)");
      }
      expected *= static_cast<std::int64_t>(a.shape(d));
      cols *= static_cast<std::int64_t>(a.shape(d));
    }
    view = as_batch(matrix_view<T>(data, static_cast<index_t>(a.shape(0)), static_cast<index_t>(cols),
                                   static_cast<index_t>(a.stride(0)), 1));
  }
  if (row_blocks < 1) fail("row_blocks = " + std::to_string(row_blocks) + " must be >= 1");
  if (row_blocks > 1) {
    if (view.count != 1) fail("row_blocks applies to a single matrix, not a batch");
    if (view.rows() % row_blocks != 0) {
      fail("row_blocks = " + std::to_string(row_blocks) + " does not divide its " + std::to_string(view.rows()) + " rows");
    }
    view = split_rows(view.first, static_cast<index_t>(row_blocks));
  }
  return view;
}

}  // namespace orthopt::python
