// SPDX-License-Identifier: Apache-2.0
//
// The Newton–Schulz polar approximation, written once over the backend concept (orthopt/backend.hpp).
//
//   X ← X / norm(X);  for k = 1..T:  A = X·Xᵀ;  B = b_k·A + c_k·A·A;  X ← a_k·X + B·X
//
// on the wide orientation (a tall input is processed as its transpose so the Gram matrix A is the small
// side), following Jordan 2024 (KellerJordan/Muon) and Amsel et al. 2025 (Polar Express). Both symmetric
// products are rank-k updates (syrk); a_k·X is folded into the last product as B + a_k·I.
#pragma once

#include <math.h>  // ::ldexp, ::ilogb, ::sqrt, INFINITY, NAN: the names a CUDA device function can call too

#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/detail/ns_functors.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace orthopt {


/// Matrices whose products are at most this many multiply-adds (m²·n ≤ 256³: 256×256, 128×1024) are
/// where splitting one product over threads stops paying: on a host backend with several threads, a
/// plan for such a shape runs a batch's matrices side by side, one per thread.
inline constexpr double ns_thread_batches_max_work = 256.0 * 256.0 * 256.0;

/// The most iterations a plan may run while it records residuals (its record holds r_0 … r_64).
inline constexpr int ns_max_recorded_steps = 64;

/// What a Newton–Schulz plan saw while observing (newton_schulz::observe), read back to the host.
struct ns_observation {
  double calls = 0.0;                ///< matrices orthogonalized while observing
  double mean_needed = 0.0;          ///< mean over them of the iterations needed to reach the target
  double max_needed = 0.0;           ///< the largest such count (steps + 1: never reached it)
  double mean_final_residual = 0.0;  ///< mean residual after the last iteration of each call
  /// Mean effective rank of the inputs, (Σσ²)²/Σσ⁴ as a fraction of m (1: orthogonal rows; small: a few
  /// directions dominate, the hard case for Newton–Schulz). Free: it comes from the same two sums.
  double mean_effective_rank = 0.0;
};

/// A Newton–Schulz plan for one input shape. Construction sizes every buffer; a call allocates nothing.
///
/// `q = NS(x)` accepts any strides for x and q (either storage order, blocks, transposes). q may be x
/// itself (in place: the same view); any other overlap of q with x, of q with itself (strides (1, 1)) or
/// of two outputs of a batch is refused with a shape_error naming both views, before anything is written. A plan is not safe to call from two
/// threads at once; give each thread its own plan (and backend handle).
///
/// Errors (thrown before anything is written): shape_error for an empty matrix, a shape other than the
/// plan's, an output of another shape, or a non-positive stride; value_error for a NaN or Inf entry,
/// naming its position and value (unless config.check_finite is false, in which case NaN propagates).
/// Documented results: a zero matrix maps to the zero matrix; NS is invariant to positive scaling of x
/// over the whole finite range (‖x‖ from 1e-30 to 1e30 gives the same result up to rounding).
///
/// Batches: a plan made with batch_capacity = B runs up to B matrices of a batch_view together, every
/// stage of the iteration one batched primitive (on the CUDA backend one strided-batched GEMM launch
/// per product for the whole batch); a longer batch runs in chunks of B. On a host backend with several
/// threads (eigen_backend or blas_backend made with threads > 1, which needs OpenMP) and a small shape
/// (m²·n ≤ ns_thread_batches_max_work), a batch is split over the threads instead: each thread runs
/// whole matrices with a single-threaded copy of the plan made at construction, so no product is split
/// (BLAS calls made inside an OpenMP region run on one thread in OpenBLAS's OpenMP build; a BLAS with a
/// thread pool of its own would oversubscribe the cores). Calls that record, observe or stop at a
/// residual run the matrices in turn. Each matrix's result is the same as a single call's, up to the
/// rounding differences of a product split over threads or not.
///
/// The orthogonality residual. Every iteration forms A = X·Xᵀ anyway; r = ‖A − I‖_F/√m (m the small
/// side) is how far X is from having orthonormal rows: the root mean square of σ_i² − 1 over the
/// singular values of X. Three optional uses, all off by default and none allocating:
///   - record_residuals(true): each call writes r_0 (the normalized input) … r_T (the result) to backend
///     memory (residual_view(); no host synchronization). Cost per iteration: one reduction of the m×m
///     matrix A and of its diagonal; plus, once per call, one extra product X·Xᵀ (m²·n) for r_T.
///   - observe(target): records, and accumulates in backend memory how many iterations each call needed
///     for r to fall to `target` (read_observation() reads it back). orthopt::ns_budget is built on it.
///   - stop_at_residual(tolerance): stops a call at the first iteration whose residual is ≤ tolerance,
///     never after `steps` iterations. It reads r back to the host every iteration: cheap on a CPU
///     backend, a synchronization per iteration on a GPU, where a committed step count is the better
///     choice.
template <class T, class Backend>
  requires backend_for<Backend, T>
