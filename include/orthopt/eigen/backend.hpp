// SPDX-License-Identifier: Apache-2.0
//
// The Eigen CPU backend: the primitives of orthopt/backend.hpp on host memory, and the tensor_traits
// that make Eigen matrices, maps, refs and blocks into orthopt views without copying.
//
// Products run Eigen 3.4's own GEMM and rank-update kernels, but on packing buffers this backend owns:
// Eigen's product expressions allocate their packing space on every call once a matrix passes
// EIGEN_STACK_ALLOCATION_LIMIT, which would break orthopt's "no allocation after setup" rule. With
// OpenMP (compile with -fopenmp) the products split over threads, each thread with its own buffers.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "orthopt/backend.hpp"
#include "orthopt/detail/gemm_shape.hpp"
#include "orthopt/view.hpp"

#if !EIGEN_VERSION_AT_LEAST(3, 4, 0)
#error "orthopt's Eigen backend needs Eigen 3.4 or newer"
#endif

// The packed-buffer kernels below use Eigen 3.4's internal GEMM interface; another Eigen version uses
// plain Eigen products instead (correct, but those may allocate inside a call).
#if EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4
#define ORTHOPT_EIGEN_PACKED_KERNELS 1
#else
#define ORTHOPT_EIGEN_PACKED_KERNELS 0
#endif

/// Before a loop whose iterations are independent: lets the compiler vectorize it without run-time alias
/// checks (GCC, after inlining into a caller, may otherwise keep only a scalar loop).
#if defined(__clang__)
#define ORTHOPT_NO_LOOP_DEPENDENCE _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define ORTHOPT_NO_LOOP_DEPENDENCE _Pragma("GCC ivdep")
#else
#define ORTHOPT_NO_LOOP_DEPENDENCE
#endif
#if defined(__GNUC__) || defined(__clang__)
#define ORTHOPT_NOINLINE __attribute__((noinline))
#else
#define ORTHOPT_NOINLINE
#endif

namespace orthopt {

// ---------------------------------------------------------------------------------------------------
// Eigen types as orthopt tensors
// ---------------------------------------------------------------------------------------------------
namespace detail {
template <class E>
concept eigen_direct_access =
    std::is_base_of_v<Eigen::DenseBase<E>, E> &&
    (static_cast<unsigned>(Eigen::internal::traits<E>::Flags) & Eigen::DirectAccessBit) != 0;
}  // namespace detail

/// Any Eigen dense object with direct memory access (Matrix, Map, Ref, Block of those, Array) is a
/// tensor: make_view(m) views its memory with its own strides, for either storage order.
template <class E>
  requires detail::eigen_direct_access<E>
struct tensor_traits<E> {
  using scalar_type = typename E::Scalar;
  static auto* data(E& e) noexcept { return e.data(); }
  static const scalar_type* data(const E& e) noexcept { return e.data(); }
  static index_t rows(const E& e) noexcept { return static_cast<index_t>(e.rows()); }
  static index_t cols(const E& e) noexcept { return static_cast<index_t>(e.cols()); }
  static index_t row_stride(const E& e) noexcept { return static_cast<index_t>(e.rowStride()); }
  static index_t col_stride(const E& e) noexcept { return static_cast<index_t>(e.colStride()); }
};

namespace detail {

/// Owning, 64-byte aligned, zero-initialized host memory.
template <class T>
class host_buffer {
 public:
  host_buffer() = default;
  explicit host_buffer(std::size_t n) : size_(n) {
    if (n > 0) {
      data_.reset(static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})));
      std::memset(static_cast<void*>(data_.get()), 0, n * sizeof(T));
    }
  }
  [[nodiscard]] T* data() noexcept { return data_.get(); }
  [[nodiscard]] const T* data() const noexcept { return data_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  struct deleter {
    void operator()(T* p) const noexcept { ::operator delete(static_cast<void*>(p), std::align_val_t{64}); }
  };
  std::unique_ptr<T, deleter> data_;
  std::size_t size_ = 0;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// The backend handle
// ---------------------------------------------------------------------------------------------------

/// The Eigen CPU backend. A handle: copies share one scratch area (the GEMM packing buffers), so plans
/// made from one handle share their scratch. One handle must not be used by two threads at once; give
/// each host thread its own handle — except in lanes: up to lanes() threads, each inside a
/// concurrent_lane_scope of its own lane, may use copies of one handle at once (each call then runs on its
/// thread alone, with that lane's buffers; the optimizer's parallel step does this). `threads` is fixed at
/// construction (default: Eigen::nbThreads(), i.e. OpenMP's thread count when compiled with -fopenmp,
/// else 1).
class eigen_backend {
 public:
  template <class T>
  using buffer = detail::host_buffer<T>;
  /// The thin SVD used by exact_polar, defined in orthopt/eigen/svd.hpp.
  template <class T>
  class svd_workspace;

  eigen_backend() : eigen_backend(Eigen::nbThreads()) {}
  explicit eigen_backend(int threads) : scratch_(std::make_shared<scratch>()) {
#if defined(_OPENMP)
    threads_ = std::max(1, threads);
#else
    (void)threads;
    threads_ = 1;
#endif
    Eigen::initParallel();
    scratch_->per_thread.resize(static_cast<std::size_t>(threads_));
  }

  /// The threads a call made now runs on: the handle's, or 1 on a thread inside a concurrent lane.
  [[nodiscard]] int threads() const noexcept { return detail::concurrent_lane >= 0 ? 1 : threads_; }
  /// How many concurrent lanes the handle's scratch serves: its thread count.
  [[nodiscard]] int lanes() const noexcept { return threads_; }

  template <class T>
  [[nodiscard]] buffer<T> allocate(index_t n) const {
    return buffer<T>(static_cast<std::size_t>(n));
  }

  /// Bytes of packing scratch held (all threads): what setup reserved for the products seen so far.
  [[nodiscard]] std::size_t scratch_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& t : scratch_->per_thread) total += t.a_bytes + t.b_bytes;
    return total;
  }

  // Internal: the packing buffers of one thread, grown (an allocation) only when a product needs more
  // than setup reserved.
  struct thread_scratch {
    std::unique_ptr<std::byte[]> a;
    std::unique_ptr<std::byte[]> b;
    std::size_t a_bytes = 0;
    std::size_t b_bytes = 0;
  };
  void reserve(int thread, std::size_t a_bytes, std::size_t b_bytes) {
    auto& t = scratch_->per_thread[slot(thread)];
    // 64 bytes of slack: the pointers handed to Eigen are aligned up inside the block.
    if (a_bytes + 64 > t.a_bytes) {
      t.a.reset(new std::byte[a_bytes + 64]);
      t.a_bytes = a_bytes + 64;
    }
    if (b_bytes + 64 > t.b_bytes) {
      t.b.reset(new std::byte[b_bytes + 64]);
      t.b_bytes = b_bytes + 64;
    }
  }
  template <class T>
  [[nodiscard]] T* block_a(int thread) const noexcept {
    return align_up<T>(scratch_->per_thread[slot(thread)].a.get());
  }
  template <class T>
  [[nodiscard]] T* block_b(int thread) const noexcept {
    return align_up<T>(scratch_->per_thread[slot(thread)].b.get());
  }

 private:
  // The buffers of thread `thread` of a call: a call in a lane runs on one thread, with the lane's. A
  // lane beyond the handle's (a handle of fewer threads than the optimizer's other groups have) is never
  // opened: the optimizer runs as many lanes as its smallest handle has.
  [[nodiscard]] std::size_t slot(int thread) const noexcept {
    const int lane = detail::concurrent_lane;
    return static_cast<std::size_t>(lane >= 0 && lane < threads_ ? lane : thread);
  }
  template <class T>
  static T* align_up(std::byte* p) noexcept {
    auto addr = reinterpret_cast<std::uintptr_t>(p);
    addr = (addr + 63u) & ~static_cast<std::uintptr_t>(63u);
    return reinterpret_cast<T*>(addr);
  }
  struct scratch {
    std::vector<thread_scratch> per_thread;
  };
  std::shared_ptr<scratch> scratch_;
  int threads_ = 1;
};

