// The Eigen backend's primitives against float64 references, for every storage order and op.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "test_util.hpp"

using namespace testing;
using orthopt::op;

namespace {
/// An owning matrix of either storage order, viewed through orthopt.
template <class T>
struct any_order {
  Mat<T> cm;
  MatRM<T> rm;
  bool row_major;
  any_order(const MatD& x, bool rmaj) : cm(x.cast<T>()), rm(x.cast<T>()), row_major(rmaj) {}
  orthopt::matrix_view<T> view() { return row_major ? orthopt::make_view(rm) : orthopt::make_view(cm); }
  MatD value() const { return row_major ? MatD(rm.template cast<double>()) : MatD(cm.template cast<double>()); }
};
}  // namespace

TEMPLATE_TEST_CASE("gemm matches float64 for every op and storage order, with alpha and beta", "[backend][gemm]", float,
                   double) {
  using T = TestType;
  for (int threads : {1, 2}) {
    backend_under_test be = make_backend(threads);
    for (const shape s : {shape{1, 1}, shape{3, 1}, shape{1, 5}, shape{17, 33}, shape{70, 130}, shape{129, 65}}) {
      const index_t m = s.rows, n = s.cols, k = (s.rows + s.cols) / 2 + 1;
      for (int mask = 0; mask < 32; ++mask) {
        const bool ta = mask & 1, tb = mask & 2, ra = mask & 4, rb = mask & 8, rc = mask & 16;
        const MatD a = gaussian(ta ? k : m, ta ? m : k, seed_of(s, 21));
        const MatD b = gaussian(tb ? n : k, tb ? k : n, seed_of(s, 22));
        const MatD c0 = gaussian(m, n, seed_of(s, 23));
        any_order<T> A(a, ra), B(b, rb), C(c0, rc);
        const T alpha = T(0.75), beta = T(-0.5);
        orthopt::gemm(be, alpha, A.view(), ta ? op::transpose : op::none, B.view(), tb ? op::transpose : op::none,
                      beta, C.view());
        const MatD ad = A.value(), bd = B.value();
        const MatD ref = 0.75 * (ta ? MatD(ad.transpose()) : ad) * (tb ? MatD(bd.transpose()) : bd) +
                         (-0.5) * c0.cast<T>().template cast<double>();
        INFO("threads " << threads << " shape " << to_string(s) << " mask " << mask);
        CHECK(max_abs_diff(C.value(), ref) <= tol<T>(10, {k, k}) * std::sqrt(double(k)));
      }
    }
  }
}

TEMPLATE_TEST_CASE("gemm with beta = 0 ignores NaN in C; strided operands take the general path", "[backend][gemm]",
                   float, double) {
  using T = TestType;
  backend_under_test be;
  const MatD a = gaussian(9, 7, 31), b = gaussian(7, 5, 32);
  Mat<T> at = a.cast<T>(), bt = b.cast<T>();
  Mat<T> c = Mat<T>::Constant(9, 5, std::numeric_limits<T>::quiet_NaN());
  orthopt::gemm(be, T(1), orthopt::make_view(at), op::none, orthopt::make_view(bt), op::none, T(0), orthopt::make_view(c));
  CHECK(max_abs_diff(c.template cast<double>(), at.template cast<double>() * bt.template cast<double>()) <=
        tol<T>(10, {9, 9}));
  // Every other element of a larger buffer in both directions: no unit stride anywhere.
  Mat<T> big = Mat<T>::Zero(18, 14);
  for (index_t j = 0; j < 7; ++j)
    for (index_t i = 0; i < 9; ++i) big(2 * i, 2 * j) = at(i, j);
  const orthopt::matrix_view<T> strided{big.data(), 9, 7, 2, 36};
  Mat<T> c2(9, 5);
  orthopt::gemm(be, T(1), strided, op::none, orthopt::make_view(bt), op::none, T(0), orthopt::make_view(c2));
  CHECK(max_abs_diff(c2.template cast<double>(), c.template cast<double>()) <= tol<T>(10, {9, 9}));
  CHECK_THROWS_AS(orthopt::gemm(be, T(1), orthopt::make_view(at), op::none, orthopt::make_view(at), op::none, T(0),
                                orthopt::make_view(c2)),
                  orthopt::shape_error);
}

