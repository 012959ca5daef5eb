// SPDX-License-Identifier: Apache-2.0
//
// Adapting libtorch tensors to orthopt's tensor concept (orthopt/view.hpp), so that orthopt's rules
// read and write a torch model's own parameter and gradient memory: no copies, no staging buffers.
//
// A torch tensor's element type is a run-time property while orthopt::tensor_traits names one scalar
// type, so the adapter is a typed handle: `torch_matrix<float>(t)` checks once that `t` holds floats on
// the CPU in strided layout, then shares `t`'s storage (at::Tensor is a reference-counted handle; the
// elements are never copied). Its traits give orthopt the data pointer, extents and strides:
//
//   auto w = orthopt::make_view(torch_matrix<float>(linear->weight));   // matrix_view<float> over it
//
// Shapes, as orthopt sees them:
//   2-D [rows, cols]     rows x cols with the tensor's own strides (transposed or sliced views work)
//   1-D [n]              1 x n (biases, norm gains), with the tensor's stride
//   N-D [d0, d1, ...]    d0 x (d1*d2*...), the usual view of a conv kernel; the tensor must be contiguous
// The tensor must live where the backend that will read it works: on the CPU by default (the Eigen and
// BLAS backends read host memory), or on CUDA devices with `torch_matrix<float>(t, at::kCUDA)` (the CUDA
// backend, in a .cu file or behind a host-only interface as examples/gpt/trainer.hpp does). A tensor on
// another device, 0-D tensors, sparse tensors and other element types are refused with
// std::invalid_argument naming what was found.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <c10/core/ScalarType.h>

#include "orthopt/view.hpp"

template <class T>
class torch_matrix {
 public:
  explicit torch_matrix(at::Tensor tensor, at::DeviceType device = at::kCPU) : tensor_(std::move(tensor)) {
    const at::ScalarType expected = c10::CppTypeToScalarType<T>::value;
    if (!tensor_.defined()) throw std::invalid_argument("torch_matrix: the tensor is undefined (no .grad() yet?)");
    if (tensor_.scalar_type() != expected) {
      throw std::invalid_argument(std::string("torch_matrix: the tensor holds ") + c10::toString(tensor_.scalar_type()) +
                                  ", expected " + c10::toString(expected));
    }
    if (tensor_.device().type() != device) {
      throw std::invalid_argument("torch_matrix: the tensor lives on " + tensor_.device().str() + ", expected " +
                                  c10::DeviceTypeName(device, /*lower_case=*/true) +
                                  (device == at::kCPU ? " (the Eigen and BLAS backends read host memory)" : ""));
    }
    if (tensor_.layout() != at::kStrided) throw std::invalid_argument("torch_matrix: the tensor is not strided (sparse?)");
    if (tensor_.dim() == 0) throw std::invalid_argument("torch_matrix: the tensor is 0-dimensional (a scalar)");
    if (tensor_.dim() > 2 && !tensor_.is_contiguous()) {
      throw std::invalid_argument("torch_matrix: a " + std::to_string(tensor_.dim()) +
                                  "-D tensor is viewed as d0 x (d1*...) only when contiguous");
    }
  }

  [[nodiscard]] const at::Tensor& tensor() const noexcept { return tensor_; }
  [[nodiscard]] T* data() const { return tensor_.data_ptr<T>(); }
  [[nodiscard]] std::int64_t rows() const { return tensor_.dim() == 1 ? 1 : tensor_.size(0); }
  [[nodiscard]] std::int64_t cols() const {
    if (tensor_.dim() == 1) return tensor_.size(0);
    if (tensor_.dim() == 2) return tensor_.size(1);
    return tensor_.size(0) == 0 ? 0 : tensor_.numel() / tensor_.size(0);
  }
  [[nodiscard]] std::int64_t row_stride() const {
    if (tensor_.dim() == 1) return cols() * tensor_.stride(0);  // one row: any positive stride will do
    return tensor_.stride(0);
  }
  [[nodiscard]] std::int64_t col_stride() const {
    if (tensor_.dim() == 1) return tensor_.stride(0);
    if (tensor_.dim() == 2) return tensor_.stride(1);
    return 1;  // contiguous N-D: the trailing dimensions flatten into unit-stride columns
  }

 private:
  at::Tensor tensor_;
};

template <class T>
struct orthopt::tensor_traits<torch_matrix<T>> {
  using scalar_type = T;
  static T* data(const torch_matrix<T>& m) { return m.data(); }
  static orthopt::index_t rows(const torch_matrix<T>& m) { return m.rows(); }
  static orthopt::index_t cols(const torch_matrix<T>& m) { return m.cols(); }
  static orthopt::index_t row_stride(const torch_matrix<T>& m) { return m.row_stride(); }
  static orthopt::index_t col_stride(const torch_matrix<T>& m) { return m.col_stride(); }
};
