// SPDX-License-Identifier: Apache-2.0
//
// Tensor-parallel Newton–Schulz: the iteration of orthopt/newton_schulz.hpp on one matrix whose columns
// are spread over the ranks of a communicator, without any rank ever holding the whole matrix.
//
// What it computes. X is m × n (m = rows, n = global_cols); rank r holds the block X_r = X[:, cols_r] of
// n_r ≥ 1 consecutive columns (rank 0 the first n_0 columns, rank 1 the next n_1, …; Σ n_r = n). A call
// leaves on rank r the same columns of NS(X), where NS is the standard iteration of newton_schulz:
//
//   X ← X / norm(X);  for k = 1..T:  A = X·Xᵀ;  B = b_k·A + c_k·A·A;  X ← a_k·X + B·X
//
// (Jordan 2024, KellerJordan/Muon; Amsel et al. 2025, Polar Express). Both products split by columns:
// A = X·Xᵀ = Σ_r X_r·X_rᵀ is a sum of the ranks' local Gram matrices (one allreduce of m×m), B depends
// only on A, so every rank forms it redundantly, and (a_k·I + B)·X restricted to cols_r is
// (a_k·I + B)·X_r, which needs nothing from the other ranks. The norm is ‖X‖_F² = Σ_r ‖X_r‖_F².
//
// Orientation. The Gram matrix is m×m whatever n is, so the economical orientation is the wide one,
// m ≤ n: A is the small side, as the single-process plan arranges by transposing. A tall matrix (m > n)
// still gives the right answer here (p(X) = a·X + b·XXᵀX + c·XXᵀXXᵀX is the same polynomial whichever
// Gram matrix carries it), but at m³ work and m² traffic per step. Shard a tall matrix by rows instead
// and pass the transposed views: the transpose of a row block of X is a column block of Xᵀ, and
// NS(Xᵀ) = NS(X)ᵀ, so plan for (n, m, m_r) and call run(X_r.transposed(), Q_r.transposed()).
//
// Collectives per call, all allreduces, every rank in the same order:
//   1. the agreement: 2 doubles (16 bytes), max — every rank's verdict on its input (so that one bad
//      input makes every rank throw instead of leaving the others waiting in a later collective) and the
//      largest local norm (the common scale of step 2);
//   2. the norm: 1 double (8 bytes), sum of the ranks' squared local norms, each scaled by a power of two
//      taken from the largest one, so the sum neither overflows nor underflows for any finite input of
//      either precision (a plain sum of squares would overflow for double data with ‖X‖ > ~1e154);
//   3. per iteration: the Gram matrix, m² elements of T (m²·sizeof(T) bytes), sum.
// That is 2 + T allreduces: two latency-bound ones and T of m²·sizeof(T) bytes. The only read-back to
// the host is the agreement's verdict (and find_nonfinite's scan when config.check_finite is on).
//
// Cost per rank and iteration: m²·n_r flops (local Gram, syrk) + m³ (A·A, syrk, skipped when c_k = 0;
// redundant on every rank) + 2·m²·n_r (the update, gemm) — the single-process 3·m²·n + m³ with n → n_r,
// so the products scale with the ranks while the m³ term does not. Memory per rank: one m×n_r iterate
// besides the output (the iteration ping-pongs between the two) and two m×m matrices, all allocated by
// the constructor; a call allocates nothing.
//
// Accuracy. On P = 1 rank the arithmetic is the single-process plan's, operation for operation, for a
// wide matrix whose input and output share a storage order (the plans iterate in the input's and the
// output's order respectively), so the results agree bit for bit there. On P > 1 it equals
// single-process NS to rounding, not bit for bit: the Gram matrix is accumulated over each rank's n_r
// columns and the partial sums are then added in the order the transport's reduction chooses (which
// depends on the MPI algorithm and the rank count), and the norm is a sum of per-rank sums; NS then
// amplifies those rounding differences by its schedule's gain (the product of its polynomials' slopes,
// ~500 for keller) like any other rounding. Results of one
// configuration are reproducible run to run when the transport's reduction is (MPI's usually is for a
// fixed rank count and message size).
//
// Limits. The standard algorithm with the frobenius, frobenius_clamp and safety normalizations
// (relative or absolute ε, the factor pair computed exactly as newton_schulz does). The aol
// normalization (its row scale would come from the first step's reduced Gram matrix; not implemented
// here) and ns_algorithm::gram are refused with value_error rather than silently replaced;
// ns_algorithm::fastest runs the standard algorithm, the only one this plan has. Residual recording,
// observation and stopping (newton_schulz's record_residuals / observe / stop_at_residual) are not
// offered. T is float or double (the element types the communicator carries). The communicator must
// accept the backend's memory (host memory for mpi_communicator with a CPU backend): every buffer handed
// to it is backend memory. A transport failure during the iteration (communication_error) can leave the
// output partly written; every other error is thrown before anything is written. The output is also
// the iterate, so products run fastest when it has a unit stride in one dimension.
#pragma once