class newton_schulz {
 public:
  using value_type = T;
  using backend_type = Backend;

  newton_schulz(index_t rows, index_t cols, ns_config config, Backend backend = Backend{}, index_t batch_capacity = 1)
      : backend_(std::move(backend)), config_(std::move(config)), rows_(rows), cols_(cols), capacity_(batch_capacity) {
    if (rows < 1 || cols < 1) {
      throw shape_error("orthopt::newton_schulz: cannot plan for an empty " + shape_string(rows, cols) + " matrix");
    }
    if (batch_capacity < 1) {
      throw shape_error("orthopt::newton_schulz: batch_capacity = " + std::to_string(batch_capacity) + " < 1");
    }
    config_.validate();
    if (config_.algorithm == ns_algorithm::gram) check_gram_growth(config_, "orthopt::newton_schulz");
    small_ = rows < cols ? rows : cols;
    large_ = rows < cols ? cols : rows;
    gram_ops_ = config_.algorithm == ns_algorithm::gram ||
                (config_.algorithm == ns_algorithm::fastest && gram_is_faster(config_, small_, large_));
    detail::checked_extent_product("orthopt::newton_schulz", "a plan for " + std::to_string(batch_capacity) +
                                   " matrices of shape " + shape_string(rows, cols), batch_capacity, small_, large_,
                                   sizeof(T) > sizeof(scalar_t) ? sizeof(T) : sizeof(scalar_t));
    x_ = backend_.template allocate<T>(capacity_ * small_ * large_);
    x_next_ = backend_.template allocate<T>(capacity_ * small_ * large_);
    gram_ = backend_.template allocate<T>(capacity_ * small_ * small_);
    poly_ = backend_.template allocate<T>(capacity_ * small_ * small_);
    if (gram_ops_) {
      // The accumulated polynomial Q and one more m×m work matrix per batch item.
      accumulated_ = backend_.template allocate<T>(capacity_ * small_ * small_);
      work_ = backend_.template allocate<T>(capacity_ * small_ * small_);
      prepare_gemm<T>(backend_, small_, small_, small_);
      gram_restart_ = config_.gram_restart_iteration(gram_unit_roundoff());
    }
    scalars_ = backend_.template allocate<scalar_t>(capacity_ * (3 + small_));
    stats_ = backend_.template allocate<scalar_t>(capacity_ * (residual_stride + 3) + observation_size);
    host_residuals_.assign(static_cast<std::size_t>(capacity_), 0.0);
    run_scalar(backend_, detail::ns_clear_observation{observation_data()});
    if constexpr (detail::threads_over_batches<Backend>) {
      const int threads = backend_.threads();
      if (threads > 1 && static_cast<double>(small_) * static_cast<double>(small_) * static_cast<double>(large_) <=
                             ns_thread_batches_max_work) {
        workers_.reserve(static_cast<std::size_t>(threads));
        for (int t = 0; t < threads; ++t) workers_.emplace_back(rows, cols, config_, Backend(1), 1);
      }
    }
    prepare_syrk<T>(backend_, small_, large_);
    prepare_syrk<T>(backend_, small_, small_);
    prepare_gemm<T>(backend_, small_, large_, small_);
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] const ns_config& config() const noexcept { return config_; }
  /// How many matrices of a batch run together.
  [[nodiscard]] index_t batch_capacity() const noexcept { return capacity_; }
  [[nodiscard]] Backend& backend() noexcept { return backend_; }
  /// How many threads a batch call splits its matrices over (1: the matrices run in turn, each product
  /// using the backend's threads).
  [[nodiscard]] int batch_threads() const noexcept { return workers_.empty() ? 1 : static_cast<int>(workers_.size()); }

  static constexpr int max_recorded_steps = ns_max_recorded_steps;

