// SPDX-License-Identifier: Apache-2.0
//
// The abstract tensor concept: non-owning strided views of a matrix and of a batch of same-shape
// matrices, and the traits through which any host framework's tensor type becomes a view without a copy.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#include "orthopt/errors.hpp"

namespace orthopt {

using index_t = std::ptrdiff_t;

/// Host-and-device marker: shared headers compile under g++ and nvcc alike.
#if defined(__CUDACC__)
#define ORTHOPT_HD __host__ __device__
#else
#define ORTHOPT_HD
#endif

/// A non-owning view of a rows×cols matrix: element (i, j) lives at data[i*row_stride + j*col_stride].
/// Row-major storage has col_stride == 1, column-major has row_stride == 1; sub-blocks, transposes and
/// diagonals are views too. Strides are in elements and must be positive (a zero or negative stride is
/// rejected where a view is checked, see `check_view`). The view never allocates and never frees.
template <class T>
struct matrix_view {
  using value_type = std::remove_cv_t<T>;
  using element_type = T;

  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t row_stride = 0;
  index_t col_stride = 0;

  constexpr matrix_view() = default;
  constexpr matrix_view(T* p, index_t r, index_t c, index_t rs, index_t cs) noexcept
      : data(p), rows(r), cols(c), row_stride(rs), col_stride(cs) {}
  /// Views of non-const data convert to views of const data.
  template <class U>
    requires(std::is_const_v<T> && std::same_as<std::remove_cv_t<T>, U>)
  constexpr matrix_view(const matrix_view<U>& v) noexcept  // NOLINT(google-explicit-constructor)
      : data(v.data), rows(v.rows), cols(v.cols), row_stride(v.row_stride), col_stride(v.col_stride) {}

  ORTHOPT_HD constexpr T& operator()(index_t i, index_t j) const noexcept {
    return data[i * row_stride + j * col_stride];
  }
  [[nodiscard]] constexpr index_t size() const noexcept { return rows * cols; }
  [[nodiscard]] constexpr bool empty() const noexcept { return rows == 0 || cols == 0; }
  [[nodiscard]] constexpr bool is_row_major() const noexcept { return col_stride == 1; }
  [[nodiscard]] constexpr bool is_col_major() const noexcept { return row_stride == 1; }
  /// True when the elements fill one dense block of memory (either storage order, no gaps).
  [[nodiscard]] constexpr bool is_contiguous() const noexcept {
    return (col_stride == 1 && (row_stride == cols || rows <= 1)) ||
           (row_stride == 1 && (col_stride == rows || cols <= 1));
  }
  [[nodiscard]] constexpr matrix_view transposed() const noexcept {
    return {data, cols, rows, col_stride, row_stride};
  }
  [[nodiscard]] constexpr matrix_view block(index_t r0, index_t c0, index_t nr, index_t nc) const noexcept {
    return {data + r0 * row_stride + c0 * col_stride, nr, nc, row_stride, col_stride};
  }
  [[nodiscard]] constexpr matrix_view column(index_t j) const noexcept { return block(0, j, rows, 1); }
  [[nodiscard]] constexpr matrix_view row(index_t i) const noexcept { return block(i, 0, 1, cols); }
  /// The main diagonal as a min(rows, cols)×1 view (stride row_stride + col_stride).
  [[nodiscard]] constexpr matrix_view diagonal() const noexcept {
    const index_t n = rows < cols ? rows : cols;
    return {data, n, 1, row_stride + col_stride, 1};
  }
  [[nodiscard]] constexpr matrix_view<const value_type> as_const() const noexcept {
    return {data, rows, cols, row_stride, col_stride};
  }
};

template <class T>
using const_matrix_view = matrix_view<const T>;

/// A dense row-major view of `ptr`.
template <class T>
constexpr matrix_view<T> row_major_view(T* ptr, index_t rows, index_t cols) noexcept {
  return {ptr, rows, cols, cols, 1};
}
/// A dense column-major view of `ptr`.
template <class T>
constexpr matrix_view<T> col_major_view(T* ptr, index_t rows, index_t cols) noexcept {
  return {ptr, rows, cols, 1, rows};
}

/// A non-owning view of `count` same-shape matrices, the k-th starting `batch_stride` elements after the
/// (k−1)-th: a stacked [E, M, N] tensor (MoE experts) is one batch view.
template <class T>
struct batch_view {
  matrix_view<T> first{};
  index_t count = 0;
  index_t batch_stride = 0;

