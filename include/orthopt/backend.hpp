// SPDX-License-Identifier: Apache-2.0
//
// The backend concept: the small set of primitives every orthopt algorithm is written against.
//
// A backend is a copyable handle type (the tag selects the implementation at compile time) whose
// primitives are free functions found by argument-dependent lookup:
//
//   gemm(be, alpha, A, trans_a, B, trans_b, beta, C)   C ← α·op(A)·op(B) + β·C        (β = 0 ignores C)
//   syrk(be, alpha, A, beta, C)                        C ← α·A·Aᵀ + β·C, both triangles written; as in
//                                                      BLAS, C must be symmetric when β ≠ 0 (one triangle is read)
//   frobenius_norm(be, X, out)                         out[0] ← ‖X‖_F  (a double in backend memory)
//   column_norms(be, X, kind, out)                     out[j] ← ‖X[:,j]‖₁ or ‖X[:,j]‖₂  (doubles)
//   transform(be, X, Y, f)                             Y(i,j) ← f(X(i,j))            (Y may be X)
//   transform(be, X, Y, Z, f)                          Z(i,j) ← f(X(i,j), Y(i,j))    (Z may be X or Y)
//   for_each_entry(be, f, X0, X1, …)                   f(X0(i,j), X1(i,j), …) with references: several
//                                                      element-wise stages in one pass (a mutable view's
//                                                      entries may be written; no partial overlap)
//   scale_columns(be, d, X)                            X(:,j) ← d[j]·X(:,j)          (d: doubles)
//   run_scalar(be, f)                                  f() once, where backend memory lives
//   find_nonfinite(be, X)                              the first NaN/Inf entry, read back to the host
//   find_nonfinite(be, X, limit)                       (optional) the first entry that is NaN or of
//                                                      magnitude above limit: the rules' overflow guard;
//                                                      a backend without it gets the NaN/Inf check only
//   be.allocate<T>(n) → buffer<T>                      owning backend memory; only at setup
//   prepare_gemm(be, m, n, k), prepare_syrk(be, n, k)  size scratch so later calls never allocate
//   copy_to_host(be, host_dst, src, bytes)             backend memory → host memory (checkpoints)
//   copy_from_host(be, dst, host_src, bytes)           host memory → backend memory (checkpoints)
//   be.lanes()                                         (optional, host backends) how many parameters an
//                                                      optimizer may step at once, one per thread; see
//                                                      concurrent_lane_scope below
//
// Batched forms, over batch_views of same-shape matrices (stacked experts, a plan's batch): a backend
// may provide them to run a whole batch in one launch (the CUDA backend: strided-batched GEMM); the
// defaults below loop over the matrices with the primitives above.
//   gemm_batched(be, alpha, A, trans_a, B, trans_b, beta, C)   C[k] ← α·op(A[k])·op(B[k]) + β·C[k]
//   syrk_batched(be, alpha, A, beta, C)                        C[k] ← α·A[k]·A[k]ᵀ + β·C[k]
//   frobenius_norms(be, X, out)                                out[k] ← ‖X[k]‖_F
//   transform_batched(be, X, Y, f)                             Y[k](i,j) ← f.at(k)(X[k](i,j)), or f(…)
//                                                              when f has no at(k) (per-matrix scalars)
// One optional product, with a gemm as its default:
//   gemm_symmetric_result(be, alpha, A, B, beta, C)   C ← α·A·B + β·C for a product known to be symmetric
//                                                     (one triangle computed and mirrored where supported)
//
// Arithmetic: α and β of the products and every constant in the functors are of type compute_t<T>,
// which is T for float and double and float for 16-bit storage types (the CUDA backend's bf16), so a
// bf16 matrix is stored in bf16 but never multiplied by a coefficient rounded to bf16.
//
// Views passed to the primitives live in the backend's memory space. Scalars that the algorithms compute
// (norms, normalization factors) stay in backend memory as doubles and are consumed there by the
// functors, so a GPU backend never synchronizes with the host inside an algorithm. Only
// `find_nonfinite`, used by the input checks before an algorithm starts, reads back to the host.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <optional>
#include <type_traits>

#include "orthopt/view.hpp"

