// SPDX-License-Identifier: Apache-2.0
//
// The CUDA backend: the primitives of orthopt/backend.hpp on device memory (cuBLAS products, Thrust
// element-wise work and reductions), so that newton_schulz, exact_polar, every rule and optimizer run on
// a GPU unchanged. Include <orthopt/cuda.cuh> from a .cu file compiled by nvcc and link orthopt::cuda.
//
// The contract, in short (docs/cuda.md is the master of the long form: which cuBLAS call serves which
// product, batches, precision, the device status flag, errors, streams, the host emulation):
// - Plans and states allocate when they are made; a Newton–Schulz call, a rule step and
//   optimizer::step then allocate nothing and do not synchronize with the host, except the NaN/Inf
//   check of inputs in its default mode (nonfinite_check::throw_on_host) and checkpoint copies.
// - Norms, reductions and every computed scalar are doubles; bf16 is storage only (arithmetic in float).
// - Reductions are fixed-shape passes without atomics: results do not depend on scheduling.
// - The same source compiles with g++ as the host emulation CI tests (ORTHOPT_CUDA_HOST_EMULATION).
#pragma once

#if !defined(__CUDACC__) && !defined(ORTHOPT_CUDA_HOST_EMULATION)
#error "orthopt's CUDA backend is compiled by nvcc: include <orthopt/cuda.cuh> from a .cu file"
#endif

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <math.h>

#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system_error.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "orthopt/backend.hpp"
#include "orthopt/checkpoint_format.hpp"
#include "orthopt/cuda/errors.hpp"
#include "orthopt/detail/gemm_shape.hpp"
#include "orthopt/view.hpp"

#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#define ORTHOPT_CUDA_ON_DEVICE 1
#else
#define ORTHOPT_CUDA_ON_DEVICE 0
#if !defined(ORTHOPT_CUDA_HOST_EMULATION)
#error "orthopt's CUDA backend needs Thrust's CUDA device system (or ORTHOPT_CUDA_HOST_EMULATION for tests)"
#endif
#endif

namespace orthopt {

/// bf16 storage (the CUDA backend's third element type besides float and double).
using bfloat16 = __nv_bfloat16;

/// bf16 is a storage type: arithmetic on it runs in float.
template <>
struct compute_type<__nv_bfloat16> {
  using type = float;
};

/// The unit roundoff of bf16 (8 significand bits): 2⁻⁷ between 1 and the next value.
template <>
struct storage_epsilon<__nv_bfloat16> {
  static constexpr double value = 0.0078125;
};

/// The largest finite bf16: (2 − 2⁻⁷)·2¹²⁷.
template <>
struct storage_max<__nv_bfloat16> {
  static constexpr double value = 3.3895313892515355e38;
};

namespace checkpoint_format {
template <>
struct element_code_of<__nv_bfloat16> {
  static constexpr std::uint32_t value = element_bfloat16;
};
}  // namespace checkpoint_format

/// How find_nonfinite reports a NaN or Inf (see the header comment).
enum class nonfinite_check : unsigned char {
  throw_on_host,   ///< read the result back (one synchronization) and let the caller throw; the default
  flag_on_device,  ///< record the first bad entry in the device status record; no synchronization
};

/// The device status record of a CUDA backend context, as read back by cuda_backend::read_status().
/// `failed_checks` counts the checks that found a NaN or Inf since the last clear_status(); row, col
/// and value describe the first one (row-major position within the checked matrix).
struct device_status {
  std::int64_t failed_checks = 0;
  std::int64_t row = -1;
  std::int64_t col = -1;
  double value = 0.0;
};

namespace detail {

/// Every device allocation the backend makes (process-wide): the GPU tests check that steps make none.
inline std::atomic<std::int64_t>& cuda_allocation_counter() noexcept {
  static std::atomic<std::int64_t> count{0};
  return count;
}

/// Owning device memory from cudaMalloc, zero-initialized unless asked otherwise; freed with cudaFree.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n, bool zero = true) : size_(n) {
    if (n == 0) return;
    void* p = nullptr;
    ORTHOPT_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    data_.reset(static_cast<T*>(p));
    cuda_allocation_counter().fetch_add(1, std::memory_order_relaxed);
    if (zero) {
      // cudaMemset is asynchronous to the host and ordered on the default stream only: wait for it, so
      // that work on any other stream sees zeros (setup time, not a step).
      ORTHOPT_CUDA_CHECK(cudaMemset(p, 0, n * sizeof(T)));
      ORTHOPT_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    }
  }
  [[nodiscard]] T* data() noexcept { return data_.get(); }
  [[nodiscard]] const T* data() const noexcept { return data_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  struct deleter {
    void operator()(T* p) const noexcept { (void)cudaFree(p); }
  };
  std::unique_ptr<T, deleter> data_;
  std::size_t size_ = 0;
};

/// One partial result of a reduction pass (its meaning depends on the reduction).
struct reduce_partial {
  double a = 0.0, b = 0.0, c = 0.0, d = 0.0;
};

/// The reductions' pass shapes. On a GPU the first pass uses many threads, each reading elements
/// `parts` apart (coalesced); on the host emulation a few threads each read one contiguous chunk.
/// Measured on an H200 (docs/benchmarks-gpu.md): with these GPU shapes, 16384 threads of up to 1024
/// elements, the first pass of a 4096² norm takes 915 µs, a fifth of a Newton–Schulz call: one serial
/// chain per thread at a fraction of the machine's occupancy. A wider first pass (more threads, then a
/// further folding pass) is the next step; it changes what runs on the GPU, so it waits for a GPU to
/// measure and test it.
#if ORTHOPT_CUDA_ON_DEVICE
inline constexpr index_t reduce_first_parts = 16384;
inline constexpr index_t reduce_second_parts = 128;
inline constexpr bool reduce_interleaved = true;
#else
inline constexpr index_t reduce_first_parts = 64;
inline constexpr index_t reduce_second_parts = 4;
inline constexpr bool reduce_interleaved = false;
#endif
inline constexpr index_t reduce_elements_per_part = 256;

struct cuda_context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  device_buffer<unsigned char> blas_workspace;
  device_buffer<reduce_partial> partials;  // first pass, then second pass
  device_buffer<device_status> status;     // [0]: the flag record; [1]: the last throw_on_host check
  nonfinite_check nonfinite = nonfinite_check::throw_on_host;