  /// Change the step count for later calls (no allocation); the adaptive budget uses this. With
  /// residuals recorded, at most max_recorded_steps.
  void set_steps(int steps) {
    if (steps < 1) throw value_error("orthopt::newton_schulz::set_steps: steps = " + std::to_string(steps) + " < 1");
    if (steps > max_recorded_steps && measures()) {
      throw value_error("orthopt::newton_schulz::set_steps: steps = " + std::to_string(steps) +
                        " while residuals are recorded; the record holds at most " +
                        std::to_string(max_recorded_steps) + " iterations");
    }
    config_.steps = steps;
    if (gram_planned()) {
      gram_restart_ = config_.gram_restart_iteration(gram_unit_roundoff());
      // The Gram algorithm runs at the new count only where it stays within the element type's precision
      // (and, for ns_algorithm::fastest, is still the faster); elsewhere the standard iteration runs,
      // which needs no other memory. So no count the adaptive budget, a checkpoint or a setter gives
      // makes a Gram plan diverge, and a count that comes back down runs the Gram algorithm again.
      gram_ops_ = gram_may_run(config_, gram_restart_) &&
                  (config_.algorithm == ns_algorithm::gram || gram_is_faster(config_, small_, large_));
    }
    for (auto& w : workers_) w.set_steps(steps);
  }
  [[nodiscard]] int steps() const noexcept { return config_.steps; }
  /// The algorithm a call runs: ns_algorithm::fastest resolved for this plan's shape (it never resolves
  /// to itself).
  [[nodiscard]] ns_algorithm algorithm() const noexcept { return gram_ops_ ? ns_algorithm::gram : ns_algorithm::standard; }

  /// Record r_0 … r_T of every call in backend memory (residual_view()).
  void record_residuals(bool on) {
    if (on) require_recordable("record_residuals");
    record_ = on;
  }
  [[nodiscard]] bool records_residuals() const noexcept { return record_ || observing(); }
  /// Whether record_residuals(true) would be accepted (the plan runs at most max_recorded_steps).
  [[nodiscard]] bool can_record_residuals() const noexcept { return config_.steps <= max_recorded_steps; }

  /// Start (or go on) accumulating, per call, the iterations needed for the residual to reach `target`
  /// (finite, > 0). Recording is implied while observing. The accumulators are not cleared: see
  /// reset_observation().
  void observe(double target) {
    if (!(target > 0.0) || !std::isfinite(target)) {
      throw value_error("orthopt::newton_schulz::observe: target residual = " + detail::value_text(target) +
                        " must be finite and > 0");
    }
    require_recordable("observe");
    observe_target_ = target;
  }
  void stop_observing() noexcept { observe_target_ = 0.0; }
  [[nodiscard]] bool observing() const noexcept { return observe_target_ > 0.0; }
  [[nodiscard]] double observe_target() const noexcept { return observe_target_; }
  /// Clears the accumulators (in backend memory, no synchronization).
  void reset_observation() { run_scalar(backend_, detail::ns_clear_observation{observation_data()}); }
  /// The accumulators, read back to the host (on a GPU: waits for the work queued before it).
  [[nodiscard]] ns_observation read_observation() {
    scalar_t acc[observation_size];
    copy_to_host(backend_, acc, observation_data(), sizeof(acc));
    ns_observation o;
    o.calls = acc[1];
    o.max_needed = acc[3];
    if (acc[1] > 0.0) {
      o.mean_needed = acc[0] / acc[1];
      o.mean_final_residual = acc[2] / acc[1];
      o.mean_effective_rank = acc[4] / acc[1];
    }
    return o;
  }
  /// The observation_size accumulators [Σ needed, calls, Σ final residual, max needed, Σ effective rank]
  /// in backend memory (checkpoints save them so that a resumed observation window ends as the
  /// uninterrupted one would).
  [[nodiscard]] scalar_t* observation_data() noexcept { return stats_.data() + capacity_ * (residual_stride + 3); }
  static constexpr index_t observation_size = 5;

  /// Stop each call at the first iteration whose residual is ≤ tolerance (> 0), never beyond steps();
  /// 0 switches it off. Reads the residual back every iteration: meant for CPU backends.
  void stop_at_residual(double tolerance) {
    if (!(tolerance >= 0.0) || !std::isfinite(tolerance)) {
      throw value_error("orthopt::newton_schulz::stop_at_residual: tolerance = " + detail::value_text(tolerance) +
                        " must be finite and >= 0 (0 switches stopping off)");
    }
    if (tolerance > 0.0) require_recordable("stop_at_residual");
    stop_tolerance_ = tolerance;
  }
  [[nodiscard]] double stop_tolerance() const noexcept { return stop_tolerance_; }

  /// Iterations the last call ran (its last chunk, for a batch longer than the capacity): steps()
  /// unless it stopped at its residual tolerance.
  [[nodiscard]] int last_steps() const noexcept { return last_steps_; }
  /// The residuals of the last call in backend memory: row k holds r_0 … r_{last_steps()} of matrix k
  /// of its (last) chunk, in its first last_steps() + 1 columns. Valid after a call that measured
  /// residuals (record, observe or stop).
  [[nodiscard]] matrix_view<const scalar_t> residual_view() const noexcept {
    return {stats_.data(), capacity_, residual_stride, residual_stride, 1};
  }
  /// Row k of residual_view(), copied to the host (allocates; for logging and tests).
  [[nodiscard]] std::vector<double> residuals(index_t k = 0) {
    std::vector<double> r(static_cast<std::size_t>(last_steps_) + 1);
    copy_to_host(backend_, r.data(), stats_.data() + k * residual_stride, r.size() * sizeof(double));
    return r;
  }

