// SPDX-License-Identifier: Apache-2.0
//
// Parameters of any shape as the matrices (or batches of matrices) the rules update: an N-D tensor as
// the d0 × (d1⋯dk) matrix Muon-family codebases orthogonalize, stacked tensors as a batch, a fused
// matrix split into row blocks. Every function returns a non-owning view of the caller's memory.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>

#include "orthopt/errors.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

namespace detail {
inline index_t product_of_dims(std::span<const index_t> dims, const char* who) {
  index_t n = 1;
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 1) {
      throw shape_error(std::string("orthopt::") + who + ": dimension " + std::to_string(i) + " is " +
                        std::to_string(dims[i]) + "; every dimension must be at least 1");
    }
    if (__builtin_mul_overflow(n, dims[i], &n)) {
      throw shape_error(std::string("orthopt::") + who + ": the product of the dimensions overflows at dimension " +
                        std::to_string(i) + " (" + std::to_string(dims[i]) + ")");
    }
  }
  return n;
}
}  // namespace detail

/// A dense row-major N-D tensor [d0, d1, …, dk] as the d0 × (d1⋯dk) matrix Muon-family codebases
/// orthogonalize: a conv filter [out, in, kh, kw] becomes out × (in·kh·kw). A 1-D tensor [n] is 1×n.
template <class T>
matrix_view<T> tensor_as_matrix(T* data, std::span<const index_t> dims) {
  if (dims.empty()) throw shape_error("orthopt::tensor_as_matrix: the dimension list is empty");
  const index_t total = detail::product_of_dims(dims, "tensor_as_matrix");
  if (dims.size() == 1) return row_major_view(data, 1, total);
  return row_major_view(data, dims[0], total / dims[0]);
}
template <class T>
matrix_view<T> tensor_as_matrix(T* data, std::initializer_list<index_t> dims) {
  return tensor_as_matrix(data, std::span<const index_t>(dims.begin(), dims.size()));
}

/// A dense row-major tensor [b0, …, bj, M, N] (at least 3-D) as a batch of b0⋯bj matrices M×N: stacked
/// MoE experts [E, M, N] are a batch of E matrices, each orthogonalized on its own.
template <class T>
batch_view<T> tensor_as_batch(T* data, std::span<const index_t> dims) {
  if (dims.size() < 3) {
    throw shape_error("orthopt::tensor_as_batch: a batch needs at least 3 dimensions [batch…, rows, cols], got " +
                      std::to_string(dims.size()));
  }
  const index_t total = detail::product_of_dims(dims, "tensor_as_batch");
  const index_t rows = dims[dims.size() - 2], cols = dims[dims.size() - 1];
  return row_major_batch(data, total / (rows * cols), rows, cols);
}
template <class T>
batch_view<T> tensor_as_batch(T* data, std::initializer_list<index_t> dims) {
  return tensor_as_batch(data, std::span<const index_t>(dims.begin(), dims.size()));
}

/// A matrix split into k blocks of rows/k consecutive rows, as a batch: a fused QKV projection
/// [3·d, d] split in 3, or per-head blocks, each orthogonalized alone (microsoft/dion's split). Works for
/// either storage order (the batch stride is rows/k row strides). Throws shape_error unless k ≥ 1
/// divides rows.
template <class T>
batch_view<T> split_rows(matrix_view<T> m, index_t k) {
  if (k < 1 || m.rows % k != 0) {
    throw shape_error("orthopt::split_rows: cannot split " + shape_string(m) + " into " + std::to_string(k) +
                      " row blocks; the row count must be a multiple of the block count");
  }
  const index_t block_rows = m.rows / k;
  return {m.block(0, 0, block_rows, m.cols), k, block_rows * m.row_stride};
}

/// One matrix as a batch of one (what step() takes for every parameter).
template <class T>
constexpr batch_view<T> as_batch(matrix_view<T> m) noexcept {
  return {m, 1, 0};
}
}  // namespace orthopt