TEMPLATE_TEST_CASE("syrk fills both triangles of A·Aᵀ for every storage order", "[backend][syrk]", float, double) {
  using T = TestType;
  for (int threads : {1, 2}) {
    backend_under_test be = make_backend(threads);
    for (const shape s : {shape{1, 1}, shape{1, 8}, shape{8, 1}, shape{31, 17}, shape{100, 150}, shape{150, 100}}) {
      for (int mask = 0; mask < 8; ++mask) {
        const bool ra = mask & 1, rc = mask & 2, transposed = mask & 4;
        const MatD a = gaussian(s.rows, s.cols, seed_of(s, 24));
        // syrk's contract (as BLAS's): C is symmetric on input when β ≠ 0; only its lower triangle is read.
        const MatD g = gaussian(transposed ? s.cols : s.rows, transposed ? s.cols : s.rows, seed_of(s, 25));
        const MatD c0 = g + g.transpose();
        any_order<T> A(a, ra), C(c0, rc);
        const auto av = transposed ? A.view().transposed() : A.view();
        orthopt::syrk(be, T(2), av, T(0.5), C.view());
        const MatD ad = transposed ? MatD(A.value().transpose()) : A.value();
        const MatD ref = 2.0 * ad * ad.transpose() + 0.5 * c0.cast<T>().template cast<double>();
        INFO("threads " << threads << " shape " << to_string(s) << " mask " << mask);
        CHECK(max_abs_diff(C.value(), ref) <= tol<T>(20, s) * std::sqrt(double(std::max(s.rows, s.cols))));
        CHECK(max_abs_diff(C.value(), C.value().transpose()) == 0.0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("gemm_symmetric_result forms a symmetric product: both triangles, every storage order",
                   "[backend][gemm_symmetric]", float, double) {
  // A and B are polynomials in one symmetric matrix S (so symmetric and commuting), as Gram NS forms
  // them. Sizes past 512 take the BLAS backend's blocked path (leaves of 256 rows).
  using T = TestType;
  for (const index_t n : {index_t{1}, index_t{7}, index_t{64}, index_t{130}, index_t{513}, index_t{700}}) {
    const MatD g = gaussian(n, n, seed_of({n, n}, 26)) / std::sqrt(double(n));
    const MatD S = g * g.transpose();
    const MatD a = 1.5 * MatD::Identity(n, n) - 0.7 * S + 0.2 * S * S;
    const MatD b = -0.5 * MatD::Identity(n, n) + 2.0 * S;
    const MatD c0 = gaussian(n, n, seed_of({n, n}, 27));
    const MatD c_sym = c0 + c0.transpose();
    // The reference sees the operands rounded to T, as the backend does. One float64 product per size,
    // not one per thread count and storage order (they hold the same values): under the sanitizers the
    // reference products were most of this test's time.
    const MatD a_t = a.cast<T>().template cast<double>(), b_t = b.cast<T>().template cast<double>();
    const MatD ref = 0.75 * a_t * b_t - 0.5 * c_sym.cast<T>().template cast<double>();
    const double tolerance = tol<T>(40, {n, n}) * std::sqrt(double(n)) * (1.0 + ref.cwiseAbs().maxCoeff());
    for (int threads : {1, 2}) {
      backend_under_test be = make_backend(threads);
      for (int mask = 0; mask < 8; ++mask) {
        const bool ra = mask & 1, rb = mask & 2, rc = mask & 4;
        any_order<T> A(a, ra), B(b, rb), C(c_sym, rc);
        REQUIRE(A.value() == a_t);
        REQUIRE(B.value() == b_t);
        orthopt::gemm_symmetric_result(be, T(0.75), A.view(), B.view(), T(-0.5), C.view());
        INFO("threads " << threads << " n " << n << " mask " << mask);
        // The computed triangle is the product's, rounded; the other is its mirror, which differs from
        // the product's own entries by the asymmetry of the rounded A·B (of the same order).
        CHECK(max_abs_diff(C.value(), ref) <= tolerance);
        if (!batches_products) CHECK(max_abs_diff(C.value(), C.value().transpose()) == 0.0);
      }
    }
  }
  backend_under_test be;
  Mat<T> a(3, 4), c(3, 3);
  CHECK_THROWS_AS(orthopt::gemm_symmetric_result(be, T(1), orthopt::make_view(a), orthopt::make_view(a), T(0),
                                                 orthopt::make_view(c)),
                  orthopt::shape_error);
}

TEMPLATE_TEST_CASE("norms are accurate over the whole finite range", "[backend][norms]", float, double) {
  using T = TestType;
  backend_under_test be;
  const MatD x = gaussian(13, 29, 41);
  const double lo = std::is_same_v<T, float> ? 1e-35 : 1e-300;
  const double hi = std::is_same_v<T, float> ? 1e35 : 1e300;
  for (double c : {lo, 1e-20, 1.0, 1e20, hi}) {
    Mat<T> xt = (x * c).cast<T>();
    double nrm = 0.0;
    orthopt::frobenius_norm(be, orthopt::make_view(xt), &nrm);
    const double ref = c * (xt.template cast<double>() / c).norm();
    INFO("scale " << c);
    CHECK(nrm == Approx(ref).epsilon(1e-12));
    std::vector<double> cols(29);
    orthopt::column_norms(be, orthopt::make_view(xt), orthopt::column_norm::l2, cols.data());
    orthopt::column_norms(be, orthopt::make_view(xt), orthopt::column_norm::l2, cols.data());
    for (index_t j = 0; j < 29; ++j) CHECK(cols[j] == Approx(c * (xt.col(j).template cast<double>() / c).norm()).epsilon(1e-12));
    // Stored by rows (walked along the rows, one sum per column): the same sums in the same order, so
    // the same bits, the rescaled range included.
    const MatRM<T> xr = xt;
    std::vector<double> cols_r(29), l1(29), l1_r(29);
    orthopt::column_norms(be, orthopt::make_view(xr), orthopt::column_norm::l2, cols_r.data());
    orthopt::column_norms(be, orthopt::make_view(xt), orthopt::column_norm::l1, l1.data());
    orthopt::column_norms(be, orthopt::make_view(xr), orthopt::column_norm::l1, l1_r.data());
    CHECK(cols_r == cols);
    CHECK(l1_r == l1);
  }
  {  // Non-finite columns, stored by rows: NaN where a column has a NaN, Inf where it has an Inf.
    MatRM<T> xr = x.cast<T>();
    xr(3, 1) = std::numeric_limits<T>::quiet_NaN();
    xr(7, 2) = std::numeric_limits<T>::infinity();
    std::vector<double> cols_r(29);
    orthopt::column_norms(be, orthopt::make_view(xr), orthopt::column_norm::l2, cols_r.data());
    CHECK(std::isnan(cols_r[1]));
    CHECK(cols_r[2] == std::numeric_limits<double>::infinity());
    CHECK(cols_r[0] == Approx(xr.col(0).template cast<double>().norm()).epsilon(1e-12));
  }
  Mat<T> xt = x.cast<T>();
  std::vector<double> l1(29);
  orthopt::column_norms(be, orthopt::make_view(xt), orthopt::column_norm::l1, l1.data());
  for (index_t j = 0; j < 29; ++j) CHECK(l1[j] == Approx(xt.col(j).template cast<double>().cwiseAbs().sum()).epsilon(1e-12));
  xt(4, 5) = std::numeric_limits<T>::quiet_NaN();
  double nrm = 0.0;
  orthopt::frobenius_norm(be, orthopt::make_view(xt), &nrm);
  CHECK(std::isnan(nrm));
  const auto bad = orthopt::find_nonfinite(be, orthopt::make_view(xt));
  REQUIRE(bad.has_value());
  CHECK((bad->row == 4 && bad->col == 5 && std::isnan(bad->value)));
  xt(4, 5) = 1;
  CHECK_FALSE(orthopt::find_nonfinite(be, orthopt::make_view(xt)).has_value());
}

TEMPLATE_TEST_CASE("find_nonfinite reports the first NaN/Inf in row-major order, whatever the storage", "[backend][nonfinite]",
                   float, double) {
  using T = TestType;
  backend_under_test be;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T largest = std::numeric_limits<T>::max();
  for (int mask = 0; mask < 4; ++mask) {
    const bool row_major = mask & 1, strided = mask & 2;
    // A 23x37 matrix, inside a larger one when strided (a block: neither stride is the extent).
    any_order<T> big(gaussian(31, 45, 77), row_major);
    const auto full = big.view();
    const auto X = strided ? full.block(3, 5, 23, 37) : full.block(0, 0, 31, 45);
    INFO("row-major " << row_major << " strided " << strided);
    // The extremes of the finite range are finite.
    X(0, 0) = largest;
    X(1, 1) = -largest;
    X(2, 2) = std::numeric_limits<T>::denorm_min();
    CHECK_FALSE(orthopt::find_nonfinite(be, X).has_value());
    // Column-major storage meets (20, 1) first; row-major order reports (2, 30).
    X(20, 1) = nan;
    X(2, 30) = -inf;
    auto bad = orthopt::find_nonfinite(be, X);
    REQUIRE(bad.has_value());
    CHECK((bad->row == 2 && bad->col == 30 && bad->value == -double(std::numeric_limits<T>::infinity())));
    X(2, 30) = 0;
    bad = orthopt::find_nonfinite(be, X);
    REQUIRE(bad.has_value());
    CHECK((bad->row == 20 && bad->col == 1 && std::isnan(bad->value)));
    // The last element, and +Inf.
    X(20, 1) = 0;
    X(X.rows - 1, X.cols - 1) = inf;
    bad = orthopt::find_nonfinite(be, X);
    REQUIRE(bad.has_value());
    CHECK((bad->row == X.rows - 1 && bad->col == X.cols - 1 && bad->value == double(inf)));
    // Outside the view: not reported.
    X(X.rows - 1, X.cols - 1) = 0;
    if (strided) {
      full(0, 0) = nan;
      full(30, 44) = inf;
      CHECK_FALSE(orthopt::find_nonfinite(be, X).has_value());
    }
  }
}

TEMPLATE_TEST_CASE("transform, scale_columns and run_scalar", "[backend][elementwise]", float, double) {
  using T = TestType;
  backend_under_test be;
  const MatD x = gaussian(6, 4, 51), y = gaussian(6, 4, 52);
  Mat<T> xt = x.cast<T>();
  MatRM<T> yt = y.cast<T>();
  Mat<T> z(6, 4);
  orthopt::transform(be, orthopt::make_view(xt), orthopt::make_view(yt), orthopt::make_view(z),
                     [](T a, T b) { return a * b + T(1); });
  CHECK(max_abs_diff(z.template cast<double>(),
                     (xt.template cast<double>().array() * yt.template cast<double>().array() + 1.0).matrix()) <=
        4 * eps<T>() * 10);
  std::vector<double> d = {2.0, -1.0, 0.5, 0.0};
  orthopt::scale_columns(be, d.data(), orthopt::make_view(xt));
  for (index_t j = 0; j < 4; ++j)
    CHECK(max_abs_diff(xt.col(j).template cast<double>(), x.col(j).cast<T>().template cast<double>() * d[j]) <= 10 * eps<T>());
  // Row-major storage (walked along rows), and rows through the transposed view.
  MatRM<T> xr = x.cast<T>();
  orthopt::scale_columns(be, d.data(), orthopt::make_view(xr));
  for (index_t j = 0; j < 4; ++j)
    CHECK(max_abs_diff(xr.col(j).template cast<double>(), x.col(j).cast<T>().template cast<double>() * d[j]) <= 10 * eps<T>());
  const std::vector<double> r = {1.0, 2.0, -3.0, 0.25, 4.0, -0.5};
  MatRM<T> xrr = x.cast<T>();
  orthopt::scale_columns(be, r.data(), orthopt::make_view(xrr).transposed());
  for (index_t i = 0; i < 6; ++i)
    CHECK(max_abs_diff(xrr.row(i).template cast<double>(), x.row(i).cast<T>().template cast<double>() * r[i]) <= 10 * eps<T>());
  double s = 0.0;
  orthopt::run_scalar(be, [&] { s = 42.0; });
  CHECK(s == 42.0);
}

TEMPLATE_TEST_CASE("for_each_entry: several views in one pass, every storage order, long passes split over threads",
                   "[backend][elementwise]", float, double) {
  using T = TestType;
  // f reads G (const), updates M and writes U: what a fused momentum and Nesterov pass does.
  const auto f = [](const T& g, T& m, T& u) {
    m = T(0.5) * m + g;
    u = g + T(2) * m;
  };
  for (const index_t rows : {7, 300}) {  // 300×301: long enough for the Eigen backend to split it
    const index_t cols = rows == 7 ? 5 : 301;
    for (const bool g_rm : {false, true}) {
      for (const bool u_rm : {false, true}) {
        INFO(rows << "x" << cols << ", G " << (g_rm ? "row" : "column") << "-major, U " << (u_rm ? "row" : "column")
                  << "-major");
        const MatD g = gaussian(rows, cols, 61), m0 = gaussian(rows, cols, 62);
        any_order<T> G(g, g_rm), M(m0, false), U(MatD::Zero(rows, cols), u_rm);
        auto be = make_backend(2);
        orthopt::for_each_entry(be, f, G.view().as_const(), M.view(), U.view());
        const Mat<T> gt = g.cast<T>(), mt = m0.cast<T>();
        const MatD m_got = M.value(), u_got = U.value();
        bool all_equal = true;
        for (index_t j = 0; j < cols; ++j) {
          for (index_t i = 0; i < rows; ++i) {
            const T m_new = T(0.5) * mt(i, j) + gt(i, j);
            const T u_new = gt(i, j) + T(2) * m_new;
            all_equal = all_equal && m_got(i, j) == double(m_new) && u_got(i, j) == double(u_new);
          }
        }
        CHECK(all_equal);
        CHECK(G.value() == MatD(g.cast<T>().template cast<double>()));  // the const view is only read
      }
    }
  }
  // A strided view (every other column of a wider matrix) takes the entry-by-entry path.
  const MatD wide = gaussian(4, 6, 63);
  any_order<T> W(wide, false);
  orthopt::matrix_view<T> every_other(W.view().data, 4, 3, 1, 8);
  auto be = make_backend(1);
  orthopt::for_each_entry(be, [](T& x) { x = -x; }, every_other);
  const MatD w_got = W.value();
  for (index_t j = 0; j < 6; ++j)
    for (index_t i = 0; i < 4; ++i) CHECK(w_got(i, j) == (j % 2 == 0 ? -1.0 : 1.0) * double(T(wide(i, j))));
}

TEMPLATE_TEST_CASE("element-wise passes over views stored in different orders visit every entry once",
                   "[backend][elementwise][orders]", float, double) {
  // A column-major parameter beside a row-major state: the host backends walk such views in tiles
  // (partial tiles at the edges, bands split over threads), the others entry by entry. Every entry must
  // come out as a plain loop computes it, and an input must stay unchanged.
  using T = TestType;
  const auto f = [](const T& g, T& m, T& u) {
    m = T(0.5) * m + g;
    u = g - T(3) * m;
  };
  // 300×257 (77 100 entries): long enough for the bands to be split over the backend's two threads.
  for (const auto& [rows, cols] :
       {std::pair<index_t, index_t>{1, 70}, {70, 1}, {33, 70}, {64, 64}, {130, 257}, {300, 90}, {300, 257}}) {
    for (int orders = 0; orders < 8; ++orders) {
      const bool g_rm = (orders & 1) != 0, m_rm = (orders & 2) != 0, u_rm = (orders & 4) != 0;
      INFO(rows << "x" << cols << ", G " << (g_rm ? "row" : "column") << "-major, M " << (m_rm ? "row" : "column")
                << "-major, U " << (u_rm ? "row" : "column") << "-major");
      const MatD g = gaussian(rows, cols, 71), m0 = gaussian(rows, cols, 72), x0 = gaussian(rows, cols, 73);
      any_order<T> G(g, g_rm), M(m0, m_rm), U(MatD::Zero(rows, cols), u_rm), X(x0, u_rm), Y(MatD::Zero(rows, cols), m_rm),
          Z(MatD::Zero(rows, cols), g_rm);
      auto be = make_backend(2);
      orthopt::for_each_entry(be, f, G.view().as_const(), M.view(), U.view());
      orthopt::transform(be, X.view().as_const(), Y.view(), [](T x) { return T(2) * x + T(1); });
      orthopt::transform(be, G.view().as_const(), X.view().as_const(), Z.view(), [](T a, T b) { return a * b - b; });
      const Mat<T> gt = g.cast<T>(), mt = m0.cast<T>(), xt = x0.cast<T>();
      const MatD m_got = M.value(), u_got = U.value(), y_got = Y.value(), z_got = Z.value();
      bool all_equal = true;
      for (index_t j = 0; j < cols; ++j) {
        for (index_t i = 0; i < rows; ++i) {
          const T m_new = T(0.5) * mt(i, j) + gt(i, j);
          all_equal = all_equal && m_got(i, j) == double(m_new) && u_got(i, j) == double(T(gt(i, j) - T(3) * m_new)) &&
                      y_got(i, j) == double(T(T(2) * xt(i, j) + T(1))) &&
                      z_got(i, j) == double(T(gt(i, j) * xt(i, j) - xt(i, j)));
        }
      }
      CHECK(all_equal);
      CHECK(G.value() == MatD(gt.template cast<double>()));
      CHECK(X.value() == MatD(xt.template cast<double>()));
    }
  }
  auto be = make_backend(2);
  const index_t rows = 150, cols = 520;  // 78 000 entries: split over both threads
  {
    INFO("a view with a step between its entries (every other row of a column-major matrix) beside a row-major one");
    const MatD g = gaussian(2 * rows, cols, 74), m0 = gaussian(rows, cols, 75);
    Mat<T> wide = g.cast<T>();
    const Mat<T> wide_before = wide;
    const orthopt::matrix_view<T> every_other(wide.data(), rows, cols, 2, 2 * rows);  // rows 0, 2, 4, …
    MatRM<T> m = m0.cast<T>();
    orthopt::for_each_entry(be, [](T& x, T& y) { y = y - x; x = T(2) * x; }, every_other, orthopt::make_view(m));
    bool all_equal = true;
    for (index_t j = 0; j < cols; ++j) {
      for (index_t i = 0; i < 2 * rows; ++i) {
        // Even rows doubled; odd rows (between the view's entries) untouched.
        all_equal = all_equal && wide(i, j) == (i % 2 == 0 ? T(T(2) * wide_before(i, j)) : wide_before(i, j));
      }
      for (index_t i = 0; i < rows; ++i) all_equal = all_equal && m(i, j) == T(T(m0(i, j)) - wide_before(2 * i, j));
    }
    CHECK(all_equal);
  }
  {
    INFO("the same view given twice, stored in the other order than the first view");
    const MatD a0 = gaussian(rows, cols, 76), b0 = gaussian(rows, cols, 77);
    const Mat<T> a = a0.cast<T>();
    MatRM<T> b = b0.cast<T>();
    // As on one entry in sequence: the first reference's write is what the second reads.
    orthopt::for_each_entry(be, [](const T& x, T& first, T& second) { first = x; second = second + T(1); },
                            orthopt::make_view(a).as_const(), orthopt::make_view(b), orthopt::make_view(b));
    bool all_equal = true;
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) all_equal = all_equal && b(i, j) == T(a(i, j) + T(1));
    CHECK(all_equal);
  }
}

TEMPLATE_TEST_CASE("transpose_copy: dst(i, j) = src(j, i) for every shape, leading dimension and element size",
                   "[backend][elementwise][orders][transpose]", std::uint16_t, float, double) {
  // The tiled walk's copies between storage orders: blocks of 16 bytes a side in registers where the
  // compiler has vector extensions (8×8 of 2-byte, 4×4 of 4-byte, 2×2 of 8-byte entries), the rest
  // entry by entry. Shapes around every block size, leading dimensions beyond the extents: every entry
  // in place, nothing written between rows.
  using E = TestType;
#if !defined(__CUDACC__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
  INFO("GCC 12 and later and Clang have __builtin_shufflevector: the blocks must be moved in registers");
  CHECK(ORTHOPT_VECTOR_TRANSPOSE == 1);
#endif
  // Every remainder of the 8-entry blocks of 2-byte entries (and so of the 4- and 2-entry ones) in both
  // extents, blocks several times over, a whole 64-entry tile.
  for (const index_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 64, 67}) {
    for (const index_t cols : {1, 2, 3, 5, 6, 8, 12, 15, 31, 64, 66}) {
      INFO(rows << " x " << cols);
      const index_t src_ld = rows + 3, dst_ld = cols + 5;
      std::vector<E> src(static_cast<std::size_t>(cols * src_ld)), dst(static_cast<std::size_t>(rows * dst_ld), E(7));
      for (std::size_t k = 0; k < src.size(); ++k) src[k] = static_cast<E>(k % 2039 + 11);
      orthopt::detail::transpose_copy(src.data(), src_ld, dst.data(), dst_ld, rows, cols);
      bool all_equal = true;
      for (index_t i = 0; i < rows; ++i) {
        for (index_t j = 0; j < dst_ld; ++j) {
          const E want = j < cols ? src[static_cast<std::size_t>(j * src_ld + i)] : E(7);
          all_equal = all_equal && dst[static_cast<std::size_t>(i * dst_ld + j)] == want;
        }
      }
      CHECK(all_equal);
    }
  }
}

#if defined(ORTHOPT_TEST_BLAS)
// The BLAS backend says which BLAS it calls. With OpenBLAS (what CI links): its core, threads and
// configuration, and whether the core is a generic fallback. tests/CMakeLists.txt runs this case once
// more with OPENBLAS_CORETYPE=Prescott and ORTHOPT_TEST_EXPECT_CORE=Prescott, where it must say generic.
TEST_CASE("blas_library names the BLAS, its kernel set and threads, and spots a generic fallback", "[backend][blas_info]") {
  orthopt::blas_backend be;
  const orthopt::blas_library_info info = orthopt::blas_library();
  INFO("name " << info.name << ", core " << info.core << ", threads " << info.threads << ", config " << info.config);
  if (info.name == "OpenBLAS") {
    CHECK_FALSE(info.core.empty());
    CHECK(info.threads >= 1);
    CHECK(info.config.find("OpenBLAS") != std::string::npos);
    CHECK(info.config.find(info.core) != std::string::npos);  // the configuration names the chosen core
  } else {
    CHECK(info.name == "not OpenBLAS");
    CHECK(info.core.empty());
    CHECK_FALSE(info.generic_kernels);
  }
  if (const char* expected = std::getenv("ORTHOPT_TEST_EXPECT_CORE")) {
    CHECK(info.core == expected);
    CHECK(info.generic_kernels == (std::string(expected) == "Prescott"));
  } else {
    CHECK(info.generic_kernels == (info.core == "Prescott" || info.core == "Core2" || info.core == "Nehalem"));
  }
}
#endif