  /// q ← NS(x).
  void operator()(const_matrix_view<T> x, matrix_view<T> q) {
    check(x, q);
    check_batch_overlap(batch_view<const T>(x, 1, 0), batch_view<T>(q, 1, 0));
    run(batch_view<const T>(x, 1, 0), batch_view<T>(q, 1, 0));
  }

  /// q[k] ← NS(x[k]) for every matrix of a batch (e.g. stacked MoE experts [E, M, N]).
  void operator()(batch_view<const T> x, batch_view<T> q) {
    static constexpr const char* who = "orthopt::newton_schulz";
    if (x.count < 0 || q.count < 0) {
      throw shape_error(std::string(who) + ": a batch of " + std::to_string(x.count < 0 ? x.count : q.count) +
                        " matrices; the count must be >= 0 (an empty batch does nothing)");
    }
    if (x.count != q.count) {
      throw shape_error(std::string(who) + ": input batch has " + std::to_string(x.count) +
                        " matrices but output batch has " + std::to_string(q.count));
    }
    for (index_t k = 0; k < x.count; ++k) check(x[k], q[k], k);
    check_batch_overlap(x, q);
    if constexpr (detail::threads_over_batches<Backend>) {
      // In a concurrent lane (a parallel optimizer step) the other threads are busy with other parameters.
      if (!workers_.empty() && x.count > 1 && !measures() && detail::concurrent_lane < 0) {
        run_over_threads(x, q);
        return;
      }
    }
    for (index_t k0 = 0; k0 < x.count; k0 += capacity_) {
      const index_t n = x.count - k0 < capacity_ ? x.count - k0 : capacity_;
      run(batch_view<const T>(x[k0], n, x.batch_stride), batch_view<T>(q[k0], n, q.batch_stride));
    }
  }

 private:
  static constexpr index_t residual_stride = max_recorded_steps + 1;

  [[nodiscard]] bool measures() const noexcept { return record_ || observing() || stop_tolerance_ > 0.0; }
  /// The unit roundoff the Gram algorithm's safeguards use: float's and double's (half their machine
  /// epsilon). 0 for a 16-bit storage type: bf16's precision is outside what the default restart and the
  /// refusal below are calibrated for, and its Gram configurations run as before.
  static constexpr double gram_unit_roundoff() noexcept {
    return sizeof(T) >= 4 ? storage_epsilon<T>::value / 2.0 : 0.0;
  }

  /// Whether the Gram algorithm with a restart after iteration `restart` keeps its rounding growth within
  /// the element type's precision (check_gram_growth refuses it otherwise). False for a 16-bit storage
  /// type, which the growth model is not calibrated for.
  static bool gram_within_precision(const ns_config& c, int restart) {
    const double u = gram_unit_roundoff();
    return u > 0.0 && c.gram_rounding_growth(restart) * u < 1.0;
  }
  /// Whether the plan was made for the Gram algorithm: only then do its buffers exist.
  [[nodiscard]] bool gram_planned() const noexcept { return accumulated_.size() != 0; }
  /// Whether a plan that asked for the Gram algorithm runs it at c's count with a restart after `restart`:
  /// within the precision of float and double; a 16-bit storage type's explicit Gram configurations run
  /// as asked (the growth model is not calibrated for it).
  static bool gram_may_run(const ns_config& c, int restart) {
    return gram_unit_roundoff() == 0.0 ? c.algorithm == ns_algorithm::gram : gram_within_precision(c, restart);
  }
  /// ns_algorithm::fastest: the Gram algorithm where it is within precision and needs under 0.8 of the
  /// standard iteration's multiply-adds (the margin: its m×m products run less efficiently).
  static bool gram_is_faster(const ns_config& c, index_t small, index_t large) {
    const int restart = c.gram_restart_iteration(gram_unit_roundoff());
    return gram_within_precision(c, restart) &&
           c.gram_flops_ratio(static_cast<double>(small), static_cast<double>(large), restart) < 0.8;
  }

