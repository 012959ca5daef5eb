// SPDX-License-Identifier: Apache-2.0
//
// The BLAS CPU backend: the Eigen backend with its two level-3 products, gemm and syrk, handed to the
// system's CBLAS (OpenBLAS, BLIS, MKL, the reference BLAS: whichever libblas the program links).
// Everything else (norms, element-wise maps, buffers, the SVD of exact_polar) is the Eigen backend's,
// inherited. Link the CMake target orthopt::blas (it adds BLAS::BLAS); include <orthopt/blas.hpp>.
//
// Why: the products are nearly all of a Newton–Schulz step, and a tuned BLAS runs them faster than
// Eigen's built-in kernels on most CPUs (on this project's machine OpenBLAS's sgemm is about 1.4× Eigen
// 3.4's on the AVX2 machines this project has run on; docs/benchmarks.md has the current machine's numbers). syrk stays a rank-k update (half the multiply-adds of a gemm), as in
// the Eigen backend.
//
// Threads: the BLAS library decides how many threads its calls use (OpenBLAS: OPENBLAS_NUM_THREADS or
// OMP_NUM_THREADS, or openblas_set_num_threads). `threads` of the handle only splits orthopt's own
// passes (the mirror of syrk's triangle). With an OpenMP program, prefer a BLAS built on the same
// OpenMP runtime (Debian: libopenblas0-openmp): two thread pools spinning against each other halve the
// speed of both.
//
// Allocation: orthopt allocates nothing in a product. The BLAS library manages its own buffers (OpenBLAS
// reserves them on its first call and reuses them); tests/test_no_alloc.cpp checks that a planned NS
// call with this backend makes no heap allocation after a warm-up call.
//
// Fallbacks, for views a BLAS cannot take: an operand or an output with no unit stride, a leading
// dimension smaller than the extent it spans, extents beyond the BLAS integer range, or element types
// other than float and double, go to the Eigen backend's implementation of the same primitive.
#pragma once

#include <cblas.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "orthopt/eigen/backend.hpp"

// OpenBLAS's own queries, referenced weakly: present when the program links OpenBLAS, null otherwise
// (another BLAS), so that blas_library() can say which it is without requiring OpenBLAS.
#if defined(__GNUC__) || defined(__clang__)
extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
int openblas_get_num_threads(void);
}
#pragma weak openblas_get_corename
#pragma weak openblas_get_config
#pragma weak openblas_get_num_threads
#define ORTHOPT_BLAS_QUERIES 1
#endif