  cuda_context() = default;
  cuda_context(const cuda_context&) = delete;
  cuda_context& operator=(const cuda_context&) = delete;
  ~cuda_context() {
    if (solver != nullptr) (void)cusolverDnDestroy(solver);
    if (blas != nullptr) (void)cublasDestroy(blas);
  }
};

}  // namespace detail

/// The CUDA backend handle. Copies share one context (stream, cuBLAS handle, workspace, status), so the
/// plans and states made from one handle run in order on its stream. One context must not be used by
/// two host threads at once.
class cuda_backend {
 public:
  template <class T>
  using buffer = detail::device_buffer<T>;
  /// Batched primitives run a whole batch in one launch: rules orthogonalize a batch together.
  static constexpr bool batches_products = true;
  /// The thin SVD used by exact_polar (cuSOLVER gesvd), defined in orthopt/cuda/svd.hpp.
  template <class T>
  class svd_workspace;

  struct settings {
    /// The stream every kernel, cuBLAS and cuSOLVER call of this context runs on (nullptr: the legacy
    /// default stream, which cannot be captured in a CUDA graph; pass a stream of your own for that).
    cudaStream_t stream = nullptr;
    /// cuBLAS's workspace, owned by the context (cublasSetWorkspace); NVIDIA recommends 32 MiB on Hopper.
    std::size_t cublas_workspace_bytes = std::size_t{32} << 20;
    nonfinite_check nonfinite = nonfinite_check::throw_on_host;
  };

  cuda_backend() : cuda_backend(settings{}) {}
  explicit cuda_backend(cudaStream_t stream) : cuda_backend(settings{stream}) {}
  explicit cuda_backend(const settings& s) : ctx_(std::make_shared<detail::cuda_context>()) {
    ctx_->stream = s.stream;
    ctx_->nonfinite = s.nonfinite;
    ORTHOPT_CUDA_CHECK(cublasCreate(&ctx_->blas));
    ORTHOPT_CUDA_CHECK(cublasSetStream(ctx_->blas, s.stream));
    if (s.cublas_workspace_bytes > 0) {
      ctx_->blas_workspace = buffer<unsigned char>(s.cublas_workspace_bytes, /*zero=*/false);
      ORTHOPT_CUDA_CHECK(cublasSetWorkspace(ctx_->blas, ctx_->blas_workspace.data(), s.cublas_workspace_bytes));
    }
    ctx_->partials = buffer<detail::reduce_partial>(
        static_cast<std::size_t>(detail::reduce_first_parts + detail::reduce_second_parts));
    ctx_->status = buffer<device_status>(2);
    clear_status();
    synchronize();
  }

  [[nodiscard]] cudaStream_t stream() const noexcept { return ctx_->stream; }
  [[nodiscard]] cublasHandle_t cublas() const noexcept { return ctx_->blas; }
  /// The cuSOLVER handle, created on first use (by an exact_polar plan's setup) on the same stream.
  [[nodiscard]] cusolverDnHandle_t cusolver() const {
    if (ctx_->solver == nullptr) {
      ORTHOPT_CUDA_CHECK(cusolverDnCreate(&ctx_->solver));
      ORTHOPT_CUDA_CHECK(cusolverDnSetStream(ctx_->solver, ctx_->stream));
    }
    return ctx_->solver;
  }

  template <class T>
  [[nodiscard]] buffer<T> allocate(index_t n) const {
    return buffer<T>(static_cast<std::size_t>(n));
  }

  [[nodiscard]] nonfinite_check nonfinite_mode() const noexcept { return ctx_->nonfinite; }
  void set_nonfinite_check(nonfinite_check mode) noexcept { ctx_->nonfinite = mode; }

  /// The device status record (flag_on_device results), copied to the host: waits for the stream.
  [[nodiscard]] device_status read_status() const {
    device_status s;
    ORTHOPT_CUDA_CHECK(cudaMemcpyAsync(&s, ctx_->status.data(), sizeof(s), cudaMemcpyDeviceToHost, ctx_->stream));
    synchronize();
    return s;
  }
  /// Where the status record lives on the device (a host may copy it itself, e.g. into pinned memory).
  [[nodiscard]] const device_status* status_on_device() const noexcept { return ctx_->status.data(); }
  /// Resets the status record, in stream order (no synchronization).
  void clear_status() {
    static constexpr device_status empty{};
    ORTHOPT_CUDA_CHECK(cudaMemcpyAsync(ctx_->status.data(), &empty, sizeof(empty), cudaMemcpyHostToDevice,
                                       ctx_->stream));
  }

  /// Waits until everything queued on the context's stream has run.
  void synchronize() const { ORTHOPT_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream)); }

  /// Device allocations made by orthopt's CUDA buffers in this process so far.
  [[nodiscard]] static std::int64_t device_allocations() noexcept {
    return detail::cuda_allocation_counter().load(std::memory_order_relaxed);
  }

  // Internal: the reductions' scratch and the status record.
  [[nodiscard]] detail::reduce_partial* partials() const noexcept { return ctx_->partials.data(); }
  [[nodiscard]] device_status* status_record() const noexcept { return ctx_->status.data(); }

 private:
  std::shared_ptr<detail::cuda_context> ctx_;
};