  /// The Gram algorithm diverges when a run of iterations between restarts grows a rounding error of its
  /// Gram matrix (about the element type's unit roundoff) to order 1 (ns_config::gram_rounding_growth):
  /// a float or double plan refuses such a configuration when it is made. Found by fuzzing: float data,
  /// keller for 14 iterations with a restart after the first, a nearly singular input, NaN output.
  /// set_steps does not refuse (the adaptive budget and checkpoint loading call it where a throw would
  /// leave work half done): it moves the default restart, and runs the standard iteration for a count
  /// that no restart keeps within precision (algorithm() says which runs).
  static void check_gram_growth(const ns_config& c, const char* who) {
    const double u = gram_unit_roundoff();
    if (u == 0.0) return;
    const int restart = c.gram_restart_iteration(u);
    if (!gram_within_precision(c, restart)) {
      const double growth = c.gram_rounding_growth(restart);
      throw value_error(std::string(who) + ": the Gram algorithm with '" + c.name + "' for " + std::to_string(c.steps) +
                        " iterations (restart after " + std::to_string(restart) + ") multiplies a rounding error of its " +
                        "Gram matrix by " + detail::value_text(growth) + ", beyond the element type's precision (unit roundoff " +
                        detail::value_text(u) + "), and diverges on nearly singular inputs; " +
                        "restart in the middle, run fewer iterations, or use the standard algorithm");
    }
  }

  void require_recordable(const char* who) const {
    if (config_.steps > max_recorded_steps) {
      throw value_error(std::string("orthopt::newton_schulz::") + who + ": the plan runs " +
                        std::to_string(config_.steps) + " iterations; residuals are recorded for at most " +
                        std::to_string(max_recorded_steps));
    }
  }

  /// Outputs must not overlap themselves or each other, nor overlap an input other than in full: a call
  /// reads each input matrix whole before writing its output, so q[k] may be x[k] itself (in place), but a
  /// q[k] that shares only part of x[k], or any of another x[j], would be overwritten before it is read.
  void check_batch_overlap(batch_view<const T> x, batch_view<T> q) const {
    static constexpr const char* who = "orthopt::newton_schulz";
    const auto item = [&q](index_t k) { return q.count > 1 ? " (batch item " + std::to_string(k) + ")" : std::string(); };
    for (index_t k = 0; k < q.count; ++k) {
      if (view_overlaps_itself(q[k])) {
        throw shape_error(std::string(who) + ": the output" + item(k) + " [" + describe_view(q[k]) +
                          "] addresses some elements twice");
      }
    }
    if (const auto [j, k] = overlapping_batch_items(q); j >= 0) {
      throw shape_error(std::string(who) + ": output batch items " + std::to_string(j) + " and " + std::to_string(k) +
                        " share memory [" + describe_view(q[j]) + "], [" + describe_view(q[k]) + "]");
    }
    const bool in_place = x.first.data == q.first.data && x.batch_stride == q.batch_stride &&
                          x.first.row_stride == q.first.row_stride && x.first.col_stride == q.first.col_stride;
    if (in_place) return;
    if (const auto [j, k] = overlapping_items(x, q); j >= 0) {
      throw shape_error(std::string(who) + ": the output" + item(k) + " [" + describe_view(q[k]) + "] overlaps the input" +
                        (x.count > 1 ? " (batch item " + std::to_string(j) + ")" : std::string()) + " [" +
                        describe_view(x[j]) + "] without being the same view; only q = x (in place) is allowed");
    }
  }

  // The checks build no string unless they throw: a call must not allocate.
  void check(const_matrix_view<T> x, matrix_view<T> q, index_t batch_index = -1) {
    const auto who = [batch_index] {
      return batch_index < 0 ? std::string("orthopt::newton_schulz")
                             : "orthopt::newton_schulz (batch item " + std::to_string(batch_index) + ")";
    };
    if (!view_is_usable(x) || !view_is_usable(q)) {
      check_view(x, who().c_str(), "input");
      check_view(q, who().c_str(), "output");
    }
    if (x.rows != rows_ || x.cols != cols_) {
      throw shape_error(who() + ": input is " + shape_string(x) + " but the plan was made for " +
                        shape_string(rows_, cols_));
    }
    if (q.rows != x.rows || q.cols != x.cols) check_shape(q, x.rows, x.cols, who().c_str(), "output");
    if (config_.check_finite) {
      if (const auto bad = find_nonfinite(backend_, x)) {
        throw value_error(who() + ": input(" + std::to_string(bad->row) + ", " + std::to_string(bad->col) +
                          ") is " + detail::value_text(bad->value) + "; NaN and Inf inputs are rejected");
      }
    }
  }