namespace orthopt {

/// The BLAS library the program runs on (blas_library()).
struct blas_library_info {
  std::string name;     ///< "OpenBLAS", or "not OpenBLAS" when its queries are absent (BLIS, MKL, reference)
  std::string config;   ///< OpenBLAS: openblas_get_config() (version, build options, core)
  std::string core;     ///< OpenBLAS: the kernel set it chose for this CPU ("Haswell", "SkylakeX", "Prescott")
  int threads = 0;      ///< OpenBLAS: the threads its calls use; 0 when unknown
  /// OpenBLAS chose a generic kernel set (Prescott, Core2, …): it did not recognise the CPU, and its
  /// products run several times slower than the CPU allows. Fix: OPENBLAS_CORETYPE (Haswell, Zen,
  /// SkylakeX, …) set before the program starts; docs/errors-and-guarantees.md, "BLAS kernels".
  bool generic_kernels = false;
};

/// Which BLAS the BLAS backend calls, its kernel set and threads: for diagnostics and logs.
inline blas_library_info blas_library() {
  blas_library_info info;
#if defined(ORTHOPT_BLAS_QUERIES)
  if (&openblas_get_corename != nullptr) {
    info.name = "OpenBLAS";
    if (const char* core = openblas_get_corename()) info.core = core;
    if (&openblas_get_config != nullptr) {
      if (const char* config = openblas_get_config()) info.config = config;
    }
    if (&openblas_get_num_threads != nullptr) info.threads = openblas_get_num_threads();
    std::string lower;
    for (char c : info.core) lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    for (std::string_view generic : {"prescott", "katmai", "coppermine", "northwood", "banias", "core2", "penryn",
                                     "dunnington", "nehalem", "atom", "athlon", "opteron", "barcelona", "bobcat"}) {
      if (lower == generic) info.generic_kernels = true;
    }
    return info;
  }
#endif
  info.name = "not OpenBLAS";
  return info;
}

namespace detail {
/// Once per program, when a BLAS backend is first made: a line on stderr if OpenBLAS runs generic
/// kernels. ORTHOPT_BLAS_WARNING=0 in the environment silences it.
inline void warn_once_if_generic_blas() {
  static const bool warned = [] {
    const char* quiet = std::getenv("ORTHOPT_BLAS_WARNING");
    if (quiet != nullptr && std::string_view(quiet) == "0") return false;
    const blas_library_info info = blas_library();
    if (!info.generic_kernels) return false;
    std::fprintf(stderr,
                 "orthopt: OpenBLAS runs its generic %s kernels (it did not recognise this CPU), several times "
                 "slower than the CPU allows; set OPENBLAS_CORETYPE (e.g. Haswell, Zen, SkylakeX) before the "
                 "program starts. ORTHOPT_BLAS_WARNING=0 silences this line.\n",
                 info.core.c_str());
    return true;
  }();
  (void)warned;
}
}  // namespace detail

/// The BLAS backend handle: an eigen_backend whose gemm and syrk call CBLAS. Copies share the Eigen
/// backend's scratch, as eigen_backend copies do. Making the first one checks, once, which kernels
/// OpenBLAS chose (detail::warn_once_if_generic_blas).
class blas_backend : public eigen_backend {
 public:
  blas_backend() { detail::warn_once_if_generic_blas(); }
  explicit blas_backend(int threads) : eigen_backend(threads) { detail::warn_once_if_generic_blas(); }
};

namespace detail {

template <class T>
inline constexpr bool blas_scalar = std::is_same_v<T, float> || std::is_same_v<T, double>;

/// A matrix operand as CBLAS takes it (column-major): data, leading dimension, and whether the view is
/// the transpose of the stored column-major matrix.
template <class T>
struct blas_operand {
  const T* data;
  int ld;
  bool transposed;
};

inline bool fits_blas_int(index_t v) noexcept { return v >= 0 && v <= static_cast<index_t>(INT_MAX); }

/// The CBLAS form of a view, or nothing when a BLAS cannot read it (no unit stride, a leading dimension
/// below the extent it must span, or out of the integer range).
template <class T>
std::optional<blas_operand<T>> as_blas_operand(const_matrix_view<T> v) {
  const auto k = as_kernel_operand(v);
  if (!k) return std::nullopt;
  // Column-major storage holds rows x cols with ld >= rows; its transpose holds cols x rows, ld >= cols.
  const index_t spanned = k->row_major ? v.cols : v.rows;
  if (k->stride < std::max<index_t>(spanned, 1) || !fits_blas_int(k->stride)) return std::nullopt;
  return blas_operand<T>{k->data, static_cast<int>(k->stride), k->row_major};
}

inline CBLAS_TRANSPOSE blas_trans(bool transposed) noexcept { return transposed ? CblasTrans : CblasNoTrans; }

}  // namespace detail

/// No scratch to reserve: the BLAS manages its own buffers.
template <class T>
void prepare_gemm(blas_backend&, index_t, index_t, index_t) {}
template <class T>
void prepare_syrk(blas_backend&, index_t, index_t) {}

/// C ← α·op(A)·op(B) + β·C through ?gemm. With β = 0, C's previous contents (even NaN) are ignored.
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm(blas_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A, op op_a, matrix_view<TB> B, op op_b,
          std::type_identity_t<T> beta, matrix_view<T> C_in) {
  eigen_backend& fallback = be;
  if constexpr (!detail::blas_scalar<T>) {
    gemm<T>(fallback, alpha, A, op_a, B, op_b, beta, C_in);
  } else {
    // CBLAS writes column-major C here; a row-major C is the transposed problem (as in the Eigen backend).
    const auto [L, R, C] = detail::orient_gemm(A, op_a, B, op_b, C_in);
    const index_t m = C.rows, n = C.cols, k = L.cols;
    if (m == 0 || n == 0) return;
    const auto lo = detail::as_blas_operand(L);
    const auto ro = detail::as_blas_operand(R);
    const auto co = detail::as_blas_operand(C.as_const());
    if (!lo || !ro || !co || co->transposed || !detail::fits_blas_int(m) || !detail::fits_blas_int(n) ||
        !detail::fits_blas_int(k)) {
      gemm<T>(fallback, alpha, L, op::none, R, op::none, beta, C);
      return;
    }
    if (k == 0 || alpha == T(0)) {  // no product: C ← β·C (a BLAS would do the same, by its own rules)
      detail::scale_in_place(C, beta);
      return;
    }
    const auto trans_l = detail::blas_trans(lo->transposed), trans_r = detail::blas_trans(ro->transposed);
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasColMajor, trans_l, trans_r, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                  alpha, lo->data, lo->ld, ro->data, ro->ld, beta, C.data, co->ld);
    } else {
      cblas_dgemm(CblasColMajor, trans_l, trans_r, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                  alpha, lo->data, lo->ld, ro->data, ro->ld, beta, C.data, co->ld);
    }
  }
}

/// C ← α·A·Aᵀ + β·C for A (n×k), C (n×n), through ?syrk on the lower triangle, then mirrored; as in
/// BLAS, C must be symmetric on input when β ≠ 0 (its upper triangle is not read).
template <class T, class TA>
  requires std::same_as<std::remove_const_t<TA>, T>