#include <math.h>  // ::ldexp, ::ilogb, ::sqrt, INFINITY: the names a CUDA device function can call too

#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/distributed/communicator.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/detail/ns_functors.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

namespace detail {

/// The agreement row of one call: slot[0] ← this rank's verdict code (0: its input is fine), slot[1] ←
/// its local ‖X_r‖_F from slot[2] (0 when the input was refused, so a refused input's norm is never read).
struct tp_ns_agreement_row {
  scalar_t* slots;
  double code;
  ORTHOPT_HD void operator()() const {
    slots[0] = code;
    slots[1] = code == 0.0 ? slots[2] : 0.0;
  }
};

/// 2^-e with e = ilogb(largest), the common scale of the ranks' norms: every scaled norm is < 2, so the
/// sum of P squares is < 4P; norms more than 2^537 below the largest underflow to 0 when squared, which
/// is far below the sum's rounding. A zero, NaN or Inf largest norm uses scale 1 (the sum then is 0, NaN
/// or Inf as the single-process norm would be).
ORTHOPT_HD inline int tp_ns_common_exponent(double largest) {
  return (largest > 0.0 && largest < INFINITY) ? ::ilogb(largest) : 0;
}

/// out ← (local·2^-e)², e from the largest local norm (after the agreement's max).
struct tp_ns_scaled_square {
  const scalar_t* largest;
  const scalar_t* local;
  scalar_t* out;
  ORTHOPT_HD void operator()() const {
    const double v = ::ldexp(*local, -tp_ns_common_exponent(*largest));
    *out = v * v;
  }
};

/// norm ← √(Σ scaled squares)·2^e: ‖X‖_F of the whole matrix. For P = 1 this is the local norm exactly
/// (√(v²) = v in binary floating point with round-to-nearest when v² neither overflows nor underflows).
struct tp_ns_unscaled_norm {
  const scalar_t* largest;
  const scalar_t* sum_of_squares;
  scalar_t* norm;
  ORTHOPT_HD void operator()() const {
    *norm = ::ldexp(::sqrt(*sum_of_squares), tp_ns_common_exponent(*largest));
  }
};

}  // namespace detail

/// Newton–Schulz on one matrix sharded by columns over the ranks of a communicator (see the top of this
/// file for what it computes, its collectives, cost and limits).
///
///   orthopt::mpi_communicator comm(MPI_COMM_WORLD);
///   orthopt::tensor_parallel_newton_schulz<float, orthopt::eigen_backend>
///       ns(comm, m, n, my_columns, orthopt::ns_presets::keller());
///   ns.run(my_block, my_block);   // in place: my_block ← my columns of NS(X)
///
/// Construction and run() are collective: every rank of the communicator makes the plan, and calls run,
/// in the same order. Both check every argument on every rank and agree on the verdict before anything
/// else, so an error on one rank makes every rank throw (no rank is left waiting in a collective): the
/// rank with the fault throws the detailed shape_error or value_error, the others a value_error naming
/// that rank. A plan is not safe to call from two threads at once.
template <class T, class Backend>
  requires backend_for<Backend, T>