namespace detail {

// ---------------------------------------------------------------------------------------------------
// Launching: every kernel of the backend is thrust::for_each_n over [0, n) with a functor
// ---------------------------------------------------------------------------------------------------
template <class F>
void cuda_launch(const cuda_backend& be, index_t n, const F& f) {
  if (n <= 0) return;
  try {
#if ORTHOPT_CUDA_ON_DEVICE
    thrust::for_each_n(thrust::cuda::par_nosync.on(be.stream()), thrust::counting_iterator<index_t>(0), n, f);
#else
    (void)be;
    thrust::for_each_n(thrust::device, thrust::counting_iterator<index_t>(0), n, f);
#endif
  } catch (const thrust::system_error& e) {
    throw cuda_error(std::string("orthopt: a kernel launch failed: ") + e.what(), "thrust::system_error",
                     e.code().value());
  }
}

ORTHOPT_HD inline bool finite(double x) noexcept { return x - x == 0.0; }  // false for NaN and ±Inf
ORTHOPT_HD inline double magnitude(double x) noexcept { return x < 0.0 ? -x : x; }

/// Maps a linear index p over a rows×cols view to (i, j): the whole range in storage order.
struct element_walk {
  index_t rows = 0, cols = 0;
  bool linear = false;     // every view is contiguous with the same strides: element p is data[p]
  bool col_order = false;  // walk columns fastest-changing in i (column-major storage)
  ORTHOPT_HD void locate(index_t p, index_t& i, index_t& j) const {
    if (col_order) {
      j = p / rows;
      i = p - j * rows;
    } else {
      i = p / cols;
      j = p - i * cols;
    }
  }
};

template <class V0, class... V>
element_walk walk_of(const V0& first, const V&... rest) {
  element_walk w;
  w.rows = first.rows;
  w.cols = first.cols;
  w.linear = first.is_contiguous() && ((rest.is_contiguous() && rest.row_stride == first.row_stride &&
                                        rest.col_stride == first.col_stride) &&
                                       ...);
  w.col_order = first.row_stride < first.col_stride;
  return w;
}

template <class T, class U, class F>
struct map1_kernel {
  matrix_view<T> X;
  matrix_view<U> Y;
  F f;
  element_walk w;
  ORTHOPT_HD void operator()(index_t p) const {
    if (w.linear) {
      Y.data[p] = static_cast<U>(f(X.data[p]));
      return;
    }
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    Y(i, j) = static_cast<U>(f(X(i, j)));
  }
};

template <class T, class U, class V, class F>
struct map2_kernel {
  matrix_view<T> X;
  matrix_view<U> Y;
  matrix_view<V> Z;
  F f;
  element_walk w;
  ORTHOPT_HD void operator()(index_t p) const {
    if (w.linear) {
      Z.data[p] = static_cast<V>(f(X.data[p], Y.data[p]));
      return;
    }
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    Z(i, j) = static_cast<V>(f(X(i, j), Y(i, j)));
  }
};

/// for_each_entry: f on the entry p of every view (element_walk of the first).
template <class F, class... T>
struct entry_kernel {
  F f;
  view_pack<T...> views;
  element_walk w;
  ORTHOPT_HD void operator()(index_t p) const {
    if (w.linear) {
      call_at_offset(f, pointers_of(views), p);
      return;
    }
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    call_at_entry(f, views, i, j);
  }
};

template <class T>
struct scale_columns_kernel {
  const scalar_t* d;
  matrix_view<T> X;
  element_walk w;
  ORTHOPT_HD void operator()(index_t p) const {
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    X(i, j) = static_cast<T>(static_cast<scalar_t>(X(i, j)) * d[j]);
  }
};

/// C ← β·C (β = 0 writes zeros, whatever C held).
template <class T>
struct scale_kernel {
  matrix_view<T> C;
  compute_t<T> beta;
  element_walk w;
  ORTHOPT_HD void operator()(index_t p) const {
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    C(i, j) = beta == compute_t<T>(0) ? static_cast<T>(0.0f) : static_cast<T>(beta * widen(C(i, j)));
  }
};

template <class F>
struct scalar_kernel {
  F f;
  ORTHOPT_HD void operator()(index_t) const { f(); }
};

/// upper(C) ← lower(C)ᵀ for an n×n view.
template <class T>
struct mirror_kernel {
  matrix_view<T> C;
  ORTHOPT_HD void operator()(index_t p) const {
    const index_t j = p / C.rows, i = p - j * C.rows;
    if (i < j) C(i, j) = C(j, i);
  }
};

/// upper(C[k]) ← lower(C[k])ᵀ for the `count` n×n matrices C.data + k·batch_stride. One thread per entry:
/// the reads run along the unit stride and the writes across it, which on an H200 cost 67 µs for a
/// 4096² bf16 matrix (two per Newton–Schulz step: a seventh of the call). A shared-memory tiled
/// transpose would coalesce both; it needs a GPU to be tested, so it waits for one.
template <class T>
void mirror_lower(const cuda_backend& be, matrix_view<T> C, index_t count, index_t batch_stride);

/// The accumulator type of the plain product kernel: double for double, float otherwise.
template <class T>
using accumulate_t = std::conditional_t<std::is_same_v<std::remove_cv_t<T>, double>, double, float>;

/// C ← α·L·R + β·C, one thread per entry of C: for views cuBLAS cannot take (no unit stride).
template <class T>
struct plain_gemm_kernel {
  const_matrix_view<T> L, R;
  matrix_view<T> C;
  compute_t<T> alpha, beta;
  bool lower_only;  // syrk: compute the lower triangle only (the mirror fills the rest)
  ORTHOPT_HD void operator()(index_t p) const {
    const index_t j = p / C.rows, i = p - j * C.rows;
    if (lower_only && i < j) return;
    accumulate_t<T> acc = 0;
    for (index_t q = 0; q < L.cols; ++q) acc += static_cast<accumulate_t<T>>(L(i, q)) * static_cast<accumulate_t<T>>(R(q, j));
    const compute_t<T> prior = beta == compute_t<T>(0) ? compute_t<T>(0) : beta * widen(C(i, j));
    C(i, j) = static_cast<T>(alpha * static_cast<compute_t<T>>(acc) + prior);
  }
};

// ---------------------------------------------------------------------------------------------------
// Reductions: pass 1 reduces the elements into `first_parts` partials, pass 2 those into
// `second_parts`, pass 3 (one thread) combines them and finishes. Fixed shapes, no atomics.
// An Op provides: reduce_partial load(index_t p) (element p of the walk), static combine(a, b), and
// finish(reduce_partial) (writes the result where it belongs). The empty partial {0, 0, 0} is neutral.
// ---------------------------------------------------------------------------------------------------
template <class Op>
struct reduce_first_pass {
  Op op;
  reduce_partial* out;
  index_t n, parts;
  ORTHOPT_HD void operator()(index_t t) const {
    reduce_partial acc{};
    if (reduce_interleaved) {
      for (index_t p = t; p < n; p += parts) acc = Op::combine(acc, op.load(p));
    } else {
      const index_t begin = n * t / parts, end = n * (t + 1) / parts;
      for (index_t p = begin; p < end; ++p) acc = Op::combine(acc, op.load(p));
    }
    out[t] = acc;
  }
};

template <class Op>
struct reduce_second_pass {
  const reduce_partial* in;
  reduce_partial* out;
  index_t n, parts;
  ORTHOPT_HD void operator()(index_t t) const {
    reduce_partial acc{};
    for (index_t p = t; p < n; p += parts) acc = Op::combine(acc, in[p]);
    out[t] = acc;
  }
};

template <class Op>
struct reduce_last_pass {
  Op op;
  const reduce_partial* in;
  index_t n;
  ORTHOPT_HD void operator()(index_t) const {
    reduce_partial acc{};
    for (index_t p = 0; p < n; ++p) acc = Op::combine(acc, in[p]);
    op.finish(acc);
  }
};

template <class Op>
void cuda_reduce(const cuda_backend& be, index_t n, const Op& op) {
  const index_t first = std::clamp<index_t>((n + reduce_elements_per_part - 1) / reduce_elements_per_part, 1,
                                            reduce_first_parts);
  const index_t second = std::min<index_t>(first, reduce_second_parts);
  reduce_partial* p1 = be.partials();
  reduce_partial* p2 = p1 + reduce_first_parts;
  cuda_launch(be, first, reduce_first_pass<Op>{op, p1, n, first});
  cuda_launch(be, second, reduce_second_pass<Op>{p1, p2, first, second});
  cuda_launch(be, 1, reduce_last_pass<Op>{op, p2, second});
}

/// Reads element p of a walk over X as a double.
template <class T>
ORTHOPT_HD double element_at(const matrix_view<T>& X, const element_walk& w, index_t p) {
  if (w.linear) return static_cast<double>(static_cast<compute_t<T>>(X.data[p]));
  index_t i = 0, j = 0;
  w.locate(p, i, j);
  return static_cast<double>(static_cast<compute_t<T>>(X(i, j)));
}

/// A sum of squares for ‖x‖, accurate for every finite double, as the CPU backend computes it: the
/// plain sum in double (a) when it lies in [1e-280, 1e280], else the scaled sum of LAPACK's nrm2
/// (‖x‖ = b·√c), which neither overflows nor underflows. d collects |x| of non-finite entries (NaN if any
/// is NaN, else Inf if any is Inf, else 0), which is then the norm.
struct norm_sum {
  ORTHOPT_HD static reduce_partial of(double x, bool scaled) {
    if (!finite(x)) return {0.0, 0.0, 0.0, magnitude(x)};
    if (x == 0.0) return {};
    if (!scaled) return {x * x, 0.0, 0.0, 0.0};
    return {x * x, magnitude(x), 1.0, 0.0};
  }
  ORTHOPT_HD static reduce_partial combine(reduce_partial p, reduce_partial q) {
    reduce_partial r{p.a + q.a, 0.0, 0.0, p.d + q.d};
    if (p.b < q.b) {
      const reduce_partial t = p;
      p = q;
      q = t;
    }
    if (p.b > 0.0) {
      const double ratio = q.b / p.b;
      r.b = p.b;
      r.c = p.c + q.c * ratio * ratio;
    }
    return r;
  }
  ORTHOPT_HD static double value(reduce_partial p) {
    if (p.d != 0.0) return p.d;
    if (p.b == 0.0 || (p.a > 1e-280 && p.a < 1e280)) return ::sqrt(p.a);
    return p.b * ::sqrt(p.c);
  }
};

/// ‖X‖_F. For float and bf16 data the plain double sum of squares cannot overflow or underflow (their
/// squares span about 1e±90), so the scaled sum is kept for double data only.
template <class T>
struct frobenius_op {
  matrix_view<T> X;
  element_walk w;
  scalar_t* out;
  static constexpr bool scaled = std::is_same_v<std::remove_cv_t<T>, double>;
  ORTHOPT_HD reduce_partial load(index_t p) const { return norm_sum::of(element_at(X, w, p), scaled); }
  ORTHOPT_HD static reduce_partial combine(reduce_partial p, reduce_partial q) { return norm_sum::combine(p, q); }
  ORTHOPT_HD void finish(reduce_partial p) const { out[0] = norm_sum::value(p); }
};

/// The first NaN/Inf (or entry of magnitude above `limit`) in row-major order: partial = (row-major
/// position, value, found).
template <class T>
struct nonfinite_op {
  matrix_view<T> X;
  element_walk w;
  device_status* record;
  bool flag;       // flag_on_device: merge into the flag record; else overwrite the throw_on_host record
  bool row_major;  // X.is_row_major(), taken on the host
  double limit;    // +Inf: NaN and ±Inf only
  ORTHOPT_HD reduce_partial load(index_t p) const {
    const double x = element_at(X, w, p);
    if (finite(x) && (x <= limit && -x <= limit)) return {};
    index_t i = 0, j = 0;
    if (!w.linear) {
      w.locate(p, i, j);
    } else if (row_major) {  // data[p] of contiguous row-major storage
      i = p / X.cols;
      j = p - i * X.cols;
    } else {  // data[p] of contiguous column-major storage
      j = p / X.rows;
      i = p - j * X.rows;
    }
    return {static_cast<double>(i * X.cols + j), x, 1.0};
  }
  ORTHOPT_HD static reduce_partial combine(reduce_partial p, reduce_partial q) {
    if (p.c == 0.0) return q;
    if (q.c == 0.0) return p;
    return p.a <= q.a ? p : q;
  }
  ORTHOPT_HD void finish(reduce_partial p) const {
    const std::int64_t key = static_cast<std::int64_t>(p.a);
    const std::int64_t row = p.c != 0.0 ? key / X.cols : -1;
    const std::int64_t col = p.c != 0.0 ? key - row * X.cols : -1;
    if (!flag) {
      record->failed_checks = p.c != 0.0 ? 1 : 0;
      record->row = row;
      record->col = col;
      record->value = p.b;
      return;
    }
    if (p.c == 0.0) return;
    if (record->failed_checks == 0) {
      record->row = row;
      record->col = col;
      record->value = p.b;
    }
    record->failed_checks += 1;
  }
};

/// Column j's l1 or l2 norm, one thread per column.
template <class T>
struct column_norm_kernel {
  matrix_view<T> X;
  scalar_t* out;
  bool l1;
  ORTHOPT_HD void operator()(index_t j) const {
    if (l1) {
      double s = 0.0;
      for (index_t i = 0; i < X.rows; ++i) s += magnitude(static_cast<double>(static_cast<compute_t<T>>(X(i, j))));
      out[j] = s;
      return;
    }
    constexpr bool scaled = std::is_same_v<std::remove_cv_t<T>, double>;
    reduce_partial acc{};
    for (index_t i = 0; i < X.rows; ++i) {
      acc = norm_sum::combine(acc, norm_sum::of(static_cast<double>(static_cast<compute_t<T>>(X(i, j))), scaled));
    }
    out[j] = norm_sum::value(acc);
  }
};

// ---------------------------------------------------------------------------------------------------
// cuBLAS operands
// ---------------------------------------------------------------------------------------------------
/// A matrix operand as cuBLAS takes it (column-major storage S, op(S) = the view).
struct cublas_operand {
  const void* data;
  int ld;
  bool transposed;
};

inline bool fits_int(index_t v) noexcept { return v >= 0 && v <= static_cast<index_t>(INT_MAX); }

template <class T>
std::optional<cublas_operand> as_cublas_operand(const_matrix_view<T> v) {
  if (v.row_stride == 1 || v.rows == 1) {
    const index_t ld = v.cols <= 1 ? std::max<index_t>(v.rows, 1) : v.col_stride;
    if (ld < std::max<index_t>(v.rows, 1) || !fits_int(ld)) return std::nullopt;
    return cublas_operand{v.data, static_cast<int>(ld), false};
  }
  if (v.col_stride == 1 || v.cols == 1) {
    const index_t ld = v.rows <= 1 ? std::max<index_t>(v.cols, 1) : v.row_stride;
    if (ld < std::max<index_t>(v.cols, 1) || !fits_int(ld)) return std::nullopt;
    return cublas_operand{v.data, static_cast<int>(ld), true};
  }
  return std::nullopt;
}

inline cublasOperation_t cublas_op(bool transposed) noexcept { return transposed ? CUBLAS_OP_T : CUBLAS_OP_N; }

template <class T>
inline constexpr bool cublas_native = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                      std::is_same_v<T, __nv_bfloat16>;

template <class T>
void cuda_scale(cuda_backend& be, matrix_view<T> C, compute_t<T> beta) {
  if (beta == compute_t<T>(1)) return;
  cuda_launch(be, C.size(), scale_kernel<T>{C, beta, walk_of(C)});
}

/// The cuBLAS call for C(m×n, column-major, ldc) ← α·op(L)·op(R) + β·C.
template <class T>
void cublas_gemm(cuda_backend& be, int m, int n, int k, compute_t<T> alpha, cublas_operand l, cublas_operand r,
                 compute_t<T> beta, T* c, int ldc) {
  const cublasOperation_t ol = cublas_op(l.transposed), orr = cublas_op(r.transposed);
  if constexpr (std::is_same_v<T, float>) {
    ORTHOPT_CUDA_CHECK(cublasSgemm(be.cublas(), ol, orr, m, n, k, &alpha, static_cast<const float*>(l.data), l.ld,
                                   static_cast<const float*>(r.data), r.ld, &beta, c, ldc));
  } else if constexpr (std::is_same_v<T, double>) {
    ORTHOPT_CUDA_CHECK(cublasDgemm(be.cublas(), ol, orr, m, n, k, &alpha, static_cast<const double*>(l.data), l.ld,
                                   static_cast<const double*>(r.data), r.ld, &beta, c, ldc));
  } else {
    ORTHOPT_CUDA_CHECK(cublasGemmEx(be.cublas(), ol, orr, m, n, k, &alpha, l.data, CUDA_R_16BF, l.ld, r.data,
                                    CUDA_R_16BF, r.ld, &beta, c, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
  }
}

/// A batch of reductions (one per matrix of a batch): pass 1 gives each matrix `parts` partials, pass 2
/// (one thread per matrix) combines them and finishes. An Op here provides load(k, p) and finish(k, partial).
template <class Op>
struct batch_reduce_first_pass {
  Op op;
  reduce_partial* out;
  index_t n, parts;
  ORTHOPT_HD void operator()(index_t tk) const {
    const index_t k = tk / parts, t = tk - k * parts;
    reduce_partial acc{};
    if (reduce_interleaved) {
      for (index_t p = t; p < n; p += parts) acc = Op::combine(acc, op.load(k, p));
    } else {
      const index_t begin = n * t / parts, end = n * (t + 1) / parts;
      for (index_t p = begin; p < end; ++p) acc = Op::combine(acc, op.load(k, p));
    }
    out[tk] = acc;
  }
};
template <class Op>
struct batch_reduce_last_pass {
  Op op;
  const reduce_partial* in;
  index_t parts;
  ORTHOPT_HD void operator()(index_t k) const {
    reduce_partial acc{};
    for (index_t t = 0; t < parts; ++t) acc = Op::combine(acc, in[k * parts + t]);
    op.finish(k, acc);
  }
};

/// ‖X[k]‖_F for every matrix of a batch.
template <class T>
struct batch_frobenius_op {
  frobenius_op<T> one;  // X = the first matrix; out = the first result
  index_t batch_stride;
  ORTHOPT_HD reduce_partial load(index_t k, index_t p) const {
    frobenius_op<T> m = one;
    m.X.data += k * batch_stride;
    return m.load(p);
  }
  ORTHOPT_HD static reduce_partial combine(reduce_partial p, reduce_partial q) { return frobenius_op<T>::combine(p, q); }
  ORTHOPT_HD void finish(index_t k, reduce_partial p) const {
    frobenius_op<T> m = one;
    m.out += k;
    m.finish(p);
  }
};

/// Y[k](i,j) ← f.at(k)(X[k](i,j)) over a whole batch in one launch.
template <class T, class U, class F>
struct batch_map1_kernel {
  matrix_view<T> X;
  matrix_view<U> Y;
  index_t x_stride, y_stride;
  F f;
  element_walk w;
  ORTHOPT_HD void operator()(index_t q) const {
    const index_t size = w.rows * w.cols;
    const index_t k = q / size, p = q - k * size;
    const auto fk = bind_matrix(f, k);
    const T* x = X.data + k * x_stride;
    U* y = Y.data + k * y_stride;
    if (w.linear) {
      y[p] = static_cast<U>(fk(x[p]));
      return;
    }
    index_t i = 0, j = 0;
    w.locate(p, i, j);
    y[i * Y.row_stride + j * Y.col_stride] = static_cast<U>(fk(x[i * X.row_stride + j * X.col_stride]));
  }
};

/// upper(C[k]) ← lower(C[k])ᵀ for every matrix of a batch.
template <class T>
struct batch_mirror_kernel {
  matrix_view<T> C;
  index_t stride;
  ORTHOPT_HD void operator()(index_t q) const {
    const index_t size = C.rows * C.rows;
    const index_t k = q / size, p = q - k * size;
    const index_t j = p / C.rows, i = p - j * C.rows;
    if (i < j) {
      T* c = C.data + k * stride;
      c[i * C.row_stride + j * C.col_stride] = c[j * C.row_stride + i * C.col_stride];
    }
  }
};

template <class T>
void mirror_lower(const cuda_backend& be, matrix_view<T> C, index_t count, index_t batch_stride) {
  const index_t n = C.rows;
  if (n <= 1 || count <= 0) return;
  if (count == 1) cuda_launch(be, n * n, mirror_kernel<T>{C});
  else cuda_launch(be, count * n * n, batch_mirror_kernel<T>{C, batch_stride});
}

/// The strided-batched cuBLAS call for C[k](m×n, column-major, ldc) ← α·op(L[k])·op(R[k]) + β·C[k].
template <class T>
void cublas_gemm_batched(cuda_backend& be, int m, int n, int k, compute_t<T> alpha, cublas_operand l, long long sl,
                         cublas_operand r, long long sr, compute_t<T> beta, T* c, int ldc, long long sc, int count) {
  const cublasOperation_t ol = cublas_op(l.transposed), orr = cublas_op(r.transposed);
  if constexpr (std::is_same_v<T, float>) {
    ORTHOPT_CUDA_CHECK(cublasSgemmStridedBatched(be.cublas(), ol, orr, m, n, k, &alpha, static_cast<const float*>(l.data),
                                                 l.ld, sl, static_cast<const float*>(r.data), r.ld, sr, &beta, c, ldc, sc,
                                                 count));
  } else if constexpr (std::is_same_v<T, double>) {
    ORTHOPT_CUDA_CHECK(cublasDgemmStridedBatched(be.cublas(), ol, orr, m, n, k, &alpha, static_cast<const double*>(l.data),
                                                 l.ld, sl, static_cast<const double*>(r.data), r.ld, sr, &beta, c, ldc, sc,
                                                 count));
  } else {
    ORTHOPT_CUDA_CHECK(cublasGemmStridedBatchedEx(be.cublas(), ol, orr, m, n, k, &alpha, l.data, CUDA_R_16BF, l.ld, sl,
                                                  r.data, CUDA_R_16BF, r.ld, sr, &beta, c, CUDA_R_16BF, ldc, sc, count,
                                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// The primitives
// ---------------------------------------------------------------------------------------------------

/// cuBLAS sizes nothing per shape (its workspace is the context's): nothing to prepare.
template <class T>
void prepare_gemm(cuda_backend&, index_t, index_t, index_t) {}
template <class T>
void prepare_syrk(cuda_backend&, index_t, index_t) {}

/// C ← α·op(A)·op(B) + β·C. With β = 0, C's previous contents (even NaN) are ignored.
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm(cuda_backend& be, std::type_identity_t<compute_t<T>> alpha, matrix_view<TA> A, op op_a, matrix_view<TB> B,
          op op_b, std::type_identity_t<compute_t<T>> beta, matrix_view<T> C_in) {
  const auto [L, R, C] = detail::orient_gemm(A, op_a, B, op_b, C_in);
  const index_t m = C.rows, n = C.cols, k = L.cols;
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == compute_t<T>(0)) {
    detail::cuda_scale(be, C, beta);
    return;
  }
  const auto lo = detail::as_cublas_operand(L);
  const auto ro = detail::as_cublas_operand(R);
  const auto co = detail::as_cublas_operand(C.as_const());
  if constexpr (detail::cublas_native<T>) {
    if (lo && ro && co && !co->transposed && detail::fits_int(m) && detail::fits_int(n) && detail::fits_int(k)) {
      detail::cublas_gemm<T>(be, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, *lo, *ro, beta,
                             C.data, co->ld);
      return;
    }
  }
  detail::cuda_launch(be, m * n, detail::plain_gemm_kernel<T>{L, R, C, alpha, beta, false});
}

/// C ← α·A·Aᵀ + β·C for A (n×k), C (n×n); both triangles written. As in BLAS, C must be symmetric on
/// input when β ≠ 0 (only its lower triangle is read by the float/double path).
template <class T, class TA>
  requires std::same_as<std::remove_const_t<TA>, T>
void syrk(cuda_backend& be, std::type_identity_t<compute_t<T>> alpha, matrix_view<TA> A_in,
          std::type_identity_t<compute_t<T>> beta, matrix_view<T> C) {
  const const_matrix_view<T> A = A_in.as_const();
  if (C.rows != A.rows || C.cols != A.rows) {
    throw shape_error("orthopt::syrk: A is " + shape_string(A) + " so C must be " + shape_string(A.rows, A.rows) +
                      ", but C is " + shape_string(C));
  }
  const index_t n = A.rows, k = A.cols;
  if (n == 0) return;
  // C is symmetric: a row-major C is filled as its (column-major) transpose.
  if (!(C.row_stride == 1 || C.rows == 1) && (C.col_stride == 1 || C.cols == 1)) C = C.transposed();
  if (k == 0 || alpha == compute_t<T>(0)) {
    detail::cuda_scale(be, C, beta);
    return;
  }
  const auto ao = detail::as_cublas_operand(A);
  const auto co = detail::as_cublas_operand(C.as_const());
  const bool native = ao && co && !co->transposed && detail::fits_int(n) && detail::fits_int(k);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (native) {
      // A = op(S) for the stored column-major S: op(S)·op(S)ᵀ is syrk's N (S·Sᵀ) or T (Sᵀ·S).
      const cublasOperation_t trans = detail::cublas_op(ao->transposed);
      const T* a = static_cast<const T*>(ao->data);
      if constexpr (std::is_same_v<T, float>) {
        ORTHOPT_CUDA_CHECK(
            cublasSsyrk(be.cublas(), CUBLAS_FILL_MODE_LOWER, trans, ni, ki, &alpha, a, ao->ld, &beta, C.data, co->ld));
      } else {
        ORTHOPT_CUDA_CHECK(
            cublasDsyrk(be.cublas(), CUBLAS_FILL_MODE_LOWER, trans, ni, ki, &alpha, a, ao->ld, &beta, C.data, co->ld));
      }
      detail::mirror_lower(be, C, 1, 0);
      return;
    }
  } else if constexpr (detail::cublas_native<T>) {
    if (native) {
      // bf16: no syrk in cuBLAS; A·Aᵀ as one GemmEx (fp32 accumulation), then the lower triangle
      // mirrored so that the result is exactly symmetric.
      const detail::cublas_operand at{ao->data, ao->ld, !ao->transposed};
      detail::cublas_gemm<T>(be, ni, ni, ki, alpha, *ao, at, beta, C.data, co->ld);
      detail::mirror_lower(be, C, 1, 0);
      return;
    }
  }
  detail::cuda_launch(be, n * n, detail::plain_gemm_kernel<T>{A, A.transposed(), C, alpha, beta, true});
  detail::mirror_lower(be, C, 1, 0);
}

/// out[0] ← ‖X‖_F in double (device memory). NaN if X has a NaN; Inf if it has an Inf.
template <class TX>
void frobenius_norm(cuda_backend& be, matrix_view<TX> X, scalar_t* out) {
  const detail::element_walk w = detail::walk_of(X);
  detail::cuda_reduce(be, X.size(), detail::frobenius_op<TX>{X, w, out});
}

/// out[j] ← the l1 or l2 norm of column j, in double.
template <class TX>
void column_norms(cuda_backend& be, matrix_view<TX> X, column_norm kind, scalar_t* out) {
  detail::cuda_launch(be, X.cols, detail::column_norm_kernel<TX>{X, out, kind == column_norm::l1});
}

/// Y(i,j) ← f(X(i,j)). Y may be X itself (in place); partial overlap is not allowed.
template <class T, class U, class F>
void transform(cuda_backend& be, matrix_view<T> X, matrix_view<U> Y, F f) {
  detail::cuda_launch(be, Y.size(), detail::map1_kernel<T, U, F>{X, Y, f, detail::walk_of(Y, X)});
}

/// Z(i,j) ← f(X(i,j), Y(i,j)). Z may be X or Y.
template <class T, class U, class V, class F>
void transform(cuda_backend& be, matrix_view<T> X, matrix_view<U> Y, matrix_view<V> Z, F f) {
  detail::cuda_launch(be, Z.size(), detail::map2_kernel<T, U, V, F>{X, Y, Z, f, detail::walk_of(Z, X, Y)});
}

/// f(X0(i,j), X1(i,j), …) once per entry, with references (a mutable view's entries may be written): several
/// element-wise stages in one launch. No partial overlap between the views.
template <class F, class... T>
void for_each_entry(cuda_backend& be, F f, matrix_view<T>... Xs) {
  static_assert(sizeof...(T) > 0, "for_each_entry needs at least one view");
  const auto& first = detail::first_of(Xs...);
  detail::cuda_launch(be, first.size(),
                      detail::entry_kernel<F, T...>{f, detail::view_pack<T...>(Xs...), detail::walk_of(Xs...)});
}

/// X(:,j) ← d[j]·X(:,j), the product taken in double.
template <class T>
void scale_columns(cuda_backend& be, const scalar_t* d, matrix_view<T> X) {
  detail::cuda_launch(be, X.size(), detail::scale_columns_kernel<T>{d, X, detail::walk_of(X)});
}

/// Runs f() once, on the device, in stream order.
template <class F>
void run_scalar(cuda_backend& be, F&& f) {
  detail::cuda_launch(be, 1, detail::scalar_kernel<std::decay_t<F>>{f});
}

/// The first NaN or Inf in row-major order (or entry of magnitude above `limit`: the steps' overflow
/// limits). throw_on_host: the result is read back (a synchronization) and returned. flag_on_device:
/// recorded in the device status record (read_status()); returns nothing.
template <class T>
std::optional<nonfinite_entry> find_nonfinite(cuda_backend& be, matrix_view<T> X,
                                              double limit = std::numeric_limits<double>::infinity()) {
  if (X.empty()) return std::nullopt;
  const bool flag = be.nonfinite_mode() == nonfinite_check::flag_on_device;
  device_status* record = be.status_record() + (flag ? 0 : 1);
  detail::cuda_reduce(be, X.size(),
                      detail::nonfinite_op<T>{X, detail::walk_of(X), record, flag, X.is_row_major(), limit});
  if (flag) return std::nullopt;
  device_status found;
  ORTHOPT_CUDA_CHECK(cudaMemcpyAsync(&found, record, sizeof(found), cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  if (found.failed_checks == 0) return std::nullopt;
  return nonfinite_entry{static_cast<index_t>(found.row), static_cast<index_t>(found.col), found.value};
}

// ---------------------------------------------------------------------------------------------------
// Batched primitives: one launch for a whole batch_view (strided-batched GEMM for the products)
// ---------------------------------------------------------------------------------------------------

/// C[k] ← α·op(A[k])·op(B[k]) + β·C[k] for every k, as one cublas?gemmStridedBatched (or
/// cublasGemmStridedBatchedEx for bf16) call; batches cuBLAS cannot take run matrix by matrix.
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_batched(cuda_backend& be, std::type_identity_t<compute_t<T>> alpha, batch_view<TA> A, op op_a,
                  batch_view<TB> B, op op_b, std::type_identity_t<compute_t<T>> beta, batch_view<T> C) {
  if (C.count == 1) {
    gemm(be, alpha, A.first, op_a, B.first, op_b, beta, C.first);
    return;
  }
  const auto p = detail::orient_gemm(A.first, op_a, B.first, op_b, C.first);
  // orient_gemm swaps the operands (Cᵀ = op(B)ᵀ·op(A)ᵀ) when C is row-major: the batch strides follow.
  const bool sw = detail::gemm_swaps_operands(C.first);
  const index_t sl = sw ? B.batch_stride : A.batch_stride, sr = sw ? A.batch_stride : B.batch_stride;
  const index_t m = p.C.rows, n = p.C.cols, k = p.L.cols;
  const auto lo = detail::as_cublas_operand(p.L);
  const auto ro = detail::as_cublas_operand(p.R);
  const auto co = detail::as_cublas_operand(p.C.as_const());
  if constexpr (detail::cublas_native<T>) {
    if (lo && ro && co && !co->transposed && k > 0 && alpha != compute_t<T>(0) && detail::fits_int(m) &&
        detail::fits_int(n) && detail::fits_int(k) && detail::fits_int(C.count)) {
      detail::cublas_gemm_batched<T>(be, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, *lo, sl,
                                     *ro, sr, beta, p.C.data, co->ld, C.batch_stride, static_cast<int>(C.count));
      return;
    }
  }
  for (index_t i = 0; i < C.count; ++i) gemm(be, alpha, A[i], op_a, B[i], op_b, beta, C[i]);
}

/// C[k] ← α·A[k]·A[k]ᵀ + β·C[k] for every k: cuBLAS has no batched syrk, so one strided-batched GEMM of
/// A[k] with A[k]ᵀ (both triangles, twice syrk's multiply-adds, in one launch), then the lower triangle
/// mirrored so every C[k] is exactly symmetric. C[k] must be symmetric on input when β ≠ 0.
template <class T, class TA>
  requires std::same_as<std::remove_const_t<TA>, T>
void syrk_batched(cuda_backend& be, std::type_identity_t<compute_t<T>> alpha, batch_view<TA> A,
                  std::type_identity_t<compute_t<T>> beta, batch_view<T> C) {
  if (C.count == 1) {
    syrk(be, alpha, A.first, beta, C.first);
    return;
  }
  const index_t n = A.rows();
  if (C.rows() != n || C.cols() != n) {
    throw shape_error("orthopt::syrk: A is " + shape_string(A.first) + " so C must be " + shape_string(n, n) +
                      ", but C is " + shape_string(C.first));
  }
  const batch_view<const T> Ac = A.as_const_batch();
  const batch_view<const T> At{Ac.first.transposed(), Ac.count, Ac.batch_stride};
  gemm_batched(be, alpha, Ac, op::none, At, op::none, beta, C);
  detail::mirror_lower(be, C.first, C.count, C.batch_stride);
}

/// out[k] ← ‖X[k]‖_F for every k (one batched reduction).
template <class T>
void frobenius_norms(cuda_backend& be, batch_view<T> X, scalar_t* out) {
  if (X.count == 1) {
    frobenius_norm(be, X.first, out);
    return;
  }
  const index_t n = X.first.size();
  constexpr index_t room = detail::reduce_first_parts + detail::reduce_second_parts;
  for (index_t k0 = 0; k0 < X.count; k0 += room) {  // more matrices than scratch: in chunks
    const index_t count = std::min(room, X.count - k0);
    const index_t parts = std::clamp<index_t>((n + detail::reduce_elements_per_part - 1) / detail::reduce_elements_per_part, 1,
                                              room / count);
    matrix_view<T> first = X.first;
    first.data += k0 * X.batch_stride;
    const detail::batch_frobenius_op<T> op{{first, detail::walk_of(first), out + k0}, X.batch_stride};
    detail::cuda_launch(be, count * parts, detail::batch_reduce_first_pass<detail::batch_frobenius_op<T>>{op, be.partials(), n, parts});
    detail::cuda_launch(be, count, detail::batch_reduce_last_pass<detail::batch_frobenius_op<T>>{op, be.partials(), parts});
  }
}

/// Y[k](i,j) ← f.at(k)(X[k](i,j)) (or f) for the whole batch in one launch.
template <class T, class U, class F>
void transform_batched(cuda_backend& be, batch_view<T> X, batch_view<U> Y, F f) {
  detail::cuda_launch(be, Y.count * Y.first.size(),
                      detail::batch_map1_kernel<T, U, F>{X.first, Y.first, X.batch_stride, Y.batch_stride, f,
                                                         detail::walk_of(Y.first, X.first)});
}

/// Device → host copy in stream order; waits for it (checkpoints).
inline void copy_to_host(cuda_backend& be, void* host_dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  ORTHOPT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
}
/// Host → device copy in stream order; waits for it, so the host buffer may be released at once.
inline void copy_from_host(cuda_backend& be, void* dst, const void* host_src, std::size_t bytes) {
  if (bytes == 0) return;
  ORTHOPT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, be.stream()));
  be.synchronize();
}

}  // namespace orthopt