void syrk(blas_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A_in, std::type_identity_t<T> beta,
          matrix_view<T> C) {
  eigen_backend& fallback = be;
  if constexpr (!detail::blas_scalar<T>) {
    syrk<T>(fallback, alpha, A_in, beta, C);
  } else {
    const const_matrix_view<T> A = A_in.as_const();
    if (C.rows != A.rows || C.cols != A.rows) {
      throw shape_error("orthopt::syrk: A is " + shape_string(A) + " so C must be " + shape_string(A.rows, A.rows) +
                        ", but C is " + shape_string(C));
    }
    const index_t n = A.rows, k = A.cols;
    if (n == 0) return;
    // C is symmetric: a row-major C is filled as its (column-major) transpose.
    if (!(C.row_stride == 1 || C.rows == 1) && (C.col_stride == 1 || C.cols == 1)) C = C.transposed();
    const auto ao = detail::as_blas_operand(A);
    const auto co = detail::as_blas_operand(C.as_const());
    if (!ao || !co || co->transposed || !detail::fits_blas_int(n) || !detail::fits_blas_int(k)) {
      syrk<T>(fallback, alpha, A, beta, C);
      return;
    }
    if (k == 0 || alpha == T(0)) {
      detail::scale_in_place(C, beta);
      return;
    }
    // A = op(S) for the stored column-major S: op(S)·op(S)ᵀ is syrk's NoTrans (S·Sᵀ) or Trans (Sᵀ·S).
    const auto trans = detail::blas_trans(ao->transposed);
    if constexpr (std::is_same_v<T, float>) {
      cblas_ssyrk(CblasColMajor, CblasLower, trans, static_cast<int>(n), static_cast<int>(k), alpha, ao->data, ao->ld,
                  beta, C.data, co->ld);
    } else {
      cblas_dsyrk(CblasColMajor, CblasLower, trans, static_cast<int>(n), static_cast<int>(k), alpha, ao->data, ao->ld,
                  beta, C.data, co->ld);
    }
    detail::mirror_lower_to_upper(be, n, C.data, static_cast<index_t>(co->ld));
  }
}

namespace detail {
/// lower(C[r0:r1, r0:r1]) ← α·A[r0:r1, :]·B[:, r0:r1] + β·C by halving: the block below the diagonal as
/// one gemm, the two diagonal halves recursively, down to blocks of fewer than 2·leaf rows (computed whole).
template <class T>
void blas_lower_blocks(blas_backend& be, T alpha, const_matrix_view<T> A, const_matrix_view<T> B, T beta,
                       matrix_view<T> C, index_t r0, index_t r1, index_t leaf) {
  const index_t n = r1 - r0;
  if (n < 2 * leaf) {
    gemm<T>(be, alpha, A.block(r0, 0, n, A.cols), op::none, B.block(0, r0, B.rows, n), op::none, beta,
            C.block(r0, r0, n, n));
    return;
  }
  const index_t mid = r0 + n / 2;
  gemm<T>(be, alpha, A.block(mid, 0, r1 - mid, A.cols), op::none, B.block(0, r0, B.rows, mid - r0), op::none, beta,
          C.block(mid, r0, r1 - mid, mid - r0));
  blas_lower_blocks(be, alpha, A, B, beta, C, r0, mid, leaf);
  blas_lower_blocks(be, alpha, A, B, beta, C, mid, r1, leaf);
}
}  // namespace detail

/// C ← α·A·B + β·C for a product known to be symmetric. The BLAS has no product with a triangular
/// result (?gemmt is not in every CBLAS: OpenBLAS added it in 0.3.22), so the lower triangle is formed
/// by gemm calls on halved blocks (down to 256–511 rows) and mirrored: at n = 1024, 62.5 % of a gemm's
/// multiply-adds; below 512 rows, one gemm, mirrored. As in syrk, C must be symmetric on input when β ≠ 0
/// (with a β ≠ 0 the blocks read only C's lower triangle, and views C is not column-major in go to gemm).
template <class T, class TA, class TB>
  requires(std::same_as<std::remove_const_t<TA>, T> && std::same_as<std::remove_const_t<TB>, T>)
void gemm_symmetric_result(blas_backend& be, std::type_identity_t<T> alpha, matrix_view<TA> A_in,
                           matrix_view<TB> B_in, std::type_identity_t<T> beta, matrix_view<T> C) {
  const_matrix_view<T> A = A_in.as_const(), B = B_in.as_const();
  detail::orient_symmetric_product(A, B, C);
  const index_t n = A.rows;
  constexpr index_t leaf = 256;
  if (!detail::blas_scalar<T> || !(C.row_stride == 1 || C.rows == 1)) {
    gemm<T>(be, alpha, A, op::none, B, op::none, beta, C);
    return;
  }
  // Below 512 rows one gemm (the blocks would be too small to run at speed); mirrored all the same, so
  // that the result is exactly symmetric on every path.
  detail::blas_lower_blocks<T>(be, alpha, A, B, beta, C, 0, n, leaf);
  detail::mirror_lower_to_upper(be, n, C.data, C.cols <= 1 ? std::max<index_t>(n, 1) : C.col_stride);
}

}  // namespace orthopt