namespace orthopt {

/// op(A) in gemm: the matrix as it is, or its transpose.
enum class op : bool { none = false, transpose = true };

/// The column reduction computed by column_norms.
enum class column_norm : unsigned char { l1, l2 };

/// Where find_nonfinite found a NaN or an Inf, and its value.
struct nonfinite_entry {
  index_t row = 0;
  index_t col = 0;
  double value = 0.0;
};

/// Backends in orthopt compute scalars (norms, factors) in double whatever the element type: at
/// least float and never bf16, and double keeps ‖X‖² of float data free of overflow and
/// underflow for every finite float input.
using scalar_t = double;

/// The type element-wise arithmetic on T is carried out in: T itself, or float for a 16-bit storage type
/// (a backend that supports one specializes this, e.g. orthopt/cuda/backend.hpp for __nv_bfloat16).
template <class T>
struct compute_type {
  using type = T;
};
template <class T>
using compute_t = typename compute_type<std::remove_cv_t<T>>::type;

/// The unit roundoff of a storage type (exact_polar's rank threshold); a backend with a storage type
/// std::numeric_limits does not describe specializes it.
template <class T>
struct storage_epsilon {
  static constexpr double value = static_cast<double>(std::numeric_limits<T>::epsilon());
};

/// The largest finite value of a storage type (the rules' overflow limits); specialized like
/// storage_epsilon.
template <class T>
struct storage_max {
  static constexpr double value = static_cast<double>(std::numeric_limits<T>::max());
};

namespace detail {
/// True for a backend whose batched primitives run a whole batch in one launch (it says so with
/// `static constexpr bool batches_products = true;`); rules then orthogonalize a batch parameter's
/// matrices together.
template <class Backend>
inline constexpr bool runs_batched_products = requires { requires Backend::batches_products; };

/// True for a host backend that runs its products on `threads()` threads of its own and can be made
/// with a given thread count (the Eigen and BLAS backends): Newton–Schulz can then give each thread
/// whole matrices of a batch instead of splitting each small product.
template <class Backend>
concept threads_over_batches = !runs_batched_products<Backend> && std::constructible_from<Backend, int> &&
                               requires(const Backend& be) {
                                 { be.threads() } -> std::convertible_to<int>;
                               };

/// The lane of the calling thread while it runs one of several parameter steps at once (see
/// concurrent_lane_scope), -1 otherwise.
inline thread_local int concurrent_lane = -1;

/// True for a host backend whose handle can serve `lanes()` threads at once, each stepping its own
/// parameters (the Eigen and BLAS backends): an optimizer may then step several parameters in parallel.
template <class Backend>
concept runs_concurrent_lanes = !runs_batched_products<Backend> && requires(const Backend& be) {
  { be.lanes() } -> std::convertible_to<int>;
};

/// x in the compute type of its storage type.
template <class T>
ORTHOPT_HD constexpr compute_t<T> widen(T x) noexcept {
  return static_cast<compute_t<T>>(x);
}
}  // namespace detail

/// Marks the calling thread as lane `lane` (0 ≤ lane < be.lanes()) for its lifetime: while it lives, a
/// host backend that runs concurrent lanes runs each call made on this thread on this thread alone, with
/// lane `lane`'s scratch, so that up to lanes() threads may step different parameters with handles that
/// share scratch. A call made in a lane computes what a one-thread handle computes. The optimizer opens
/// one per worker of a parallel step; hosts need not.
class concurrent_lane_scope {
 public:
  explicit concurrent_lane_scope(int lane) noexcept : previous_(detail::concurrent_lane) { detail::concurrent_lane = lane; }
  ~concurrent_lane_scope() { detail::concurrent_lane = previous_; }
  concurrent_lane_scope(const concurrent_lane_scope&) = delete;
  concurrent_lane_scope& operator=(const concurrent_lane_scope&) = delete;

