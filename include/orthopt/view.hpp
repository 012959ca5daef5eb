// SPDX-License-Identifier: Apache-2.0
//
// The abstract tensor concept: non-owning strided views of a matrix and of a batch of same-shape
// matrices, and the traits through which any host framework's tensor type becomes a view without a copy.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <string>
#include <utility>
#include <algorithm>
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

// ---------------------------------------------------------------------------------------------------
// Overlapping memory. Usable views only (view_is_usable: positive strides on every dimension of extent
// > 1). None of these allocate; each is a few comparisons, plus an extended gcd when address ranges meet.
// ---------------------------------------------------------------------------------------------------
namespace detail {
/// [lo, hi): the bytes a usable view's elements lie in.
template <class T>
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const matrix_view<T>& v) noexcept {
  const auto base = reinterpret_cast<std::uintptr_t>(v.data);
  const index_t last = (v.rows > 1 ? (v.rows - 1) * v.row_stride : 0) + (v.cols > 1 ? (v.cols - 1) * v.col_stride : 0);
  return {base, base + static_cast<std::uintptr_t>(last + 1) * sizeof(T)};
}

inline bool ranges_meet(std::pair<std::uintptr_t, std::uintptr_t> a, std::pair<std::uintptr_t, std::uintptr_t> b) noexcept {
  return a.first < b.second && b.first < a.second;
}

__extension__ typedef __int128 wide_int;  // GCC and Clang; offsets times gcd coefficients exceed 64 bits

inline wide_int floor_div(wide_int a, wide_int b) noexcept {  // b > 0
  const wide_int q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline wide_int ceil_div(wide_int a, wide_int b) noexcept {  // b > 0
  const wide_int q = a / b;
  return (a % b != 0 && a > 0) ? q + 1 : q;
}

/// Whether x·r + y·c = d has an integer solution with x ∈ [x_lo, x_hi], y ∈ [y_lo, y_hi] (r, c ≥ 1).
/// The solutions are x = x0 + t·c/g, y = y0 − t·r/g (g = gcd(r, c)); the bounds give an interval of t.
inline bool lattice_has_point(index_t r, index_t c, wide_int d, wide_int x_lo, wide_int x_hi, wide_int y_lo,
                              wide_int y_hi) noexcept {
  // Extended Euclid: r·u + c·v = g.
  index_t old_r = r, cur_r = c, old_u = 1, cur_u = 0, old_v = 0, cur_v = 1;
  while (cur_r != 0) {
    const index_t q = old_r / cur_r;
    index_t t = old_r - q * cur_r;
    old_r = cur_r, cur_r = t;
    t = old_u - q * cur_u;
    old_u = cur_u, cur_u = t;
    t = old_v - q * cur_v;
    old_v = cur_v, cur_v = t;
  }
  const index_t g = old_r;
  if (d % g != 0) return false;
  const wide_int x0 = static_cast<wide_int>(old_u) * (d / g), y0 = static_cast<wide_int>(old_v) * (d / g);
  const wide_int step_x = c / g, step_y = r / g;
  const wide_int lo = std::max(ceil_div(x_lo - x0, step_x), ceil_div(y0 - y_hi, step_y));
  const wide_int hi = std::min(floor_div(x_hi - x0, step_x), floor_div(y0 - y_lo, step_y));
  return lo <= hi;
}
}  // namespace detail

/// True when two distinct index pairs of `v` address the same element (e.g. strides (1, 1)): exact.
template <class T>
bool view_overlaps_itself(const matrix_view<T>& v) noexcept {
  if (v.rows <= 1 || v.cols <= 1) return false;
  // x·r + y·c = 0 with (x, y) ≠ 0, |x| < rows, |y| < cols: the smallest solution is x = c/g, y = −r/g.
  index_t a = v.row_stride, b = v.col_stride;
  while (b != 0) {
    const index_t t = a % b;
    a = b, b = t;
  }
  return v.col_stride / a < v.rows && v.row_stride / a < v.cols;
}

/// True when the usable views `a` and `b` share an element. Exact when the address ranges meet and the
/// strides agree on every dimension both use (blocks of one matrix, row blocks of split_rows, the items
/// of a batch); when the strides differ (a view against the transpose of its own memory) any meeting of
/// ranges counts as overlap.
template <class T, class U>
bool views_overlap(const matrix_view<T>& a, const matrix_view<U>& b) noexcept {
  static_assert(sizeof(T) == sizeof(U), "views of one element type");
  const auto ra = detail::byte_range(a), rb = detail::byte_range(b);
  if (!detail::ranges_meet(ra, rb)) return false;
  const auto diff = static_cast<std::ptrdiff_t>(rb.first - ra.first);
  if (diff % static_cast<std::ptrdiff_t>(sizeof(T)) != 0) return true;  // elements that straddle each other
  // A dimension of extent 1 has no stride to speak of: take the other view's.
  const auto merged = [](index_t extent_a, index_t stride_a, index_t extent_b, index_t stride_b, index_t& out) {
    if (extent_a > 1 && extent_b > 1) {
      out = stride_a;
      return stride_a == stride_b;
    }
    out = extent_a > 1 ? stride_a : (extent_b > 1 ? stride_b : 1);
    return true;
  };
  index_t r = 1, c = 1;
  if (!merged(a.rows, a.row_stride, b.rows, b.row_stride, r) || !merged(a.cols, a.col_stride, b.cols, b.col_stride, c)) {
    return true;
  }
  // a(i1, j1) is b(i2, j2) when (i1 − i2)·r + (j1 − j2)·c = (b.data − a.data) in elements.
  const detail::wide_int d = diff / static_cast<std::ptrdiff_t>(sizeof(T));
  return detail::lattice_has_point(r, c, d, -(b.rows - 1), a.rows - 1, -(b.cols - 1), a.cols - 1);
}

/// The first pair (j, k), j < k, of items of a batch that share an element, or (−1, −1). O(count) exact
/// checks: items are the first one shifted by k·batch_stride, so item j against item k is item 0 against
/// item k − j.
template <class T>
std::pair<index_t, index_t> overlapping_batch_items(const batch_view<T>& b) noexcept {
  for (index_t k = 1; k < b.count; ++k) {
    if (views_overlap(b[0], b[k])) return {0, k};
  }
  return {-1, -1};
}

/// The first item pair (j of a, k of b) that shares an element, or (−1, −1); the whole batches' byte
/// ranges first, so batches in separate buffers cost two comparisons.
template <class T, class U>
std::pair<index_t, index_t> overlapping_items(const batch_view<T>& a, const batch_view<U>& b) noexcept {
  const auto whole = [](const auto& batch) {
    auto r = detail::byte_range(batch[0]);
    if (batch.count > 1) {
      const auto last = detail::byte_range(batch[batch.count - 1]);
      r = {std::min(r.first, last.first), std::max(r.second, last.second)};
    }
    return r;
  };
  if (a.count == 0 || b.count == 0 || !detail::ranges_meet(whole(a), whole(b))) return {-1, -1};
  for (index_t j = 0; j < a.count; ++j)
    for (index_t k = 0; k < b.count; ++k)
      if (views_overlap(a[j], b[k])) return {j, k};
  return {-1, -1};
}

/// "0x7f…: 24x40, strides (40, 1)": how a message names a view.
template <class T>
std::string describe_view(const matrix_view<T>& v) {
  char address[32];
  std::snprintf(address, sizeof(address), "%p", static_cast<const void*>(v.data));
  return std::string(address) + ": " + shape_string(v) + ", strides (" + std::to_string(v.row_stride) + ", " +
         std::to_string(v.col_stride) + ")";
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