  /// Matrix k of the batch on thread k mod (the team's size), each thread with its own single-threaded plan.
  void run_over_threads(batch_view<const T> x, batch_view<T> q) {
    const int parts = static_cast<int>(x.count < static_cast<index_t>(workers_.size()) ? x.count : workers_.size());
    std::exception_ptr failure;  // nothing in run() is expected to throw; an exception must not cross OpenMP
#if defined(_OPENMP)
#pragma omp parallel num_threads(parts)
#endif
    {
#if defined(_OPENMP)
      // The team may be smaller than asked for (a call from inside another parallel region gets one
      // thread): stride by the team's size, so that every matrix is done.
      const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
      const int t = 0, team = 1;
      (void)parts;  // the num_threads clause's only use
#endif
      try {
        for (index_t k = t; k < x.count; k += team) {
          workers_[static_cast<std::size_t>(t)].run(batch_view<const T>(x[k], 1, 0), batch_view<T>(q[k], 1, 0));
        }
      } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(orthopt_ns_failure)
#endif
        failure = std::current_exception();
      }
    }
    if (failure) std::rethrow_exception(failure);
    last_steps_ = config_.steps;
  }

  /// The iteration on x.count ≤ capacity_ matrices at once; every stage is one batched primitive.
  void run(batch_view<const T> x_in, batch_view<T> q_out) {
    const index_t count = x_in.count;
    // Work on the wide orientation: X is small_ × large_.
    const bool tall = x_in.rows() > x_in.cols();
    const batch_view<const T> x_src{tall ? x_in.first.transposed() : x_in.first, count, x_in.batch_stride};
    const batch_view<T> q{tall ? q_out.first.transposed() : q_out.first, count, q_out.batch_stride};

    // X is stored in the input's storage order, so that the copies in and out run along unit strides
    // (a column-major input would otherwise be transposed on the way in and on the way out).
    const bool col_major = x_src.first.row_stride < x_src.first.col_stride;
    const index_t x_size = small_ * large_, g_size = small_ * small_;
    const auto iterate_batch = [&](T* p) {
      return batch_view<T>(col_major ? col_major_view(p, small_, large_) : row_major_view(p, small_, large_), count,
                           x_size);
    };
    batch_view<T> X = iterate_batch(x_.data());
    batch_view<T> X_next = iterate_batch(x_next_.data());
    const batch_view<T> G{row_major_view(gram_.data(), small_, small_), count, g_size};
    scalar_t* norms = scalars_.data();
    scalar_t* factors = scalars_.data() + capacity_;    // two per matrix
    scalar_t* row_scale = scalars_.data() + 3 * capacity_;  // small_ per matrix

    frobenius_norms(backend_, x_src, norms);
    run_scalar(backend_, detail::ns_normalization_factor{norms, factors, count, config_.normalization, config_.eps,
                                                         config_.safety, config_.absolute_eps,
                                                         static_cast<double>(x_src.first.rows) *
                                                             static_cast<double>(x_src.first.cols)});
    transform_batched(backend_, x_src, X, detail::scale_by_factor_pair{factors});

    using C = compute_t<T>;  // α, β and the coefficients: never rounded to a 16-bit storage type
    const bool aol = config_.normalization == ns_normalization::aol;
    if (aol) {
      // AOL (Turbo-Muon): rescale rows by 1/√(absolute row sums of XXᵀ); A is rescaled on both sides and
      // reused by the first step.
      syrk_batched(backend_, C(1), X.as_const_batch(), C(0), G);
      for (index_t k = 0; k < count; ++k) column_norms(backend_, G[k].as_const(), column_norm::l1, row_scale + k * small_);
      const matrix_view<scalar_t> s = col_major_view(row_scale, count * small_, 1);
      transform(backend_, s, s,
                detail::aol_row_scale{config_.eps, static_cast<double>(std::numeric_limits<compute_t<T>>::min())});
      for (index_t k = 0; k < count; ++k) {
        scale_columns(backend_, row_scale + k * small_, X[k].transposed());
        scale_columns(backend_, row_scale + k * small_, G[k]);
        scale_columns(backend_, row_scale + k * small_, G[k].transposed());
      }
    }

    // r_j of matrix i of the chunk, from the Gram matrix A = X_j·X_jᵀ currently in G.
    const bool measure = measures();
    scalar_t* residual_rows = stats_.data();
    // Per matrix: ‖A‖_F, tr(A), and the input's effective rank.
    scalar_t* temps = stats_.data() + capacity_ * residual_stride;
    const auto measure_residuals = [&](int j, T* gram) {
      for (index_t i = 0; i < count; ++i) {
        scalar_t* t = temps + 3 * i;
        frobenius_norm(backend_, row_major_view<const T>(gram + i * g_size, small_, small_), t);
        const matrix_view<const T> diagonal(gram + i * g_size, small_, 1, small_ + 1, 1);
        column_norms(backend_, diagonal, column_norm::l1, t + 1);  // A_ii ≥ 0: Σ|A_ii| = tr(A)
        run_scalar(backend_, detail::ns_residual_from_gram{t, t + 1, residual_rows + i * residual_stride + j,
                                                           static_cast<double>(small_), j == 0 ? t + 2 : nullptr});
      }
    };
    const auto all_within_tolerance = [&](int j) {
      for (index_t i = 0; i < count; ++i) {
        copy_to_host(backend_, &host_residuals_[static_cast<std::size_t>(i)], residual_rows + i * residual_stride + j,
                     sizeof(scalar_t));
        if (!(host_residuals_[static_cast<std::size_t>(i)] <= stop_tolerance_)) return false;
      }
      return true;
    };

    // The last product may write the output directly (saving the copy out of the work buffer) when the
    // output is laid out as the work buffer is: the same product, so the same result.
    const bool last_into_output =
        q.first.row_stride == X.first.row_stride && q.first.col_stride == X.first.col_stride;
    const batch_view<T>* direct_out = last_into_output ? &q : nullptr;
    int done = config_.steps;
    if (gram_ops_) {
      done = gram_iterations(X, X_next, direct_out, aol, measure, measure_residuals, all_within_tolerance);
    } else {
      done = standard_iterations(X, X_next, direct_out, aol, measure, measure_residuals, all_within_tolerance);
    }
    if (measure && done == config_.steps) {
      // r_T of the result: the one product X·Xᵀ a measuring call adds.
      syrk_batched(backend_, C(1), X.as_const_batch(), C(0), G);
      measure_residuals(done, gram_.data());
    }
    if (observing()) {
      for (index_t i = 0; i < count; ++i) {
        run_scalar(backend_, detail::ns_observe_call{residual_rows + i * residual_stride, temps + 3 * i + 2, done,
                                                     observe_target_, observation_data()});
      }
    }
    last_steps_ = done;
    if (X.first.data != q.first.data) transform_batched(backend_, X.as_const_batch(), q, functors::identity{});
  }

  /// P ← b·R + c·R·R + a·I for every matrix of the batch (R symmetric, so R·R = R·Rᵀ is a rank-k update).
  void form_polynomial(const ns_coefficients& coef, index_t count, T* R, T* P) {
    using C = compute_t<T>;
    const index_t g_size = small_ * small_;
    const batch_view<const T> Rb{row_major_view<const T>(R, small_, small_), count, g_size};
    const batch_view<T> Pb{row_major_view(P, small_, small_), count, g_size};
    const matrix_view<T> P_diagonals(P, count, small_, g_size, small_ + 1);
    transform(backend_, row_major_view<const T>(R, count * small_, small_), row_major_view(P, count * small_, small_),
              functors::scale_by<T>{static_cast<C>(coef.b)});
    if (coef.c != 0.0) syrk_batched(backend_, static_cast<C>(coef.c), Rb, C(1), Pb);
    transform(backend_, P_diagonals, P_diagonals, functors::add_constant<T>{static_cast<C>(coef.a)});
  }

  /// The standard iteration: every step forms A = X·Xᵀ from X, then X ← P·X. Returns the iterations run.
  template <class Measure, class Within>
  int standard_iterations(batch_view<T>& X, batch_view<T>& X_next, const batch_view<T>* direct_out, bool aol, bool measure,
                          Measure& measure_residuals, Within& all_within_tolerance) {
    using C = compute_t<T>;
    const index_t count = X.count, g_size = small_ * small_;
    const batch_view<T> G{row_major_view(gram_.data(), small_, small_), count, g_size};
    const batch_view<const T> P{row_major_view<const T>(poly_.data(), small_, small_), count, g_size};
    for (int k = 1; k <= config_.steps; ++k) {
      const ns_coefficients& coef = config_.step(k);
      if (!(aol && k == 1)) syrk_batched(backend_, C(1), X.as_const_batch(), C(0), G);
      if (measure) {
        measure_residuals(k - 1, gram_.data());
        if (stop_tolerance_ > 0.0 && all_within_tolerance(k - 1)) return k - 1;
      }
      form_polynomial(coef, count, gram_.data(), poly_.data());
      if (k == config_.steps && direct_out != nullptr) {  // the last product, straight into the output
        gemm_batched(backend_, C(1), P, op::none, X.as_const_batch(), op::none, C(0), *direct_out);
        X = *direct_out;
        break;
      }
      gemm_batched(backend_, C(1), P, op::none, X.as_const_batch(), op::none, C(0), X_next);
      std::swap(X, X_next);
    }
    return config_.steps;
  }

  /// Gram Newton–Schulz (ns_algorithm::gram). With R_0 = X·Xᵀ and Q_0 = I, step k forms
  /// P_k = a·I + b·R_k + c·R_k², Q_k = P_k·Q_{k−1} and, unless it is the last, R_{k+1} = R_k·P_k²; all of them
  /// polynomials in R_0, so symmetric and commuting. X_T = Q_T·X_0 is formed once at the end. A restart
  /// after iteration j sets X ← Q_j·X, R ← X·Xᵀ, Q ← I. Residuals come from R_k, the Gram matrix of the
  /// current iterate Q_k·X (exactly so in exact arithmetic). Returns the iterations run.
  template <class Measure, class Within>
  int gram_iterations(batch_view<T>& X, batch_view<T>& X_next, const batch_view<T>* direct_out, bool aol, bool measure,
                      Measure& measure_residuals, Within& all_within_tolerance) {
    using C = compute_t<T>;
    const index_t count = X.count, g_size = small_ * small_;
    const auto square = [&](T* p) { return batch_view<T>{row_major_view(p, small_, small_), count, g_size}; };
    const auto square_const = [&](T* p) {
      return batch_view<const T>{row_major_view<const T>(p, small_, small_), count, g_size};
    };
    // R lives in gram_ or poly_ (they trade places as R is updated); Q and the work matrix likewise.
    T* R = gram_.data();
    T* P = poly_.data();
    T* Q = accumulated_.data();
    T* W = work_.data();
    if (!aol) syrk_batched(backend_, C(1), X.as_const_batch(), C(0), square(R));
    const int restart = gram_restart_;
    bool q_is_identity = true;
    const auto apply_accumulated = [&] {  // X ← Q·X, Q ← I
      gemm_batched(backend_, C(1), square_const(Q), op::none, X.as_const_batch(), op::none, C(0), X_next);
      std::swap(X, X_next);
      q_is_identity = true;
    };
    int done = config_.steps;
    for (int k = 1; k <= config_.steps; ++k) {
      if (measure) {
        measure_residuals(k - 1, R);
        if (stop_tolerance_ > 0.0 && all_within_tolerance(k - 1)) {
          done = k - 1;
          break;
        }
      }
      form_polynomial(config_.step(k), count, R, P);
      if (q_is_identity) {
        transform(backend_, row_major_view<const T>(P, count * small_, small_), row_major_view(Q, count * small_, small_),
                  functors::identity{});
        q_is_identity = false;
      } else {
        // A full product, not a symmetric one: the computed P_k and Q commute only up to rounding that Q's
        // gain has amplified, and keeping one triangle of P·Q would add that commutator to Q (measured:
        // 5-10× the float error; R, used only to form the next P, tolerates it).
        gemm_batched(backend_, C(1), square_const(P), op::none, square_const(Q), op::none, C(0), square(W));
        std::swap(Q, W);
      }
      if (k == config_.steps) break;
      if (k == restart) {
        apply_accumulated();
        syrk_batched(backend_, C(1), X.as_const_batch(), C(0), square(R));
      } else {
        // R ← R·P²: P² = P·Pᵀ as a rank-k update, then one product, symmetric since R and P² commute.
        syrk_batched(backend_, C(1), square_const(P), C(0), square(W));
        gemm_symmetric_result_batched(backend_, C(1), square_const(R), square_const(W), C(0), square(P));
        std::swap(R, P);
      }
    }
    if (!q_is_identity) {
      if (direct_out != nullptr) {  // X_T = Q·X, straight into the output
        gemm_batched(backend_, C(1), square_const(Q), op::none, X.as_const_batch(), op::none, C(0), *direct_out);
        X = *direct_out;
      } else {
        apply_accumulated();
      }
    }
    return done;
  }

 private:

  Backend backend_;
  ns_config config_;
  index_t rows_ = 0, cols_ = 0, capacity_ = 1, small_ = 0, large_ = 0;
  typename Backend::template buffer<T> x_, x_next_, gram_, poly_;
  typename Backend::template buffer<T> accumulated_, work_;  // ns_algorithm::gram only
  typename Backend::template buffer<scalar_t> scalars_;
  // [capacity_ rows of r_0…r_64][capacity_ × (‖A‖_F, tr A, effective rank)][observation accumulators]
  typename Backend::template buffer<scalar_t> stats_;
  std::vector<double> host_residuals_;  // stop_at_residual's read-back, sized at construction
  bool record_ = false;
  double observe_target_ = 0.0;  // > 0 while observing
  double stop_tolerance_ = 0.0;  // > 0: stop at this residual
  int last_steps_ = 0;
  bool gram_ops_ = false;  // the Gram algorithm runs (ns_algorithm::gram, or fastest resolved to it)
  int gram_restart_ = 0;  // ns_config::gram_restart_iteration(), resolved when the plan or its steps change
  std::vector<newton_schulz> workers_;  // one single-threaded plan per thread: batches split over threads
};

}  // namespace orthopt