 private:
  int previous_;
};

/// Element-wise functors shared by the algorithms. Each is usable on the host and on a device.
namespace functors {

/// y = x
struct identity {
  template <class T>
  ORTHOPT_HD T operator()(T x) const noexcept {
    return x;
  }
};

/// y = s·x, with s a double in backend memory (the product is taken in double, then rounded once, so
/// a factor beyond the element type's range — 2¹³⁹ for a denormal float input — still works).
struct scale_by_scalar {
  const scalar_t* factor;
  template <class T>
  ORTHOPT_HD T operator()(T x) const noexcept {
    return static_cast<T>(static_cast<scalar_t>(x) * *factor);
  }
};

/// y = a·x (a host constant carried in the functor, in the compute type)
template <class T>
struct scale_by {
  compute_t<T> a;
  ORTHOPT_HD T operator()(T x) const noexcept { return static_cast<T>(a * detail::widen(x)); }
};

/// y = x + a
template <class T>
struct add_constant {
  compute_t<T> a;
  ORTHOPT_HD T operator()(T x) const noexcept { return static_cast<T>(detail::widen(x) + a); }
};

/// The sign map of AdaMuon (the AdaMuon paper, Theorem 1): sign(x) ∈ {−1, 0, +1}, sign(0) = 0, sign(NaN) = NaN.
struct sign {
  template <class T>
  ORTHOPT_HD T operator()(T x) const noexcept {
    using C = compute_t<T>;
    const C v = detail::widen(x);
    return static_cast<T>(v > C(0) ? C(1) : (v < C(0) ? C(-1) : v));
  }
};

}  // namespace functors

namespace detail {
/// The functor for matrix k of a batch: f.at(k) when f has per-matrix state, else f.
template <class F>
ORTHOPT_HD constexpr auto bind_matrix(const F& f, index_t k) {
  if constexpr (requires { f.at(k); }) {
    return f.at(k);
  } else {
    (void)k;
    return f;
  }
}
}  // namespace detail

namespace detail {
/// The views of a for_each_entry call, a plain recursive aggregate (no std::tuple) so that device code can
/// hold and walk it too.
template <class... T>
struct view_pack {};
template <class H, class... R>
struct view_pack<H, R...> {
  matrix_view<H> head;
  view_pack<R...> rest;
  view_pack() = default;
  explicit view_pack(matrix_view<H> h, matrix_view<R>... r) : head(h), rest(r...) {}
};
/// The same views' data pointers, for a walk by linear offset (every view contiguous, strides alike).
template <class... T>
struct pointer_pack {};
template <class H, class... R>
struct pointer_pack<H, R...> {
  H* head;
  pointer_pack<R...> rest;
};
inline ORTHOPT_HD pointer_pack<> pointers_of(const view_pack<>&) { return {}; }
template <class H, class... R>
ORTHOPT_HD pointer_pack<H, R...> pointers_of(const view_pack<H, R...>& v) {
  return {v.head.data, pointers_of(v.rest)};
}
/// f(X0(i,j), X1(i,j), …): the references gathered view by view, then the call.
template <class F, class... A>
ORTHOPT_HD void call_at_entry(const F& f, const view_pack<>&, index_t, index_t, A&... entries) {
  f(entries...);
}
template <class F, class H, class... R, class... A>
ORTHOPT_HD void call_at_entry(const F& f, const view_pack<H, R...>& v, index_t i, index_t j, A&... entries) {
  call_at_entry(f, v.rest, i, j, entries..., v.head(i, j));
}
/// f(p0[k], p1[k], …)
template <class F, class... A>
ORTHOPT_HD void call_at_offset(const F& f, const pointer_pack<>&, index_t, A&... entries) {
  f(entries...);
}
template <class F, class H, class... R, class... A>
ORTHOPT_HD void call_at_offset(const F& f, const pointer_pack<H, R...>& p, index_t k, A&... entries) {
  call_at_offset(f, p.rest, k, entries..., p.head[k]);
}
template <class V0, class... V>
const V0& first_of(const V0& first, const V&...) {
  return first;
}
/// A for_each_entry functor that does nothing: what the backend concept asks the primitive to accept.
struct ignore_entries {
  template <class... A>
  ORTHOPT_HD void operator()(A&...) const {}
};
}  // namespace detail

// clang-format off
/// A type providing every primitive above for element type T.
template <class Backend, class T>
concept backend_for = std::copy_constructible<Backend> &&
  requires(Backend& be, matrix_view<T> m, const_matrix_view<T> c, scalar_t* s, const scalar_t* cs,
           compute_t<T> alpha, index_t n, void* bytes, const void* const_bytes) {
    { be.template allocate<T>(n) };
    { be.template allocate<scalar_t>(n) };
    gemm(be, alpha, c, op::none, c, op::none, alpha, m);
    syrk(be, alpha, c, alpha, m);
    frobenius_norm(be, c, s);
    column_norms(be, c, column_norm::l1, s);
    scale_columns(be, cs, m);
    prepare_gemm<T>(be, n, n, n);
    prepare_syrk<T>(be, n, n);
    transform(be, c, m, functors::identity{});
    transform(be, c, c, m, functors::identity{});
    for_each_entry(be, detail::ignore_entries{}, m, c, m);
    { find_nonfinite(be, c) } -> std::same_as<std::optional<nonfinite_entry>>;
    copy_to_host(be, bytes, const_bytes, std::size_t{1});
    copy_from_host(be, bytes, const_bytes, std::size_t{1});
  };
// clang-format on

namespace detail {
/// find_nonfinite with an overflow limit where the backend has that form; else the NaN/Inf check alone.
template <class Backend, class T>
std::optional<nonfinite_entry> find_beyond(Backend& be, matrix_view<T> X, double limit) {
  if constexpr (requires { find_nonfinite(be, X, limit); }) {
    return find_nonfinite(be, X, limit);
  } else {
    return find_nonfinite(be, X);
  }
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// Batched primitives: defaults that loop over the matrices. A backend overloads them for its own handle
// type (more specialized, so overload resolution prefers it).
// ---------------------------------------------------------------------------------------------------
template <class Backend, class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_batched(Backend& be, std::type_identity_t<compute_t<T>> alpha, batch_view<TA> A, op op_a, batch_view<TB> B,
                  op op_b, std::type_identity_t<compute_t<T>> beta, batch_view<T> C) {
  for (index_t k = 0; k < C.count; ++k) gemm(be, alpha, A[k], op_a, B[k], op_b, beta, C[k]);
}

template <class Backend, class T, class TA>
  requires std::same_as<std::remove_const_t<TA>, T>
void syrk_batched(Backend& be, std::type_identity_t<compute_t<T>> alpha, batch_view<TA> A,
                  std::type_identity_t<compute_t<T>> beta, batch_view<T> C) {
  for (index_t k = 0; k < C.count; ++k) syrk(be, alpha, A[k], beta, C[k]);
}

/// C ← α·A·B + β·C for a product the caller knows to be symmetric (A and B symmetric and commuting:
/// polynomials in one matrix, as Gram Newton–Schulz forms them). A backend may compute one triangle and
/// mirror it (the Eigen backend: half the multiply-adds); this default is a gemm. As in syrk, C must be
/// symmetric on input when β ≠ 0.
template <class Backend, class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_symmetric_result(Backend& be, std::type_identity_t<compute_t<T>> alpha, matrix_view<TA> A,
                           matrix_view<TB> B, std::type_identity_t<compute_t<T>> beta, matrix_view<T> C) {
  gemm(be, alpha, A, op::none, B, op::none, beta, C);
}

/// gemm_symmetric_result over a batch: one batched gemm on a backend that runs batches in one launch,
/// else the matrices in turn.
template <class Backend, class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_symmetric_result_batched(Backend& be, std::type_identity_t<compute_t<T>> alpha, batch_view<TA> A,
                                   batch_view<TB> B, std::type_identity_t<compute_t<T>> beta, batch_view<T> C) {
  if constexpr (detail::runs_batched_products<Backend>) {
    gemm_batched(be, alpha, A, op::none, B, op::none, beta, C);
  } else {
    for (index_t k = 0; k < C.count; ++k) gemm_symmetric_result(be, alpha, A[k], B[k], beta, C[k]);
  }
}

template <class Backend, class T>
void frobenius_norms(Backend& be, batch_view<T> X, scalar_t* out) {
  for (index_t k = 0; k < X.count; ++k) frobenius_norm(be, X[k], out + k);
}

template <class Backend, class T, class U, class F>
void transform_batched(Backend& be, batch_view<T> X, batch_view<U> Y, F f) {
  for (index_t k = 0; k < Y.count; ++k) transform(be, X[k], Y[k], detail::bind_matrix(f, k));
}

}  // namespace orthopt