namespace detail {

/// Products smaller than this many multiply-adds run on one thread: a parallel region costs more.
inline constexpr double eigen_parallel_min_work = 64.0 * 64.0 * 64.0;

inline int eigen_threads_for(const eigen_backend& be, double work, index_t split_extent) {
  if (be.threads() <= 1 || work < eigen_parallel_min_work) return 1;
  return static_cast<int>(std::min<index_t>(be.threads(), std::max<index_t>(1, split_extent / 16)));
}

/// A matrix operand as the Eigen kernels take it: data, leading dimension and storage order.
template <class T>
struct kernel_operand {
  const T* data;
  index_t stride;
  bool row_major;
};

/// The operand form of `v` if it has a unit stride in one direction (a kernel can read it directly).
template <class T>
std::optional<kernel_operand<T>> as_kernel_operand(const_matrix_view<T> v) {
  if (v.row_stride == 1 || v.rows == 1) return kernel_operand<T>{v.data, v.cols <= 1 ? std::max<index_t>(v.rows, 1) : v.col_stride, false};
  if (v.col_stride == 1 || v.cols == 1) return kernel_operand<T>{v.data, v.rows <= 1 ? std::max<index_t>(v.cols, 1) : v.row_stride, true};
  return std::nullopt;
}

#if ORTHOPT_EIGEN_PACKED_KERNELS
/// Eigen's level-3 blocking descriptor, pointed at orthopt-owned packing buffers.
template <class T>
class packed_blocking : public Eigen::internal::level3_blocking<T, T> {
 public:
  packed_blocking(index_t kc, index_t mc, index_t nc, T* a, T* b) {
    this->m_kc = kc;
    this->m_mc = mc;
    this->m_nc = nc;
    this->m_blockA = a;
    this->m_blockB = b;
  }
};

struct block_sizes {
  index_t kc, mc, nc;
  std::size_t a_elems, b_elems;
};

/// Eigen's cache blocking for C(m×n) += A(m×k)·B(k×n), as its own gemm_blocking_space computes it.
template <class T>
block_sizes gemm_block_sizes(index_t m, index_t n, index_t k) {
  Eigen::Index kc = k, mc = m, nc = n;
  Eigen::internal::computeProductBlockingSizes<T, T, 1, Eigen::Index>(kc, mc, nc, Eigen::Index(1));
  return {kc, mc, nc, static_cast<std::size_t>(kc * mc), static_cast<std::size_t>(kc * nc)};
}

/// The same for the lower triangle of C(n×n) += A(n×k)·B(k×n) (Eigen's rank-update blocking: the
/// packed right-hand side spans the whole n).
template <class T>
block_sizes triangular_block_sizes(index_t n, index_t k) {
  Eigen::Index kc = k, mc = n, nc = n;
  Eigen::internal::computeProductBlockingSizes<T, T, 1, Eigen::Index>(kc, mc, nc, Eigen::Index(1));
  return {kc, mc, n, static_cast<std::size_t>(kc * mc), static_cast<std::size_t>(kc * n)};
}

template <class T, int LhsOrder, int RhsOrder>
void run_gemm_kernel(index_t m, index_t n, index_t k, const T* l, index_t ls, const T* r, index_t rs, T* c,
                     index_t cs, T alpha, T* a_buf, T* b_buf) {
  const block_sizes bs = gemm_block_sizes<T>(m, n, k);
  packed_blocking<T> blocking(bs.kc, bs.mc, bs.nc, a_buf, b_buf);
  Eigen::internal::general_matrix_matrix_product<Eigen::Index, T, LhsOrder, false, T, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(m, n, k, l, ls, r, rs, c, 1, cs,
                                                                          alpha, blocking, nullptr);
}

template <class T, int LhsOrder, int RhsOrder>
void run_lower_kernel(index_t n, index_t k, const T* l, index_t ls, const T* r, index_t rs, T* c, index_t cs,
                      T alpha, T* a_buf, T* b_buf) {
  const block_sizes bs = triangular_block_sizes<T>(n, k);
  packed_blocking<T> blocking(bs.kc, bs.mc, bs.nc, a_buf, b_buf);
  Eigen::internal::general_matrix_matrix_triangular_product<Eigen::Index, T, LhsOrder, false, T, RhsOrder,
                                                            false, Eigen::ColMajor, 1, Eigen::Lower>::run(
      n, k, l, ls, r, rs, c, 1, cs, alpha, blocking);
}
#endif

/// C(m×n, column-major, ld cs) += α·L(m×k)·R(k×n) on one thread, with thread `tid`'s buffers.
template <class T>
void gemm_single(const eigen_backend& be, int tid, index_t m, index_t n, index_t k, kernel_operand<T> L,
                 kernel_operand<T> R, T* c, index_t cs, T alpha) {
#if ORTHOPT_EIGEN_PACKED_KERNELS
  T* a = be.template block_a<T>(tid);
  T* b = be.template block_b<T>(tid);
  constexpr int RM = Eigen::RowMajor, CM = Eigen::ColMajor;
  if (L.row_major) {
    if (R.row_major) run_gemm_kernel<T, RM, RM>(m, n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
    else run_gemm_kernel<T, RM, CM>(m, n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
  } else {
    if (R.row_major) run_gemm_kernel<T, CM, RM>(m, n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
    else run_gemm_kernel<T, CM, CM>(m, n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
  }
#else
  (void)be;
  (void)tid;
  using dyn = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using stride = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  auto map = [](kernel_operand<T> o, index_t r, index_t cl) {
    return Eigen::Map<const dyn, 0, stride>(o.data, r, cl, o.row_major ? stride(1, o.stride) : stride(o.stride, 1));
  };
  Eigen::Map<dyn, 0, Eigen::OuterStride<>> C(c, m, n, Eigen::OuterStride<>(cs));
  C.noalias() += alpha * (map(L, m, k) * map(R, k, n));
#endif
}

#if ORTHOPT_EIGEN_PACKED_KERNELS
/// lower(C(n×n)) += α·L(n×k)·R(k×n) on one thread, with thread `tid`'s buffers.
template <class T>
void lower_single(const eigen_backend& be, int tid, index_t n, index_t k, kernel_operand<T> L, kernel_operand<T> R,
                  T* c, index_t cs, T alpha) {
  T* a = be.template block_a<T>(tid);
  T* b = be.template block_b<T>(tid);
  constexpr int RM = Eigen::RowMajor, CM = Eigen::ColMajor;
  if (L.row_major) {
    if (R.row_major) run_lower_kernel<T, RM, RM>(n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
    else run_lower_kernel<T, RM, CM>(n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
  } else {
    if (R.row_major) run_lower_kernel<T, CM, RM>(n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
    else run_lower_kernel<T, CM, CM>(n, k, L.data, L.stride, R.data, R.stride, c, cs, alpha, a, b);
  }
}
#endif

/// Offset of column j of a kernel operand.
template <class T>
kernel_operand<T> operand_columns_from(kernel_operand<T> o, index_t j) {
  return {o.data + (o.row_major ? j : j * o.stride), o.stride, o.row_major};
}
/// Offset of row i of a kernel operand.
template <class T>
kernel_operand<T> operand_rows_from(kernel_operand<T> o, index_t i) {
  return {o.data + (o.row_major ? i * o.stride : i), o.stride, o.row_major};
}

/// The column ranges [begin_t, begin_{t+1}) that split n columns over `parts` threads.
inline index_t split_point(index_t n, int parts, int t) { return n * t / parts; }

/// Row bands for the lower triangle of an n×n product: band t spans rows [p_t, p_{t+1}) with
/// p_t = n·sqrt(t/parts), so each band's share (gemm block left of the diagonal + its triangle) is equal.
inline index_t triangle_split_point(index_t n, int parts, int t) {
  if (t >= parts) return n;
  return static_cast<index_t>(static_cast<double>(n) * std::sqrt(static_cast<double>(t) / parts));
}

template <class F>
void parallel_for_threads(int parts, F&& body) {
  if (parts <= 1) {
    body(0);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int t = 0; t < parts; ++t) body(t);
#else
  for (int t = 0; t < parts; ++t) body(t);
#endif
}

/// Straightforward product for operands without a unit stride (rare: views with two non-unit strides).
template <class T>
void gemm_strided(T alpha, const_matrix_view<T> L, const_matrix_view<T> R, matrix_view<T> C) {
  for (index_t i = 0; i < C.rows; ++i) {
    for (index_t j = 0; j < C.cols; ++j) {
      T acc = T(0);
      for (index_t p = 0; p < L.cols; ++p) acc += L(i, p) * R(p, j);
      C(i, j) += alpha * acc;
    }
  }
}

/// Element-wise passes shorter than this many elements run on one thread (a parallel region costs a few
/// microseconds; a pass over 64 Ki floats takes about as long).
inline constexpr index_t eigen_parallel_min_elements = index_t{1} << 16;

/// Threads for an element-wise pass over n elements: the handle's, for long passes (memory-bound passes
/// still gain from a second core's load bandwidth).
inline int elementwise_threads(const eigen_backend& be, index_t n) {
  if (be.threads() <= 1 || n < eigen_parallel_min_elements) return 1;
  return static_cast<int>(std::min<index_t>(be.threads(), n / (eigen_parallel_min_elements / 2)));
}

/// Visit every element of one or more same-shape views, fastest over the first view's unit stride; a
/// long pass is split into `parts` fixed ranges (the same split for the same thread count: results do
/// not depend on scheduling).
template <class F, class V0, class... V>
void for_each_index(const eigen_backend& be, const V0& first, F&& f, const V&... rest) {
  const bool all_contiguous_alike =
      first.is_contiguous() && ((rest.is_contiguous() && rest.row_stride == first.row_stride &&
                                 rest.col_stride == first.col_stride) && ...);
  const int parts = elementwise_threads(be, first.size());
  if (all_contiguous_alike) {
    const index_t n = first.size();
    parallel_for_threads(parts, [&](int t) { f.linear(split_point(n, parts, t), split_point(n, parts, t + 1)); });
    return;
  }
  if (first.col_stride <= first.row_stride) {
    parallel_for_threads(parts, [&](int t) {
      for (index_t i = split_point(first.rows, parts, t), end = split_point(first.rows, parts, t + 1); i < end; ++i)
        for (index_t j = 0; j < first.cols; ++j) f(i, j);
    });
  } else {
    parallel_for_threads(parts, [&](int t) {
      for (index_t j = split_point(first.cols, parts, t), end = split_point(first.cols, parts, t + 1); j < end; ++j)
        for (index_t i = 0; i < first.rows; ++i) f(i, j);
    });
  }
}

/// f at offsets [begin, end) of contiguous views. Kept out of line: GCC 12 vectorizes this loop on its
/// own, but not always once it is inlined into a caller (“latch block not empty”).
template <class F, class... T>
ORTHOPT_NOINLINE void entries_in_range(const F& f, pointer_pack<T...> p, index_t begin, index_t end) {
  // Entry k of one view meets no other entry than entry k of another (no partial overlap): no
  // dependence between iterations, which the compiler cannot prove across several pointers.
  ORTHOPT_NO_LOOP_DEPENDENCE
  for (index_t k = begin; k < end; ++k) call_at_offset(f, p, k);
}

/// ORTHOPT_VECTOR_TRANSPOSE: 1 where transpose_copy moves blocks in registers (compilers with
/// __builtin_shufflevector: GCC 12 and later, Clang), else 0; defining it as 0 beforehand turns that off.
/// nvcc is left out: no CUDA source includes this header, and its front end need not know the builtin.
#if !defined(ORTHOPT_VECTOR_TRANSPOSE)
#if !defined(__CUDACC__) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define ORTHOPT_VECTOR_TRANSPOSE 1
#endif
#endif
#endif
#if !defined(ORTHOPT_VECTOR_TRANSPOSE)
#define ORTHOPT_VECTOR_TRANSPOSE 0
#endif

#if ORTHOPT_VECTOR_TRANSPOSE
/// The lanes of 16-byte vectors of elements of `Bytes` bytes: GCC and Clang vector extensions, which
/// compile to the target's own shuffles (SSE2 and later, NEON) without naming an instruction set.
template <std::size_t Bytes>
struct transpose_lanes {
  using lane = std::conditional_t<Bytes == 8, std::uint64_t, std::conditional_t<Bytes == 4, std::uint32_t, std::uint16_t>>;
  static constexpr int count = static_cast<int>(16 / Bytes);
  typedef lane vector __attribute__((vector_size(16)));
};

/// One stage of a count×count transpose held in `count` row vectors: rows p and p + half (p's bit of
/// `half` clear) exchange their off-diagonal blocks of width `half`. After the stages for half = 1, 2,
/// … count/2, row i holds what was column i.
template <int Count, int Half, class V, int... K>
inline void transpose_stage(V* r, std::integer_sequence<int, K...>) noexcept {
  // Lane k of the lower result: a's lane where k's block is the lower half of its pair, else b's.
  constexpr auto lower = [](int k) { return (k % (2 * Half) < Half) ? k : Count + k - Half; };
  constexpr auto upper = [](int k) { return (k % (2 * Half) < Half) ? k + Half : Count + k; };
  for (int p = 0; p < Count; ++p) {
    if ((p & Half) != 0) continue;
    const V a = r[p], b = r[p + Half];
    r[p] = __builtin_shufflevector(a, b, lower(K)...);
    r[p + Half] = __builtin_shufflevector(a, b, upper(K)...);
  }
}
#endif

/// dst(i, j) ← src(j, i) for i < rows, j < cols: src's rows and dst's rows are contiguous, with leading
/// dimensions src_ld and dst_ld. The tiled walk's copies between a view stored in one order and a buffer
/// in the other, and the symmetric products' mirror. With ORTHOPT_VECTOR_TRANSPOSE, blocks of 16 bytes a side are loaded as rows,
/// transposed in registers and stored as rows (one load and one store per 16 bytes) instead of moving
/// one entry at a time: bench_cpu's STEP/adamw_column_major, 768×768 float on one thread, went from 4.4×
/// to 2.1× the row-major step (docs/benchmarks.md).
template <class E>
void transpose_copy(const E* src, index_t src_ld, E* dst, index_t dst_ld, index_t rows, index_t cols) noexcept {
  index_t blocked_rows = 0, blocked_cols = 0;
#if ORTHOPT_VECTOR_TRANSPOSE
  if constexpr (std::is_trivially_copyable_v<E> && (sizeof(E) == 2 || sizeof(E) == 4 || sizeof(E) == 8)) {
    using lanes = transpose_lanes<sizeof(E)>;
    using V = typename lanes::vector;
    constexpr int n = lanes::count;
    blocked_rows = rows - rows % n;
    blocked_cols = cols - cols % n;
    const auto block = [&](index_t i0, index_t j0) {
      V r[n];
      for (int k = 0; k < n; ++k) std::memcpy(&r[k], src + (j0 + k) * src_ld + i0, sizeof(V));
      if constexpr (n >= 2) transpose_stage<n, 1>(r, std::make_integer_sequence<int, n>{});
      if constexpr (n >= 4) transpose_stage<n, 2>(r, std::make_integer_sequence<int, n>{});
      if constexpr (n >= 8) transpose_stage<n, 4>(r, std::make_integer_sequence<int, n>{});
      for (int k = 0; k < n; ++k) std::memcpy(dst + (i0 + k) * dst_ld + j0, &r[k], sizeof(V));
    };
    // The inner loop runs along the rows of the side with the longer stride between rows (the matrix,
    // beside a small buffer): n of its rows are streamed to the end before the next n, so each of its
    // cache lines is met once. Across its rows instead, every block would touch n lines a whole row
    // apart, which at strides of a multiple of 4 KiB share a few cache sets and are evicted before
    // the next block uses the rest of them.
    if (src_ld >= dst_ld) {
      for (index_t j0 = 0; j0 < blocked_cols; j0 += n)
        for (index_t i0 = 0; i0 < blocked_rows; i0 += n) block(i0, j0);
    } else {
      for (index_t i0 = 0; i0 < blocked_rows; i0 += n)
        for (index_t j0 = 0; j0 < blocked_cols; j0 += n) block(i0, j0);
    }
  }
#endif
  // What the blocks leave: the last rows % n rows of dst across the blocked columns, then the last
  // cols % n columns whole.
  for (index_t j = 0; j < blocked_cols; ++j)
    for (index_t i = blocked_rows; i < rows; ++i) dst[i * dst_ld + j] = src[j * src_ld + i];
  for (index_t j = blocked_cols; j < cols; ++j)
    for (index_t i = 0; i < rows; ++i) dst[i * dst_ld + j] = src[j * src_ld + i];
}

/// upper(C) ← lower(C)ᵀ for a column-major n×n C with column stride cs. Tiled through a small buffer:
/// a block below the diagonal is read column by column (contiguous), transposed in the buffer, and
/// written column by column above it, so no access walks across columns — which, at a column stride
/// that is a multiple of 4 KiB, maps every row of a tile to one cache set (measured at n = 512–1536:
/// 4–5× faster than walking the tile directly). Tile columns are dealt round-robin to the threads, which
/// balances the triangle's area.
template <class T>
void mirror_lower_to_upper(const eigen_backend& be, index_t n, T* c, index_t cs) {
  constexpr index_t tile = 32;
  const index_t tiles = (n + tile - 1) / tile;
  const int parts = static_cast<int>(std::min<index_t>(eigen_threads_for(be, 16.0 * double(n) * double(n), n), tiles));
  parallel_for_threads(parts, [&](int t) {
    T buffer[tile * tile];
    for (index_t jt = t; jt < tiles; jt += parts) {
      const index_t j0 = jt * tile, j1 = std::min(n, j0 + tile);
      for (index_t it = 0; it <= jt; ++it) {
        const index_t i0 = it * tile, i1 = std::min(n, i0 + tile);
        // The lower block C[j0:j1, i0:i1] (column i contiguous over j) into the buffer by rows: buffer row
        // j - j0 holds C[j, i0:i1].
        transpose_copy(c + i0 * cs + j0, cs, buffer, tile, j1 - j0, i1 - i0);
        for (index_t j = j0; j < j1; ++j) {  // upper block C[i0:i1, j0:j1], column j contiguous over i < j
          T* column = c + j * cs;
          const T* row = buffer + (j - j0) * tile - i0;
          for (index_t i = i0, end = std::min(i1, j); i < end; ++i) column[i] = row[i];
        }
      }
    }
  });
}

template <class T>
void scale_in_place(matrix_view<T> C, T beta) {
  if (beta == T(1)) return;
  // The unit stride innermost: a row-major C walked column by column would miss the cache per element.
  if (C.col_stride < C.row_stride) C = C.transposed();
  for (index_t j = 0; j < C.cols; ++j)
    for (index_t i = 0; i < C.rows; ++i) C(i, j) = (beta == T(0)) ? T(0) : beta * C(i, j);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// The primitives
// ---------------------------------------------------------------------------------------------------
template <class T>
void prepare_gemm(eigen_backend& be, index_t m, index_t n, index_t k);
template <class T>
void prepare_syrk(eigen_backend& be, index_t n, index_t k);

/// C ← α·op(A)·op(B) + β·C. With β = 0, C's previous contents (even NaN) are ignored.
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm(eigen_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A, op op_a, matrix_view<TB> B, op op_b,
          std::type_identity_t<T> beta, matrix_view<T> C_in) {
  const auto [L, R, C] = detail::orient_gemm(A, op_a, B, op_b, C_in);
  detail::scale_in_place(C, beta);
  const index_t m = C.rows, n = C.cols, k = L.cols;
  if (m == 0 || n == 0 || k == 0 || alpha == T(0)) return;
  const auto lo = detail::as_kernel_operand(L);
  const auto ro = detail::as_kernel_operand(R);
  const bool c_col_major = C.row_stride == 1 || C.rows == 1;
  if (!lo || !ro || !c_col_major) {
    detail::gemm_strided(alpha, L, R, C);
    return;
  }
  const index_t cs = C.cols <= 1 ? std::max<index_t>(m, 1) : C.col_stride;
  const int parts = detail::eigen_threads_for(be, double(m) * double(n) * double(k), n);
  prepare_gemm<T>(be, m, n, k);
  T* const c_data = C.data;  // lambdas cannot capture structured bindings before C++20 compilers (clang 16)
  detail::parallel_for_threads(parts, [&](int t) {
    const index_t j0 = detail::split_point(n, parts, t), j1 = detail::split_point(n, parts, t + 1);
    if (j1 <= j0) return;
    detail::gemm_single<T>(be, t, m, j1 - j0, k, *lo, detail::operand_columns_from(*ro, j0), c_data + j0 * cs, cs,
                           alpha);
  });
}

/// Reserve the packing scratch a gemm of C(m×n) = A(m×k)·B(k×n) needs, so the call itself allocates
/// nothing. Harmless to call again; grows only.
template <class T>
void prepare_gemm(eigen_backend& be, index_t m, index_t n, index_t k) {
#if ORTHOPT_EIGEN_PACKED_KERNELS
  // Either orientation may reach the kernels (row-major C is transposed), so reserve for both.
  const int parts = detail::eigen_threads_for(be, double(m) * double(n) * double(k), std::min(m, n));
  const int parts_n = detail::eigen_threads_for(be, double(m) * double(n) * double(k), n);
  const int parts_m = detail::eigen_threads_for(be, double(m) * double(n) * double(k), m);
  (void)parts;
  // A call in a concurrent lane runs the whole product on one thread with the lane's buffers, so each
  // lane's buffers also hold the one-thread blocking (the lanes are the handle's threads).
  const int lanes = detail::concurrent_lane >= 0 ? 1 : be.lanes();
  for (int t = 0; t < std::max({parts_n, parts_m, lanes}); ++t) {
    std::size_t a = 0, b = 0;
    auto need = [&](index_t rows, index_t cols) {
      const auto bs = detail::gemm_block_sizes<T>(rows, cols, k);
      a = std::max(a, bs.a_elems * sizeof(T));
      b = std::max(b, bs.b_elems * sizeof(T));
    };
    if (t < parts_n) need(m, detail::split_point(n, parts_n, t + 1) - detail::split_point(n, parts_n, t));
    if (t < parts_m) need(n, detail::split_point(m, parts_m, t + 1) - detail::split_point(m, parts_m, t));
    if (t < lanes) {
      need(m, n);
      need(n, m);
    }
    be.reserve(t, a, b);
  }
#else
  (void)be, (void)m, (void)n, (void)k;
#endif
}

namespace detail {
/// lower(C) += α·L·R for L (n×k), R (k×n) given as kernel operands and a column-major C: the block left
/// of the diagonal as a gemm and the diagonal block's lower triangle, in row bands of equal work per
/// thread. Half the multiply-adds of the full product. Then upper(C) ← lower(C)ᵀ.
template <class T>
void lower_product_and_mirror(eigen_backend& be, T alpha, index_t n, index_t k, kernel_operand<T> L,
                              kernel_operand<T> R, T* c, index_t cs) {
#if ORTHOPT_EIGEN_PACKED_KERNELS
  const int parts = eigen_threads_for(be, 0.5 * double(n) * double(n) * double(k), n);
  parallel_for_threads(parts, [&](int t) {
    const index_t p0 = triangle_split_point(n, parts, t);
    const index_t p1 = triangle_split_point(n, parts, t + 1);
    if (p1 <= p0) return;
    const auto band = operand_rows_from(L, p0);
    // The block left of the diagonal: C[p0:p1, 0:p0] += α·L[p0:p1, :]·R[:, 0:p0]
    if (p0 > 0) gemm_single<T>(be, t, p1 - p0, p0, k, band, R, c + p0, cs, alpha);
    // The diagonal block's lower triangle.
    lower_single<T>(be, t, p1 - p0, k, band, operand_columns_from(R, p0), c + p0 + p0 * cs, cs, alpha);
  });
#else
  gemm_single<T>(be, 0, n, n, k, L, R, c, cs, alpha);
#endif
  mirror_lower_to_upper(be, n, c, cs);
}
}  // namespace detail

/// C ← α·A·Aᵀ + β·C for A (n×k) and C (n×n); both triangles of C are written. For Aᵀ·A pass
/// A.transposed(). Half the multiply-adds of a gemm: only the lower triangle is computed, then mirrored;
/// so, as in BLAS syrk, C must be symmetric on input when β ≠ 0 (its upper triangle is not read).
template <class T, class TA>
  requires std::same_as<std::remove_const_t<TA>, T>
void syrk(eigen_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A_in, std::type_identity_t<T> beta,
          matrix_view<T> C) {
  const const_matrix_view<T> A = A_in.as_const();
  if (C.rows != A.rows || C.cols != A.rows) {
    throw shape_error("orthopt::syrk: A is " + shape_string(A) + " so C must be " + shape_string(A.rows, A.rows) +
                      ", but C is " + shape_string(C));
  }
  const index_t n = A.rows, k = A.cols;
  detail::scale_in_place(C, beta);
  if (n == 0 || k == 0 || alpha == T(0)) return;
  const auto ao = detail::as_kernel_operand(A);
  const auto at = detail::as_kernel_operand(A.transposed());
  const bool c_col_major = C.row_stride == 1 || C.rows == 1;
  if (!ao || !at || !c_col_major) {
    if (!ao || !at) {
      detail::gemm_strided(alpha, A, A.transposed(), C);
      return;
    }
    // A row-major C: the lower triangle of C is the upper of Cᵀ, and C is symmetric, so fill Cᵀ.
    C = C.transposed();
  }
  const index_t cs = C.cols <= 1 ? std::max<index_t>(n, 1) : C.col_stride;
  prepare_syrk<T>(be, n, k);
  detail::lower_product_and_mirror<T>(be, alpha, n, k, *ao, *at, C.data, cs);
}

namespace detail {
/// gemm_symmetric_result's operands, checked (A·B square and the shape of C), and oriented so that a C
/// with unit row stride is column-major: a row-major C is the column-major Cᵀ = Bᵀ·Aᵀ, the same product
/// exactly, with the operands swapped.
template <class T>
void orient_symmetric_product(const_matrix_view<T>& A, const_matrix_view<T>& B, matrix_view<T>& C) {
  if (A.cols != B.rows || C.rows != A.rows || C.cols != B.cols || A.rows != B.cols) {
    throw shape_error("orthopt::gemm_symmetric_result: A is " + shape_string(A) + ", B is " + shape_string(B) +
                      " and C is " + shape_string(C) + "; A·B must be square and the shape of C");
  }
  if (!(C.row_stride == 1 || C.rows == 1)) {
    C = C.transposed();
    const const_matrix_view<T> A_t = B.transposed(), B_t = A.transposed();
    A = A_t;
    B = B_t;
  }
}
}  // namespace detail

/// C ← α·A·B + β·C for A (n×k), B (k×n) whose product the caller knows to be symmetric (A and B
/// symmetric and commuting, e.g. two polynomials in one matrix, as in Gram Newton–Schulz): the lower
/// triangle is computed and mirrored, half the multiply-adds of a gemm. As in syrk, C must be symmetric
/// on input when β ≠ 0. Scratch: prepare_syrk(n, k) covers it.
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_symmetric_result(eigen_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A_in,
                           matrix_view<TB> B_in, std::type_identity_t<T> beta, matrix_view<T> C) {
  const_matrix_view<T> A = A_in.as_const(), B = B_in.as_const();
  detail::orient_symmetric_product(A, B, C);
  const index_t n = A.rows, k = A.cols;
  detail::scale_in_place(C, beta);
  if (n == 0 || k == 0 || alpha == T(0)) return;
  const auto lo = detail::as_kernel_operand(A);
  const auto ro = detail::as_kernel_operand(B);
  if (!lo || !ro || !(C.row_stride == 1 || C.rows == 1)) {
    gemm<T>(be, alpha, A, op::none, B, op::none, T(1), C);
    return;
  }
  const index_t cs = C.cols <= 1 ? std::max<index_t>(n, 1) : C.col_stride;
  prepare_syrk<T>(be, n, k);
  detail::lower_product_and_mirror<T>(be, alpha, n, k, *lo, *ro, C.data, cs);
}

/// Reserve the scratch a syrk of A (n×k) needs.
template <class T>
void prepare_syrk(eigen_backend& be, index_t n, index_t k) {
#if ORTHOPT_EIGEN_PACKED_KERNELS
  const int parts = detail::eigen_threads_for(be, 0.5 * double(n) * double(n) * double(k), n);
  const auto reserve_band = [&](int t, index_t p0, index_t p1) {
    const auto g = detail::gemm_block_sizes<T>(p1 - p0, std::max<index_t>(p0, 1), k);
    const auto tri = detail::triangular_block_sizes<T>(p1 - p0, k);
    be.reserve(t, std::max(g.a_elems, tri.a_elems) * sizeof(T), std::max(g.b_elems, tri.b_elems) * sizeof(T));
  };
  for (int t = 0; t < parts; ++t) {
    const index_t p0 = detail::triangle_split_point(n, parts, t);
    const index_t p1 = detail::triangle_split_point(n, parts, t + 1);
    if (p1 > p0) reserve_band(t, p0, p1);
  }
  // Each concurrent lane's buffers also hold the one-thread product (as in prepare_gemm).
  if (detail::concurrent_lane < 0) {
    for (int t = 0; t < be.lanes(); ++t) reserve_band(t, 0, n);
  }
#else
  (void)be, (void)n, (void)k;
#endif
}

namespace detail {
/// Sum of squares in double, with a rescaled second pass when the plain one under- or overflows (double
/// data near 1e±154), so ‖X‖ is accurate for every finite input.
template <class T, class Visit>
double stable_norm(Visit&& visit) {
  double ssq = 0.0;
  visit([&](T x) { ssq += double(x) * double(x); });
  // A plain sum in [1e-280, 1e280] is accurate; 0 may be an underflow of tiny non-zero entries.
  if (ssq > 1e-280 && ssq < 1e280) return std::sqrt(ssq);
  double amax = 0.0;
  visit([&](T x) { amax = std::max(amax, std::abs(double(x))); });
  if (std::isnan(ssq)) return ssq;
  if (amax == 0.0 || !std::isfinite(amax)) return amax;
  double scaled = 0.0;
  visit([&](T x) {
    const double y = double(x) / amax;
    scaled += y * y;
  });
  return amax * std::sqrt(scaled);
}
}  // namespace detail

/// out[0] ← ‖X‖_F, accumulated in double. NaN if X has a NaN; Inf if it has an Inf.
template <class TX>
void frobenius_norm(eigen_backend& be, matrix_view<TX> X, scalar_t* out) {
  using T = std::remove_const_t<TX>;
  // Sums of squares in eight interleaved accumulators (independent additions: the loop is not bound by
  // one add's latency), entry p of the walk in storage order going to accumulator p mod 8, so that a
  // strided view (a block of a larger matrix) gives exactly the norm of the same matrix stored
  // contiguously. A long contiguous pass is split over the handle's threads into fixed ranges whose sums
  // are added in order (deterministic for a thread count). The one-pass sum is accurate in
  // [1e-280, 1e280]; outside it, the rescaling pass below takes over.
  const auto finish = [](const double (&lanes)[8]) {
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  };
  double ssq = 0.0;
  if (X.is_contiguous()) {
    const int parts = detail::elementwise_threads(be, X.size());
    double partial[64] = {};
    const int used = parts < 64 ? parts : 64;
    const index_t n = X.size();
    detail::parallel_for_threads(used, [&](int t) {
      double lanes[8] = {};
      index_t p = detail::split_point(n, used, t);
      const index_t end = detail::split_point(n, used, t + 1);
      for (; p + 8 <= end; p += 8) {
        for (int l = 0; l < 8; ++l) lanes[l] += double(X.data[p + l]) * double(X.data[p + l]);
      }
      for (int l = 0; p < end; ++p, ++l) lanes[l] += double(X.data[p]) * double(X.data[p]);
      partial[t] = finish(lanes);
    });
    for (int t = 0; t < used; ++t) ssq += partial[t];
  } else {
    double lanes[8] = {};
    int l = 0;
    const auto add = [&](double x) {
      lanes[l] += x * x;
      l = (l + 1) & 7;
    };
    if (X.row_stride <= X.col_stride) {  // column-major storage order: i fastest
      for (index_t j = 0; j < X.cols; ++j)
        for (index_t i = 0; i < X.rows; ++i) add(double(X(i, j)));
    } else {
      for (index_t i = 0; i < X.rows; ++i)
        for (index_t j = 0; j < X.cols; ++j) add(double(X(i, j)));
    }
    ssq = finish(lanes);
  }
  if (ssq > 1e-280 && ssq < 1e280) {
    out[0] = std::sqrt(ssq);
    return;
  }
  out[0] = detail::stable_norm<T>([&](auto&& f) {
    if (X.is_contiguous()) {
      const index_t n = X.size();
      for (index_t p = 0; p < n; ++p) f(X.data[p]);
    } else {
      for (index_t j = 0; j < X.cols; ++j)
        for (index_t i = 0; i < X.rows; ++i) f(X(i, j));
    }
  });
}

/// out[j] ← the l1 or l2 norm of column j, accumulated in double.
template <class TX>
void column_norms(eigen_backend&, matrix_view<TX> X, column_norm kind, scalar_t* out) {
  using T = std::remove_const_t<TX>;
  const auto column_l2 = [&](index_t j) {
    const auto col = X.column(j);
    return detail::stable_norm<T>([&](auto&& f) {
      for (index_t i = 0; i < col.rows; ++i) f(col(i, 0));
    });
  };
  if (X.col_stride < X.row_stride && X.rows > 1) {
    // Stored by rows: walk the rows, one running sum per column, rather than down each column (a cache line
    // and, at a row stride of 4 KiB or more, a page per entry). Each column's sum takes its entries in the
    // same order as the walk down the column, so the results are the same bits.
    std::fill(out, out + X.cols, 0.0);
    for (index_t i = 0; i < X.rows; ++i) {
      const auto* row = &X(i, 0);
      if (kind == column_norm::l1) {
        for (index_t j = 0; j < X.cols; ++j) out[j] += std::abs(double(row[j * X.col_stride]));
      } else {
        for (index_t j = 0; j < X.cols; ++j) out[j] += double(row[j * X.col_stride]) * double(row[j * X.col_stride]);
      }
    }
    if (kind == column_norm::l2) {
      for (index_t j = 0; j < X.cols; ++j) {
        if (out[j] > 1e-280 && out[j] < 1e280) {
          out[j] = std::sqrt(out[j]);
        } else {  // under- or overflow (or NaN, Inf): the column again, with the rescaled passes
          out[j] = column_l2(j);
        }
      }
    }
    return;
  }
  for (index_t j = 0; j < X.cols; ++j) {
    const auto col = X.column(j);
    if (kind == column_norm::l1) {
      double s = 0.0;
      for (index_t i = 0; i < col.rows; ++i) s += std::abs(double(col(i, 0)));
      out[j] = s;
    } else {
      out[j] = column_l2(j);
    }
  }
}

namespace detail {
/// Whether a view's entries lie closer along its rows than along its columns (row-major-like).
template <class T>
bool walks_rows(const matrix_view<T>& v) noexcept {
  return v.col_stride <= v.row_stride;
}
/// Whether same-shape views can be walked together along one unit stride: they are stored in the same
/// order, or are vectors (one row or one column), which have no other.
template <class T0, class... T>
bool orders_agree(const matrix_view<T0>& first, const matrix_view<T>&... rest) noexcept {
  return first.rows <= 1 || first.cols <= 1 || ((walks_rows(rest) == walks_rows(first)) && ...);
}

/// The pointer_pack of the given entries' addresses.
inline pointer_pack<> pointer_pack_of() { return {}; }
template <class H, class... R>
pointer_pack<H, R...> pointer_pack_of(H* head, R*... rest) {
  return {head, pointer_pack_of(rest...)};
}

/// Whether the tiled walk below copies a view through a buffer: unless its entries are adjacent along the
/// walk's inner dimension (rows when rows_fast), which a view stored in the other order, or with a
/// step between entries (every other row), is not.
template <class T>
bool needs_staging(const matrix_view<T>& v, bool rows_fast) noexcept {
  return (rows_fast ? v.col_stride : v.row_stride) != 1;
}

/// Whether the tiled walk would copy one view twice (for_each_entry may be given the same view twice):
/// the two copies would not see each other's writes, so such a pass takes the entry-by-entry walk.
template <class... T>
bool stages_a_view_twice(bool rows_fast, const matrix_view<T>&... xs) noexcept {
  const void* const data[] = {static_cast<const void*>(xs.data)...};
  const bool staged[] = {needs_staging(xs, rows_fast)...};
  for (std::size_t i = 0; i < sizeof...(T); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (data[i] == data[j] && (staged[i] || staged[j])) return true;
  return false;
}

/// Whether an element-wise pass over these same-shape views (the first sets the walk's order) takes the
/// tiled walk below: their storage orders differ, and no view would be staged twice.
template <class T0, class... T>
bool walks_in_tiles(const matrix_view<T0>& first, const matrix_view<T>&... rest) noexcept {
  return !orders_agree(first, rest...) && !stages_a_view_twice(walks_rows(first), first, rest...);
}

/// One view's part of a tile of the walk below: the view's block itself when its entries are adjacent
/// along the walk, else a copy of the block laid out that way (read along the block's own unit stride,
/// written back the same way when the view is mutable).
template <class T>
struct tile_operand {
  matrix_view<T> block;
  matrix_view<T> view;
  bool staged = false;
  tile_operand(matrix_view<T> whole, std::remove_const_t<T>* buffer, bool rows_fast, index_t i0, index_t j0, index_t h,
               index_t w)
      : block(whole.block(i0, j0, h, w)), view(block), staged(needs_staging(whole, rows_fast)) {
    if (!staged) return;
    view = rows_fast ? matrix_view<T>(buffer, h, w, w, 1) : matrix_view<T>(buffer, h, w, 1, h);
    if (stored_the_other_way(rows_fast)) {
      // The block's lines run across the buffer's: a transpose (src rows are the block's columns when
      // the walk is along rows).
      if (rows_fast) transpose_copy(block.data, block.col_stride, buffer, w, h, w);
      else transpose_copy(block.data, block.row_stride, buffer, h, w, h);
      return;
    }
    if (rows_fast) {
      for (index_t j = 0; j < w; ++j)
        for (index_t i = 0; i < h; ++i) buffer[i * w + j] = block(i, j);
    } else {
      for (index_t i = 0; i < h; ++i)
        for (index_t j = 0; j < w; ++j) buffer[i + j * h] = block(i, j);
    }
  }
  /// Whether the block's entries are adjacent across the walk (a view stored in the other order, with no
  /// step between entries): then a copy is a transpose.
  [[nodiscard]] bool stored_the_other_way(bool rows_fast) const noexcept {
    return (rows_fast ? block.row_stride : block.col_stride) == 1;
  }
  void write_back(bool rows_fast) const {
    if constexpr (!std::is_const_v<T>) {
      if (!staged) return;
      if (stored_the_other_way(rows_fast)) {
        if (rows_fast) transpose_copy(view.data, view.row_stride, block.data, block.col_stride, block.cols, block.rows);
        else transpose_copy(view.data, view.col_stride, block.data, block.row_stride, block.rows, block.cols);
        return;
      }
      if (rows_fast) {
        for (index_t j = 0; j < block.cols; ++j)
          for (index_t i = 0; i < block.rows; ++i) block(i, j) = view(i, j);
      } else {
        for (index_t i = 0; i < block.rows; ++i)
          for (index_t j = 0; j < block.cols; ++j) block(i, j) = view(i, j);
      }
    } else {
      (void)rows_fast;
    }
  }
};

/// for_each_entry over views stored in different orders (a column-major parameter beside a row-major
/// state). A walk along one view's unit stride would cross the others' rows or columns, a new cache line
/// for each entry, at strides that are often multiples of 4 KiB and so fall into one cache set (measured:
/// an AdamW step on a column-major 1024×4096 float matrix, one thread, took 16 ns per entry against 1.1
/// row-major; on another machine, the numbers of docs/benchmarks.md). Instead, tiles of 64×64 (faster
/// than 32 or 128 there): the views stored in the first view's order are walked in place, the others
/// copied into a small buffer (transpose_copy) and the mutable ones copied back (f, element-wise
/// arithmetic, does not throw). Bands of tile rows are split over the handle's threads; each entry is
/// still visited exactly once.
template <class F, class... T>
void for_each_entry_tiled(const eigen_backend& be, const F& f, matrix_view<T>... xs) {
  constexpr index_t tile = 64;
  const auto& first = first_of(xs...);
  const bool rows_fast = walks_rows(first);
  const index_t rows = first.rows, cols = first.cols, bands = (rows + tile - 1) / tile;
  const int parts = static_cast<int>(std::min<index_t>(elementwise_threads(be, first.size()), bands));
  parallel_for_threads(parts, [&](int t) {
    // A tile of every operand's element type on this thread's stack, left uninitialized (a staged tile is
    // filled before it is read); 16 KiB per float operand.
    alignas(64) unsigned char storage[tile * tile * (sizeof(std::remove_const_t<T>) + ...)];
    unsigned char* cursor = storage;
    const auto take = [&](auto type) {
      using U = typename decltype(type)::type;
      U* p = reinterpret_cast<U*>(cursor);
      cursor += tile * tile * sizeof(U);
      return p;
    };
    // Braced initialization evaluates left to right: operand k gets the k-th tile of the storage.
    const std::tuple<std::remove_const_t<T>*...> buffers{take(std::type_identity<std::remove_const_t<T>>{})...};
    for (index_t b = split_point(bands, parts, t), end = split_point(bands, parts, t + 1); b < end; ++b) {
      const index_t i0 = b * tile, h = std::min(tile, rows - i0);
      for (index_t j0 = 0; j0 < cols; j0 += tile) {
        const index_t w = std::min(tile, cols - j0);
        std::apply(
            [&](auto*... buffer) {
              const std::tuple<tile_operand<T>...> operands{tile_operand<T>(xs, buffer, rows_fast, i0, j0, h, w)...};
              std::apply(
                  [&](const auto&... op) {
                    // Every operand now runs along the walk's unit stride: one vectorizable pass per line.
                    if (rows_fast) {
                      for (index_t i = 0; i < h; ++i) entries_in_range(f, pointer_pack_of(&op.view(i, 0)...), 0, w);
                    } else {
                      for (index_t j = 0; j < w; ++j) entries_in_range(f, pointer_pack_of(&op.view(0, j)...), 0, h);
                    }
                    (op.write_back(rows_fast), ...);
                  },
                  operands);
            },
            buffers);
      }
    }
  });
}
}  // namespace detail

/// Y(i,j) ← f(X(i,j)). Y may be X itself (in place); partial overlap is not allowed.
template <class T, class U, class F>
void transform(eigen_backend& be, matrix_view<T> X, matrix_view<U> Y, F f) {
  if (detail::walks_in_tiles(Y, X)) {
    detail::for_each_entry_tiled(be, [&f](U& y, const T& x) { y = static_cast<U>(f(x)); }, Y, X);
    return;
  }
  struct visitor {
    matrix_view<T> X;
    matrix_view<U> Y;
    F f;
    void linear(index_t begin, index_t end) const {
      const auto* x = X.data;
      U* y = Y.data;
      for (index_t p = begin; p < end; ++p) y[p] = static_cast<U>(f(x[p]));
    }
    void operator()(index_t i, index_t j) const { Y(i, j) = static_cast<U>(f(X(i, j))); }
  } v{X, Y, f};
  detail::for_each_index(be, Y, v, X);
}

/// Z(i,j) ← f(X(i,j), Y(i,j)). Z may be X or Y.
template <class T, class U, class V, class F>
void transform(eigen_backend& be, matrix_view<T> X, matrix_view<U> Y, matrix_view<V> Z, F f) {
  if (detail::walks_in_tiles(Z, X, Y)) {
    detail::for_each_entry_tiled(be, [&f](V& z, const T& x, const U& y) { z = static_cast<V>(f(x, y)); }, Z, X, Y);
    return;
  }
  struct visitor {
    matrix_view<T> X;
    matrix_view<U> Y;
    matrix_view<V> Z;
    F f;
    void linear(index_t begin, index_t end) const {
      const auto* x = X.data;
      const auto* y = Y.data;
      V* z = Z.data;
      for (index_t p = begin; p < end; ++p) z[p] = static_cast<V>(f(x[p], y[p]));
    }
    void operator()(index_t i, index_t j) const { Z(i, j) = static_cast<V>(f(X(i, j), Y(i, j))); }
  } v{X, Y, Z, f};
  detail::for_each_index(be, Z, v, X, Y);
}

/// f(X0(i,j), X1(i,j), …) once per entry, with a reference into every view (entries of a mutable view
/// may be written): several element-wise stages fused into one pass over memory. The views must not
/// overlap partially; two may be the same view.
template <class F, class... T>
void for_each_entry(eigen_backend& be, F f, matrix_view<T>... Xs) {
  static_assert(sizeof...(T) > 0, "for_each_entry needs at least one view");
  if (detail::walks_in_tiles(Xs...)) {
    detail::for_each_entry_tiled(be, f, Xs...);
    return;
  }
  struct visitor {
    F f;
    detail::view_pack<T...> pack;
    void linear(index_t begin, index_t end) const { detail::entries_in_range(f, detail::pointers_of(pack), begin, end); }
    void operator()(index_t i, index_t j) const { detail::call_at_entry(f, pack, i, j); }
  } v{f, detail::view_pack<T...>(Xs...)};
  detail::for_each_index(be, detail::first_of(Xs...), v, Xs...);
}

/// X(:,j) ← d[j]·X(:,j), the product taken in double. Rows: scale_columns(be, d, X.transposed()).
template <class T>
void scale_columns(eigen_backend&, const scalar_t* d, matrix_view<T> X) {
  if (X.col_stride < X.row_stride) {  // row-major: walk along rows, the unit stride
    for (index_t i = 0; i < X.rows; ++i)
      for (index_t j = 0; j < X.cols; ++j) X(i, j) = static_cast<T>(double(X(i, j)) * d[j]);
    return;
  }
  for (index_t j = 0; j < X.cols; ++j)
    for (index_t i = 0; i < X.rows; ++i) X(i, j) = static_cast<T>(double(X(i, j)) * d[j]);
}

/// Backend memory is host memory: a checkpoint's copies are plain memcpy.
inline void copy_to_host(eigen_backend&, void* host_dst, const void* src, std::size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, bytes);
}
inline void copy_from_host(eigen_backend&, void* dst, const void* host_src, std::size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, bytes);
}

/// Runs f() once; on the CPU, backend memory is host memory.
template <class F>
void run_scalar(eigen_backend&, F&& f) {
  f();
}

/// The first entry in row-major order that is NaN or of magnitude above `limit` (Inf when limit is the
/// type's largest value, the default), if any.
template <class T>
std::optional<nonfinite_entry> find_nonfinite(eigen_backend& be, matrix_view<T> X,
                                              double limit = std::numeric_limits<double>::infinity()) {
  // Every step scans every gradient, so the clean case is the one to make fast: one branch-free pass in
  // storage order (it vectorizes); only when it finds something is the first entry located in
  // row-major order, so the reported position does not depend on the storage order.
  using value_t = std::remove_const_t<T>;
  const double type_max = static_cast<double>(std::numeric_limits<value_t>::max());
  // The limit in the element type, rounded down, so that |x| <= largest holds exactly when |x| <= limit
  // (as the CUDA backend's comparison in double does).
  value_t largest = limit >= type_max ? std::numeric_limits<value_t>::max() : static_cast<value_t>(limit);
  if (static_cast<double>(largest) > limit) largest = std::nextafter(largest, value_t(0));
  bool any = false;
  if (X.is_contiguous()) {
    // Split over the handle's threads like the other long passes (every step scans every gradient).
    const T* p = X.data;
    const index_t size = X.rows * X.cols;
    const int parts = detail::elementwise_threads(be, size);
    int bad_in[64] = {};
    const int used = parts < 64 ? parts : 64;
    detail::parallel_for_threads(used, [&](int t) {
      int bad = 0;
      for (index_t k = detail::split_point(size, used, t), end = detail::split_point(size, used, t + 1); k < end; ++k) {
        bad |= !(std::abs(p[k]) <= largest);  // NaN: false
      }
      bad_in[t] = bad;
    });
    for (int t = 0; t < used; ++t) any = any || bad_in[t] != 0;
  } else {
    const matrix_view<T> S = X.col_stride < X.row_stride ? X : X.transposed();  // unit stride innermost
    for (index_t i = 0; i < S.rows && !any; ++i) {
      int bad = 0;
      for (index_t j = 0; j < S.cols; ++j) bad |= !(std::abs(S(i, j)) <= largest);
      any = bad != 0;
    }
  }
  if (!any) return std::nullopt;
  for (index_t i = 0; i < X.rows; ++i)
    for (index_t j = 0; j < X.cols; ++j)
      if (!(std::abs(X(i, j)) <= largest)) return nonfinite_entry{i, j, double(X(i, j))};
  return std::nullopt;
}

}  // namespace orthopt