class tensor_parallel_newton_schulz {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "orthopt::tensor_parallel_newton_schulz: the communicator carries float and double only");

 public:
  using value_type = T;
  using backend_type = Backend;

  /// A plan for this rank's block of `local_cols` columns of a rows × global_cols matrix. Collective.
  ///
  /// Throws, on every rank alike: shape_error when rows, global_cols or local_cols is < 1, when the
  /// ranks disagree on rows or global_cols, or when the local_cols of the ranks do not add up to
  /// global_cols; value_error for a config that fails ns_config::validate, is not supported here (aol,
  /// gram), or differs between ranks (steps, coefficients, normalization, eps, safety, absolute_eps,
  /// check_finite). Where only some ranks found a fault in their own arguments, those throw their
  /// own error and the others a value_error naming the first of them.
  tensor_parallel_newton_schulz(communicator& comm, index_t rows, index_t global_cols, index_t local_cols,
                                ns_config config, const Backend& backend = Backend{})
      : comm_(&comm),
        backend_(backend),
        config_(std::move(config)),
        rows_(rows),
        global_cols_(global_cols),
        local_cols_(local_cols),
        rank_(comm.rank()),
        ranks_(comm.size()) {
    // Faults in this rank's own arguments are held, not thrown, until every rank has said how it fared:
    // a rank that threw here would leave the others waiting in the agreement below.
    int own_fault = no_fault;
    std::exception_ptr own_error;
    try {
      check_own_arguments();
      allocate_and_prepare();
    } catch (const shape_error&) {
      own_fault = shape_fault, own_error = std::current_exception();
    } catch (const value_error&) {
      own_fault = value_fault, own_error = std::current_exception();
    } catch (const std::bad_alloc&) {
      own_fault = memory_fault, own_error = std::current_exception();
    } catch (...) {
      own_fault = other_fault, own_error = std::current_exception();
    }
    agree_on_plan(own_fault, own_error);
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t global_cols() const noexcept { return global_cols_; }
  [[nodiscard]] index_t local_cols() const noexcept { return local_cols_; }
  /// The global index of this rank's first column: Σ local_cols of the ranks before it.
  [[nodiscard]] index_t column_offset() const noexcept { return column_offset_; }
  [[nodiscard]] const ns_config& config() const noexcept { return config_; }
  [[nodiscard]] Backend& backend() noexcept { return backend_; }
  [[nodiscard]] communicator& comm() const noexcept { return *comm_; }

  /// out_local ← this rank's columns of NS(X), from x_local = this rank's columns of X (rows ×
  /// local_cols, any positive strides). out_local may be x_local itself (in place: the same view); any
  /// other overlap is refused. Collective: every rank calls it once per matrix.
  ///
  /// Throws before anything is written, on every rank when any rank's input is refused: shape_error
  /// (on the rank at fault) for an empty or null view, a shape other than rows × local_cols, an output
  /// that overlaps itself or overlaps the input without being it; value_error (there) for a NaN or Inf
  /// entry when config.check_finite is on; on the other ranks a value_error naming the refusing rank.
  /// communication_error if the transport fails.
  void run(const_matrix_view<T> x_local, matrix_view<T> out_local) {
    // 1. This rank's verdict, without a collective, an allocation or a write.
    const input_fault fault = inspect_input(x_local, out_local);
    scalar_t* s = scalars_.data();
    if (fault == input_fault::none) frobenius_norm(backend_, x_local, s + local_norm_slot);
    const double code = fault == input_fault::none
                            ? 0.0
                            : static_cast<double>(rank_ + 1) * fault_code_base + static_cast<double>(fault);
    run_scalar(backend_, detail::tp_ns_agreement_row{s + verdict_slot, code});

    // 2. The agreement: the highest rank's fault wins (any nonzero code stops every rank), and slot 1
    //    becomes the largest local norm.
    comm_->allreduce(s + verdict_slot, 2, element_kind::float64, reduce_op::max);
    double verdict = 0.0;
    copy_to_host(backend_, &verdict, s + verdict_slot, sizeof(double));
    if (verdict != 0.0) throw_refusal(verdict, fault, x_local, out_local);

    // 3. ‖X‖_F from the ranks' scaled squares, then the normalization factor pair as newton_schulz forms it.
    using detail::tp_ns_scaled_square, detail::tp_ns_unscaled_norm;
    run_scalar(backend_, tp_ns_scaled_square{s + largest_norm_slot, s + local_norm_slot, s + sum_slot});
    comm_->allreduce(s + sum_slot, 1, element_kind::float64, reduce_op::sum);
    run_scalar(backend_, tp_ns_unscaled_norm{s + largest_norm_slot, s + sum_slot, s + norm_slot});
    run_scalar(backend_, detail::ns_normalization_factor{s + norm_slot, s + factor_slot, 1, config_.normalization,
                                                         config_.eps, config_.safety, config_.absolute_eps,
                                                         static_cast<double>(rows_) * static_cast<double>(global_cols_)});

    // 4. The iteration ping-pongs between out_local and the plan's m×n_r buffer, starting on whichever
    //    makes the T-th product land in out_local: no final copy, and in place is safe because x_local is
    //    read whole (norm, normalization) before the first product writes out_local.
    const bool col_major = out_local.row_stride < out_local.col_stride;
    const matrix_view<T> scratch = col_major ? col_major_view(iterate_.data(), rows_, local_cols_)
                                             : row_major_view(iterate_.data(), rows_, local_cols_);
    matrix_view<T> current = config_.steps % 2 == 0 ? out_local : scratch;
    matrix_view<T> next = config_.steps % 2 == 0 ? scratch : out_local;
    transform(backend_, x_local, current, detail::scale_by_factor_pair{s + factor_slot});

    using C = compute_t<T>;
    const matrix_view<T> gram = row_major_view(gram_.data(), rows_, rows_);
    const matrix_view<T> poly = row_major_view(poly_.data(), rows_, rows_);
    const matrix_view<T> poly_diagonal = poly.diagonal();
    const std::size_t gram_count = static_cast<std::size_t>(rows_) * static_cast<std::size_t>(rows_);
    for (int k = 1; k <= config_.steps; ++k) {
      const ns_coefficients& coef = config_.step(k);
      // A = Σ_r X_r·X_rᵀ: the local rank-n_r update, then the sum over ranks (a contiguous m×m buffer).
      syrk(backend_, C(1), current.as_const(), C(0), gram);
      comm_->allreduce(gram.data, gram_count, element_kind_of<T>(), reduce_op::sum);
      // P = a·I + b·A + c·A·Aᵀ, as newton_schulz forms it (A·A = A·Aᵀ as a rank-m update: half the flops;
      // syrk reads one triangle of b·A, so P comes out exactly symmetric even if the reduction left A
      // asymmetric by rounding).
      transform(backend_, gram.as_const(), poly, functors::scale_by<T>{static_cast<C>(coef.b)});
      if (coef.c != 0.0) syrk(backend_, static_cast<C>(coef.c), gram.as_const(), C(1), poly);
      transform(backend_, poly_diagonal, poly_diagonal, functors::add_constant<T>{static_cast<C>(coef.a)});
      // X_r ← P·X_r: this rank's columns of P·X.
      gemm(backend_, C(1), poly.as_const(), op::none, current.as_const(), op::none, C(0), next);
      std::swap(current, next);
    }
  }

 private:
  // Construction faults, as the agreement table carries them.
  static constexpr int no_fault = 0, shape_fault = 1, value_fault = 2, memory_fault = 3, other_fault = 4;
  // The agreement table: one row of doubles per rank (all values are exact in a double).
  static constexpr std::size_t field_fault = 0, field_rows = 1, field_global_cols = 2, field_local_cols = 3,
                               field_steps = 4, field_config = 5, table_width = 6;

  // A call's input faults; code = (rank + 1)·fault_code_base + fault, so the max over ranks is the
  // highest refusing rank and tells every rank who refused and why.
  enum class input_fault : int {
    none = 0,
    unusable_input,
    unusable_output,
    input_shape,
    output_shape,
    output_overlaps_itself,
    output_overlaps_input,
    nonfinite_input,
  };
  static constexpr double fault_code_base = 16.0;

  // The scalars of a call, in backend memory; the agreement's two slots (verdict, largest norm) and the
  // local norm must be consecutive in this order (tp_ns_agreement_row).
  static constexpr index_t verdict_slot = 0, largest_norm_slot = 1, local_norm_slot = 2, sum_slot = 3,
                           norm_slot = 4, factor_slot = 5, scalar_count = 7;

  static constexpr const char* who = "orthopt::tensor_parallel_newton_schulz";

  void check_own_arguments() const {
    if (rows_ < 1 || global_cols_ < 1 || local_cols_ < 1) {
      throw shape_error(std::string(who) + " (rank " + std::to_string(rank_) + "): rows = " + std::to_string(rows_) +
                        ", global_cols = " + std::to_string(global_cols_) + ", local_cols = " +
                        std::to_string(local_cols_) + "; each must be >= 1 (every rank holds at least one column)");
    }
    if (local_cols_ > global_cols_) {
      throw shape_error(std::string(who) + " (rank " + std::to_string(rank_) + "): local_cols = " +
                        std::to_string(local_cols_) + " > global_cols = " + std::to_string(global_cols_));
    }
    config_.validate();
    if (config_.normalization == ns_normalization::aol) {
      throw value_error(std::string(who) + ": ns_config '" + config_.name +
                        "' uses the aol normalization, which the tensor-parallel plan does not implement; use "
                        "frobenius, frobenius_clamp or safety");
    }
    if (config_.algorithm == ns_algorithm::gram) {
      throw value_error(std::string(who) + ": ns_config '" + config_.name +
                        "' asks for ns_algorithm::gram; the tensor-parallel plan runs ns_algorithm::standard only");
    }
    detail::checked_extent_product(who, "the m×m Gram matrix", rows_, rows_, 1, sizeof(T));
    detail::checked_extent_product(who, "the local iterate", rows_, local_cols_, 1, sizeof(T));
  }

  void allocate_and_prepare() {
    iterate_ = backend_.template allocate<T>(rows_ * local_cols_);
    gram_ = backend_.template allocate<T>(rows_ * rows_);
    poly_ = backend_.template allocate<T>(rows_ * rows_);
    scalars_ = backend_.template allocate<scalar_t>(scalar_count);
    prepare_syrk<T>(backend_, rows_, local_cols_);     // A_r = X_r·X_rᵀ
    prepare_syrk<T>(backend_, rows_, rows_);           // A·Aᵀ
    prepare_gemm<T>(backend_, rows_, local_cols_, rows_);  // P·X_r
  }

  /// A 52-bit digest (exact in a double) of everything in the config that changes the result or the
  /// checks: the coefficient rows the plan's steps use, the normalization and its constants, check_finite
  /// and the algorithm. FNV-1a over their bytes.
  [[nodiscard]] double config_digest() const {
    std::uint64_t h = 0xcbf29ce484222325ull;
    const auto mix = [&h](const void* p, std::size_t n) {
      const auto* b = static_cast<const unsigned char*>(p);
      for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    };
    for (int k = 1; k <= config_.steps; ++k) {
      const ns_coefficients& c = config_.step(k);
      mix(&c.a, sizeof c.a), mix(&c.b, sizeof c.b), mix(&c.c, sizeof c.c);
    }
    const int kinds[2] = {static_cast<int>(config_.normalization), static_cast<int>(config_.algorithm)};
    const unsigned char flags[2] = {config_.absolute_eps, config_.check_finite};
    mix(kinds, sizeof kinds), mix(&config_.eps, sizeof config_.eps), mix(&config_.safety, sizeof config_.safety);
    mix(flags, sizeof flags);
    return static_cast<double>(h >> 12);
  }

  /// One allgather of every rank's arguments, then the same verdict, computed from the same table, on
  /// every rank.
  void agree_on_plan(int own_fault, const std::exception_ptr& own_error) {
    const auto width = table_width, ranks = static_cast<std::size_t>(ranks_);
    const double mine[table_width] = {
        static_cast<double>(own_fault),     static_cast<double>(rows_),
        static_cast<double>(global_cols_),  static_cast<double>(local_cols_),
        static_cast<double>(config_.steps), own_fault == no_fault ? config_digest() : 0.0};
    // The exchange goes through backend memory, which is what the communicator is promised.
    auto exchange = backend_.template allocate<scalar_t>(static_cast<index_t>(width * (ranks + 1)));
    copy_from_host(backend_, exchange.data(), mine, sizeof mine);
    const std::vector<std::size_t> counts(ranks, width);
    comm_->allgatherv(exchange.data(), exchange.data() + width, counts, element_kind::float64);
    std::vector<double> table(width * ranks);
    copy_to_host(backend_, table.data(), exchange.data() + width, table.size() * sizeof(double));
    const auto at = [&](std::size_t r, std::size_t field) { return table[r * width + field]; };
    const auto value = [&](std::size_t r, std::size_t field) {
      return std::to_string(static_cast<long long>(at(r, field)));
    };

    // Faults in some rank's own arguments come first: that rank's error is the informative one.
    std::size_t faulty = 0, first_faulty = ranks;
    for (std::size_t r = 0; r < ranks; ++r) {
      if (at(r, field_fault) != no_fault) {
        ++faulty;
        if (first_faulty == ranks) first_faulty = r;
      }
    }
    if (faulty > 0) {
      if (own_error) std::rethrow_exception(own_error);
      static constexpr const char* fault_names[] = {"", "shape_error", "value_error", "std::bad_alloc", "exception"};
      throw value_error(std::string(who) + ": rank " + std::to_string(first_faulty) +
                        " could not make its plan (it threw " +
                        fault_names[static_cast<int>(at(first_faulty, field_fault))] + "; see its message)" +
                        (faulty > 1 ? " and so did " + std::to_string(faulty - 1) + " other rank(s)" : std::string()) +
                        "; no rank made one");
    }
    // Then agreement between the ranks, each against rank 0, so every rank names the same pair.
    const auto disagreement = [&](std::size_t field) -> std::size_t {
      for (std::size_t r = 1; r < ranks; ++r)
        if (at(r, field) != at(0, field)) return r;
      return 0;
    };
    if (const std::size_t r = disagreement(field_rows)) {
      throw shape_error(std::string(who) + ": the ranks disagree on rows: rank 0 passed " + value(0, field_rows) +
                        ", rank " + std::to_string(r) + " passed " + value(r, field_rows));
    }
    if (const std::size_t r = disagreement(field_global_cols)) {
      throw shape_error(std::string(who) + ": the ranks disagree on global_cols: rank 0 passed " +
                        value(0, field_global_cols) + ", rank " + std::to_string(r) + " passed " +
                        value(r, field_global_cols));
    }
    if (const std::size_t r = disagreement(field_steps)) {
      throw value_error(std::string(who) + ": the ranks disagree on the step count: rank 0 passed " +
                        value(0, field_steps) + ", rank " + std::to_string(r) + " passed " + value(r, field_steps));
    }
    if (const std::size_t r = disagreement(field_config)) {
      throw value_error(std::string(who) + ": rank " + std::to_string(r) +
                        "'s ns_config differs from rank 0's in its coefficients, normalization, eps, safety, "
                        "absolute_eps, check_finite or algorithm");
    }
    double total = 0.0;
    std::string terms;
    for (std::size_t r = 0; r < ranks; ++r) {
      total += at(r, field_local_cols);
      if (ranks <= 16) terms += (r > 0 ? " + " : "") + value(r, field_local_cols);
    }
    if (total != at(0, field_global_cols)) {
      throw shape_error(std::string(who) + ": the ranks' local_cols " + (ranks <= 16 ? terms + " = " : "add up to ") +
                        std::to_string(static_cast<long long>(total)) + ", not global_cols = " +
                        value(0, field_global_cols));
    }
    for (std::size_t r = 0; r < static_cast<std::size_t>(rank_); ++r) {
      column_offset_ += static_cast<index_t>(at(r, field_local_cols));
    }
  }

  /// This rank's verdict on a call's arguments: cheap checks, no message built, nothing allocated.
  [[nodiscard]] input_fault inspect_input(const_matrix_view<T> x, matrix_view<T> q) {
    if (!view_is_usable(x)) return input_fault::unusable_input;
    if (!view_is_usable(q)) return input_fault::unusable_output;
    if (x.rows != rows_ || x.cols != local_cols_) return input_fault::input_shape;
    if (q.rows != rows_ || q.cols != local_cols_) return input_fault::output_shape;
    if (view_overlaps_itself(q)) return input_fault::output_overlaps_itself;
    if (!is_same_view(x, q) && views_overlap(x, q)) return input_fault::output_overlaps_input;
    if (config_.check_finite) {
      nonfinite_ = find_nonfinite(backend_, x);
      if (nonfinite_) return input_fault::nonfinite_input;
    }
    return input_fault::none;
  }

  /// In place: the same elements in the same places (a stride of an extent-1 dimension is immaterial).
  [[nodiscard]] static bool is_same_view(const_matrix_view<T> x, matrix_view<T> q) noexcept {
    return x.data == q.data && x.rows == q.rows && x.cols == q.cols && (x.rows == 1 || x.row_stride == q.row_stride) &&
           (x.cols == 1 || x.col_stride == q.col_stride);
  }

  [[noreturn]] void throw_refusal(double verdict, input_fault own, const_matrix_view<T> x, matrix_view<T> q) const {
    const std::string here = std::string(who) + " (rank " + std::to_string(rank_) + ")";
    switch (own) {
      case input_fault::none: break;
      case input_fault::unusable_input: check_view(x, here.c_str(), "input"); break;
      case input_fault::unusable_output: check_view(q, here.c_str(), "output"); break;
      case input_fault::input_shape:
        throw shape_error(here + ": input is " + shape_string(x) + " but this rank's plan is for " +
                          shape_string(rows_, local_cols_) + " (columns " + std::to_string(column_offset_) + ".." +
                          std::to_string(column_offset_ + local_cols_ - 1) + " of a " +
                          shape_string(rows_, global_cols_) + " matrix)");
      case input_fault::output_shape: check_shape(q, rows_, local_cols_, here.c_str(), "output"); break;
      case input_fault::output_overlaps_itself:
        throw shape_error(here + ": the output [" + describe_view(q) + "] addresses some elements twice");
      case input_fault::output_overlaps_input:
        throw shape_error(here + ": the output [" + describe_view(q) + "] overlaps the input [" + describe_view(x) +
                          "] without being the same view; only out = x (in place) is allowed");
      case input_fault::nonfinite_input:
        throw value_error(here + ": input(" + std::to_string(nonfinite_->row) + ", " + std::to_string(nonfinite_->col) +
                          ") (global column " + std::to_string(column_offset_ + nonfinite_->col) + ") is " +
                          detail::value_text(nonfinite_->value) + "; NaN and Inf inputs are rejected");
    }
    static constexpr const char* fault_names[] = {
        "",
        "an empty, null or negatively strided input view",
        "an empty, null or negatively strided output view",
        "an input of the wrong shape",
        "an output of the wrong shape",
        "an output that addresses some elements twice",
        "an output that overlaps the input without being it",
        "a NaN or Inf entry in its input",
    };
    const auto code = static_cast<long long>(verdict);
    const long long refusing_rank = code / static_cast<long long>(fault_code_base) - 1;
    const auto fault = static_cast<int>(code % static_cast<long long>(fault_code_base));
    throw value_error(std::string(who) + ": rank " + std::to_string(refusing_rank) + " refused its input (" +
                      (fault > 0 && fault < 8 ? fault_names[fault] : "an unknown fault") +
                      "); no rank ran the iteration and every output is untouched");
  }

  communicator* comm_;
  Backend backend_;
  ns_config config_;
  index_t rows_ = 0, global_cols_ = 0, local_cols_ = 0, column_offset_ = 0;
  int rank_ = 0, ranks_ = 1;
  typename Backend::template buffer<T> iterate_, gram_, poly_;
  typename Backend::template buffer<scalar_t> scalars_;
  std::optional<nonfinite_entry> nonfinite_;  // the entry the last refused call's scan found
};

}  // namespace orthopt