  constexpr batch_view() = default;
  constexpr batch_view(matrix_view<T> m, index_t n, index_t stride) noexcept
      : first(m), count(n), batch_stride(stride) {}
  template <class U>
    requires(std::is_const_v<T> && std::same_as<std::remove_cv_t<T>, U>)
  constexpr batch_view(const batch_view<U>& b) noexcept  // NOLINT(google-explicit-constructor)
      : first(b.first), count(b.count), batch_stride(b.batch_stride) {}

  [[nodiscard]] constexpr matrix_view<T> operator[](index_t k) const noexcept {
    matrix_view<T> m = first;
    m.data += k * batch_stride;
    return m;
  }
  [[nodiscard]] constexpr index_t rows() const noexcept { return first.rows; }
  [[nodiscard]] constexpr index_t cols() const noexcept { return first.cols; }
  [[nodiscard]] constexpr batch_view<const std::remove_cv_t<T>> as_const_batch() const noexcept {
    return {first.as_const(), count, batch_stride};
  }
};

/// A dense [count, rows, cols] row-major stack, as PyTorch and NumPy lay out a 3-D tensor.
template <class T>
constexpr batch_view<T> row_major_batch(T* ptr, index_t count, index_t rows, index_t cols) noexcept {
  return {row_major_view(ptr, rows, cols), count, rows * cols};
}

// ---------------------------------------------------------------------------------------------------
// The tensor concept. A host framework adapts its tensor type by specializing `tensor_traits`:
//
//   template <> struct orthopt::tensor_traits<my::Tensor> {
//     using scalar_type = float;
//     static float* data(my::Tensor& t);                        // and/or const float* data(const my::Tensor&)
//     static orthopt::index_t rows(const my::Tensor& t);         // and cols, row_stride, col_stride
//     ...
//   };
//
// after which `orthopt::make_view(t)` gives a matrix_view over the tensor's own memory.
// ---------------------------------------------------------------------------------------------------
template <class Tensor>
struct tensor_traits;  // no primary definition: a type is a tensor only through a specialization

namespace detail {
template <class Tensor>
using traits_of = tensor_traits<std::remove_cvref_t<Tensor>>;

template <class Tensor>
concept has_tensor_traits = requires { sizeof(traits_of<Tensor>); };

template <class Tensor>
concept traits_name_scalar_type = requires { typename traits_of<Tensor>::scalar_type; };

template <class Tensor>
concept traits_give_data = requires(Tensor& t) {
  { traits_of<Tensor>::data(t) } -> std::convertible_to<const typename traits_of<Tensor>::scalar_type*>;
  requires std::is_pointer_v<decltype(traits_of<Tensor>::data(t))>;
};

/// The element type a view of `Tensor` gets: const where the tensor (or its traits) only gives read access.
template <class Tensor>
using view_element_t = std::remove_pointer_t<decltype(traits_of<Tensor>::data(std::declval<Tensor&>()))>;

template <class Tensor>
concept traits_give_extents = requires(const Tensor& t) {
  { traits_of<Tensor>::rows(t) } -> std::convertible_to<index_t>;
  { traits_of<Tensor>::cols(t) } -> std::convertible_to<index_t>;
};

template <class Tensor>
concept traits_give_strides = requires(const Tensor& t) {
  { traits_of<Tensor>::row_stride(t) } -> std::convertible_to<index_t>;
  { traits_of<Tensor>::col_stride(t) } -> std::convertible_to<index_t>;
};
}  // namespace detail

/// A type whose memory orthopt can view as a strided matrix.
template <class Tensor>
concept matrix_like = detail::has_tensor_traits<Tensor> && detail::traits_name_scalar_type<Tensor> &&
                      detail::traits_give_data<Tensor> && detail::traits_give_extents<Tensor> &&
                      detail::traits_give_strides<Tensor>;

template <class T>
struct tensor_traits<matrix_view<T>> {
  using scalar_type = T;
  static T* data(const matrix_view<T>& v) noexcept { return v.data; }
  static index_t rows(const matrix_view<T>& v) noexcept { return v.rows; }
  static index_t cols(const matrix_view<T>& v) noexcept { return v.cols; }
  static index_t row_stride(const matrix_view<T>& v) noexcept { return v.row_stride; }
  static index_t col_stride(const matrix_view<T>& v) noexcept { return v.col_stride; }
};

/// The view of a host tensor, without copying. Each static_assert names what the type lacks.
template <class Tensor>
auto make_view(Tensor&& t) {
  // Each missing piece is reported once: later checks are skipped when an earlier one failed.
  static_assert(detail::has_tensor_traits<Tensor>,
                "orthopt::make_view: this type is not a tensor orthopt knows: specialize "
                "orthopt::tensor_traits<T> for it (see orthopt/view.hpp), or include the backend header "
                "that adapts it (orthopt/eigen.hpp for Eigen types)");
  if constexpr (detail::has_tensor_traits<Tensor>) {
    static_assert(detail::traits_name_scalar_type<Tensor>,
                  "orthopt::make_view: orthopt::tensor_traits<T> is missing `using scalar_type = ...;`");
    if constexpr (detail::traits_name_scalar_type<Tensor>) {
      static_assert(detail::traits_give_data<Tensor>,
                    "orthopt::make_view: orthopt::tensor_traits<T> is missing `static scalar_type* data(T&)` "
                    "(or `const scalar_type* data(const T&)` for a read-only tensor)");
      static_assert(detail::traits_give_extents<Tensor>,
                    "orthopt::make_view: orthopt::tensor_traits<T> is missing `static index_t rows(const T&)` "
                    "or `cols(const T&)`");
      static_assert(detail::traits_give_strides<Tensor>,
                    "orthopt::make_view: orthopt::tensor_traits<T> is missing `static index_t "
                    "row_stride(const T&)` or `col_stride(const T&)`");
      if constexpr (matrix_like<Tensor>) {
        using traits = detail::traits_of<Tensor>;
        return matrix_view<detail::view_element_t<Tensor>>(
            traits::data(t), static_cast<index_t>(traits::rows(t)), static_cast<index_t>(traits::cols(t)),
            static_cast<index_t>(traits::row_stride(t)), static_cast<index_t>(traits::col_stride(t)));
      }
    }
  }
}

/// The read-only view of a host tensor.
template <class Tensor>
auto make_const_view(Tensor&& t) {
  return make_view(std::forward<Tensor>(t)).as_const();
}

// ---------------------------------------------------------------------------------------------------
// Checks shared by every algorithm. They throw before anything is written.
// ---------------------------------------------------------------------------------------------------
namespace detail {
/// a·b·c for non-negative extents, or shape_error naming `what` when the product (or the bytes of that
/// many elements of `element_bytes` each) does not fit index_t: a size that would wrap around must
/// never reach an allocation.
inline index_t checked_extent_product(const char* who, const std::string& what, index_t a, index_t b, index_t c = 1,
                                      std::size_t element_bytes = 1) {
  index_t ab = 0, abc = 0, bytes = 0;
  const bool overflow = __builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
                        __builtin_mul_overflow(abc, static_cast<index_t>(element_bytes), &bytes);
  if (overflow) {
    throw shape_error(std::string(who) + ": " + what + " (" + std::to_string(a) + " x " + std::to_string(b) + " x " +
                      std::to_string(c) + " elements of " + std::to_string(element_bytes) +
                      " bytes) is larger than any buffer can be");
  }
  return abc;
}
}  // namespace detail

inline std::string shape_string(index_t rows, index_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}
template <class T>
std::string shape_string(const matrix_view<T>& v) {
  return shape_string(v.rows, v.cols);
}

/// True when check_view would accept `v` (cheap, builds no message).
template <class T>
constexpr bool view_is_usable(const matrix_view<T>& v) noexcept {
  return v.rows > 0 && v.cols > 0 && v.data != nullptr && (v.rows == 1 || v.row_stride >= 1) &&
         (v.cols == 1 || v.col_stride >= 1);
}

/// Rejects views that no algorithm can use: negative extents, null data, or strides that are not
/// positive. `what` names the argument in the message ("input", "output", ...).
template <class T>
void check_view(const matrix_view<T>& v, const char* caller, const char* what) {
  if (v.rows < 0 || v.cols < 0) {
    throw shape_error(std::string(caller) + ": " + what + " has negative extents " + shape_string(v));
  }
  if (v.empty()) {
    throw shape_error(std::string(caller) + ": " + what + " is an empty " + shape_string(v) +
                      " matrix; orthopt needs at least one row and one column");
  }
  if (v.data == nullptr) {
    throw shape_error(std::string(caller) + ": " + what + " has a null data pointer");
  }
  if ((v.rows > 1 && v.row_stride < 1) || (v.cols > 1 && v.col_stride < 1)) {
    throw shape_error(std::string(caller) + ": " + what + " has strides (" + std::to_string(v.row_stride) +
                      ", " + std::to_string(v.col_stride) + "); strides must be positive");
  }
}

/// Throws a shape_error naming both shapes unless `v` is rows×cols.
template <class T>
void check_shape(const matrix_view<T>& v, index_t rows, index_t cols, const char* caller, const char* what) {
  if (v.rows != rows || v.cols != cols) {
    throw shape_error(std::string(caller) + ": " + what + " is " + shape_string(v) + " but " +
                      shape_string(rows, cols) + " was expected");
  }
}

}  // namespace orthopt
