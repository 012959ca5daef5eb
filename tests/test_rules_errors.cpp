// Edge cases and bad input for the update rules: all-zero and tiny gradients (documented results),
// NaN/Inf gradients, shape mismatches, a state from another rule, invalid hyper-parameters. Every
// rejected step must leave the parameters and the whole state (momentum, second moment, column moment,
// step count) bit-identical.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <limits>
#include <string_view>
#include <utility>

#include "test_util.hpp"

using namespace testing;
using Catch::Matchers::Contains;

namespace {


/// The bytes of a view's elements, in row-major order.
template <class V>
std::vector<unsigned char> bytes_of(const V& v) {
  std::vector<unsigned char> out;
  for (index_t i = 0; i < v.rows; ++i)
    for (index_t j = 0; j < v.cols; ++j) {
      const auto* p = reinterpret_cast<const unsigned char*>(&v(i, j));
      out.insert(out.end(), p, p + sizeof(v(i, j)));
    }
  return out;
}

/// Every persistent tensor of a state, byte for byte — momentum, second moment (AdaMuon, AdamW), column
/// moment (NAMO's v, NAMO-D's V_j) of every batch entry — and its step count.
struct snapshot {
  std::vector<std::vector<unsigned char>> tensors;
  std::int64_t step = 0;
  friend bool operator==(const snapshot&, const snapshot&) = default;
};
template <class State>
snapshot take(const State& st) {  // read-only views: a read keeps what the value guard knows
  snapshot s;
  s.step = st.step();
  for (index_t k = 0; k < st.count(); ++k) {
    s.tensors.push_back(bytes_of(st.momentum(k)));
    s.tensors.push_back(bytes_of(st.second_moment(k)));
    s.tensors.push_back(bytes_of(st.column_moment(k)));
  }
  return s;
}

template <class T, class M>
bool bit_identical(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

/// Calls `op`, expecting an exception of type E whose message contains every needle.
template <class E, class Op>
void expect_throw(Op&& op, const std::vector<std::string>& needles) {
  bool thrown = false;
  try {
    op();
  } catch (const E& e) {
    thrown = true;
    INFO("message: " << e.what());
    for (const auto& n : needles) CHECK_THAT(std::string(e.what()), Contains(n));
  } catch (const std::exception& e) {
    INFO("unexpected exception type: " << e.what());
    CHECK(false);
    return;
  }
  CHECK(thrown);
}

/// Applies `f` to one rule object of each kind and preset, for the element type T.
template <class T, class F>
void for_each_rule(F&& f) {
  f(Muon<T>(orthopt::muon_presets::keller()), "muon keller");
  f(Muon<T>(orthopt::muon_presets::moonlight()), "muon moonlight");
  f(Muon<T>(orthopt::muon_presets::torch()), "muon torch");
  {
    orthopt::muon_options o = orthopt::muon_presets::moonlight();
    o.ortho.exact = true;
    f(Muon<T>(o), "muon exact polar");
  }
  f(AdaMuon<T>(orthopt::adamuon_presets::paper()), "adamuon paper");
  f(AdaMuon<T>(orthopt::adamuon_presets::code()), "adamuon code");
  f(AdaMuon<T>(orthopt::adamuon_presets::code_gpt2()), "adamuon code_gpt2");
  f(AdaMuon<T>(orthopt::adamuon_presets::v1()), "adamuon v1");
  f(Namo<T>(orthopt::namo_presets::code()), "namo code");
  f(Namo<T>(orthopt::namo_presets::paper()), "namo paper");
  f(NamoD<T>(orthopt::namo_d_presets::code()), "namo_d code");
  f(NamoD<T>(orthopt::namo_d_presets::gpt2_small()), "namo_d gpt2_small");
  f(AdamW<T>(orthopt::adamw_presets::torch()), "adamw torch");
  f(AdamW<T>(orthopt::adamw_presets::moonlight()), "adamw moonlight");
}

template <class Rule>
constexpr bool is_namo = std::is_same_v<typename Rule::options_type, orthopt::namo_options>;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// All-zero gradients
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("an all-zero gradient on a fresh state gives the documented, finite result", "[rules][edge][zero]",
                   float, double) {
  using T = TestType;
  for (const shape s : {shape{1, 1}, shape{1, 9}, shape{9, 1}, shape{16, 16}, shape{17, 40}, shape{40, 17}}) {
    for_each_rule<T>([&](auto rule, const char* label) {
      using Rule = decltype(rule);
      INFO(label << " shape " << to_string(s));
      auto st = rule.make_state(s.rows, s.cols);
      const Mat<T> w0 = gaussian(s.rows, s.cols, seed_of(s, 1)).cast<T>();
      Mat<T> w = w0;
      const Mat<T> zero = Mat<T>::Zero(s.rows, s.cols);
      for (int k = 1; k <= 2; ++k) {
        const Mat<T> before = w;
        rule.step(orthopt::make_view(w), orthopt::make_view(zero), st);
        REQUIRE(w.allFinite());
        // Documented results (a zero gradient history makes every direction zero):
        //   Muon: M = 0, NS(0) = 0 (and polar(0) = 0): only the weight decay W(1 − ηλ) applies.
        //   AdaMuon: sign(0) = 0, O = 0, V = 0, Ô = 0/(0 + ε) = 0; the paper form's γ = 0.2√(AB)/‖Ô‖ is 0/0,
        //     which detail::adamuon_scale defines as step 0; the code form's γ·Ô = (…/ε)·0 = 0: W(1 − ηλ).
        //   NAMO: g = u = v = 0, so α = 0: decay 1 − λ·0 = 1 and step 0 — W is unchanged, in both forms.
        //   NAMO-D: d_j = 0/(0 + ε) = 0 for every column, d̄ = 0 (no clamp): W is unchanged.
        //   AdamW: m = v = 0, m/(√v + ε) = 0: W(1 − ηλ).
        Mat<T> expected = before;
        if constexpr (!is_namo<Rule>) {
          const double decay = 1.0 - rule.options().lr * rule.options().weight_decay;
          expected = (before.template cast<double>() * decay).template cast<T>();
        }
        INFO("step " << k);
        CHECK(bit_identical<T>(w, expected));
        CHECK(st.step() == k);
        // The state stays zero (+0.0 in every byte).
        for (const auto& t : take(st).tensors)
          CHECK(std::all_of(t.begin(), t.end(), [](unsigned char b) { return b == 0; }));
      }
      if constexpr (!is_namo<Rule>) {
        if (rule.options().weight_decay > 0.0) CHECK(!bit_identical<T>(w, w0));  // the decay did apply
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// NaN / Inf gradients
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("a NaN or Inf gradient is rejected, naming its position, with parameters and state unchanged",
                   "[rules][errors][nonfinite]", float, double) {
  using T = TestType;
  const shape s{7, 5};
  const T bad_values[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                          -std::numeric_limits<T>::infinity()};
  for (const T bad : bad_values) {
    for_each_rule<T>([&](auto rule, const char* label) {
      INFO(label << " bad value " << bad);
      auto st = rule.make_state(s.rows, s.cols);
      Mat<T> w = gaussian(s.rows, s.cols, seed_of(s, 2)).cast<T>();
      for (int k = 0; k < 2; ++k) {  // a non-zero state first
        const Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 3 + static_cast<std::uint64_t>(k))).cast<T>();
        rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
      }
      Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 9)).cast<T>();
      g(4, 3) = bad;
      const Mat<T> w_before = w;
      const snapshot state_before = take(st);
      REQUIRE(state_before.step == 2);
      expect_throw<orthopt::value_error>([&] { rule.step(orthopt::make_view(w), orthopt::make_view(g), st); },
                                         {"gradient(4, 3)", std::isnan(bad) ? "nan" : "inf", "unchanged"});
      CHECK(bit_identical<T>(w, w_before));
      CHECK(take(st) == state_before);
      // A batch: the bad entry in item 1 leaves item 0 untouched too (all checks run before any write).
      const index_t E = 3, n = s.rows * s.cols;
      auto bst = rule.make_state(s.rows, s.cols, E);
      std::vector<T> wb(static_cast<std::size_t>(E * n)), gb(wb.size());
      for (std::size_t i = 0; i < wb.size(); ++i) {
        wb[i] = static_cast<T>(std::sin(0.3 * double(i)));
        gb[i] = static_cast<T>(std::cos(0.7 * double(i)));
      }
      rule.step(orthopt::row_major_batch(wb.data(), E, s.rows, s.cols),
                orthopt::row_major_batch<const T>(gb.data(), E, s.rows, s.cols), bst);
      gb[static_cast<std::size_t>(n + 2 * s.cols + 1)] = bad;  // item 1, entry (2, 1)
      const std::vector<T> wb_before = wb;
      const snapshot bst_before = take(bst);
      expect_throw<orthopt::value_error>(
          [&] {
            rule.step(orthopt::row_major_batch(wb.data(), E, s.rows, s.cols),
                      orthopt::row_major_batch<const T>(gb.data(), E, s.rows, s.cols), bst);
          },
          {"gradient(2, 1)", "batch item 1"});
      CHECK(std::memcmp(wb.data(), wb_before.data(), wb.size() * sizeof(T)) == 0);
      CHECK(take(bst) == bst_before);
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Tiny gradients
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("1e-30 gradients give Muon and AdaMuon the same updates as normal ones", "[rules][edge][tiny]",
                   float, double) {
  using T = TestType;
  const int steps = 4;
  for (const shape s : {shape{1, 9}, shape{9, 1}, shape{16, 16}, shape{17, 40}, shape{40, 17}}) {
    const auto run = [&](auto rule, double scale) {
      auto st = rule.make_state(s.rows, s.cols);
      Mat<T> w = (0.5 * gaussian(s.rows, s.cols, seed_of(s, 5))).cast<T>();
      for (int k = 0; k < steps; ++k) {
        const Mat<T> g = (scale * gaussian(s.rows, s.cols, seed_of(s, 6 + static_cast<std::uint64_t>(k)))).cast<T>();
        rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
      }
      return MatD(w.template cast<double>());
    };
    const MatD w0 = (0.5 * gaussian(s.rows, s.cols, seed_of(s, 5))).cast<T>().template cast<double>();
    // Both runs differ by rounding 1e-30·G to T (ε_T relative), which NS amplifies by at most its schedule
    // gain: bound 10·ε_T·√n·gain relative to the total update size, as in tests/test_rules.cpp.
    const auto compare = [&](const std::string& label, const MatD& normal, const MatD& tiny,
                             const orthopt::ns_config& ns) {
      const double D = steps * max_abs_diff(normal, w0);  // ≥ the total update size up to the decay
      const double bound = testing::tol<T>(10 * schedule_gain(ns), s) * D +
                           4 * eps<T>() * steps * std::max(1.0, normal.cwiseAbs().maxCoeff());
      INFO(label << " shape " << to_string(s));
      REQUIRE(tiny.allFinite());
      CHECK(max_abs_diff(normal, tiny) <= bound);
      CHECK(max_abs_diff(normal, w0) > 1e-4);  // a real step, not two no-ops
    };
    for (const auto& o :
         {orthopt::muon_presets::keller(), orthopt::muon_presets::moonlight(), orthopt::muon_presets::torch()}) {
      compare("muon " + o.preset, run(Muon<T>(o), 1.0), run(Muon<T>(o), 1e-30), o.ortho.ns);
    }
    // AdaMuon with the sign map: sign(1e-30·M) = sign(M), bit-identical in fact; v1 (no sign) relies on
    // NS's scale invariance.
    for (const auto& o :
         {orthopt::adamuon_presets::paper(), orthopt::adamuon_presets::code(), orthopt::adamuon_presets::v1()}) {
      compare("adamuon " + o.preset, run(AdaMuon<T>(o), 1.0), run(AdaMuon<T>(o), 1e-30), o.ortho.ns);
    }
  }
  // NAMO's documented behaviour with 1e-30 gradients (the step shrinks by the formula) is asserted in
  // tests/test_rules.cpp ("NAMO with 1e-30 gradients takes the shrunken step its formula gives").
}

// ---------------------------------------------------------------------------------------------------
// Shape mismatches
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("parameter, gradient and state of different shapes raise shape_error naming the shapes",
                   "[rules][errors][shape]", float, double) {
  using T = TestType;
  for_each_rule<T>([&](auto rule, const char* label) {
    INFO(label);
    auto st = rule.make_state(4, 5);
    Mat<T> w = gaussian(4, 5, 11).cast<T>();
    const Mat<T> g0 = gaussian(4, 5, 12).cast<T>();
    rule.step(orthopt::make_view(w), orthopt::make_view(g0), st);  // a non-zero state
    const Mat<T> w_before = w;
    const snapshot before = take(st);
    const Mat<T> g_t = Mat<T>::Ones(5, 4), g_wide = Mat<T>::Ones(4, 6), g_ok = Mat<T>::Ones(4, 5);
    Mat<T> w_wide = Mat<T>::Ones(4, 6);
    // Gradient of another shape.
    expect_throw<orthopt::shape_error>([&] { rule.step(orthopt::make_view(w), orthopt::make_view(g_t), st); },
                                       {"parameter is 4x5", "gradient is 5x4", "state is 4x5"});
    // Parameter and gradient agree, but the state was made for another shape.
    expect_throw<orthopt::shape_error>([&] { rule.step(orthopt::make_view(w_wide), orthopt::make_view(g_wide), st); },
                                       {"parameter is 4x6", "gradient is 4x6", "state is 4x5"});
    // Parameter of another shape.
    expect_throw<orthopt::shape_error>([&] { rule.step(orthopt::make_view(w_wide), orthopt::make_view(g_ok), st); },
                                       {"parameter is 4x6", "gradient is 4x5"});
    // Batches: counts that differ from the state's.
    std::vector<T> wb(3 * 20, T(1)), gb(3 * 20, T(1));
    expect_throw<orthopt::shape_error>(
        [&] {
          rule.step(orthopt::row_major_batch(wb.data(), 2, 4, 5), orthopt::row_major_batch<const T>(gb.data(), 2, 4, 5),
                    st);
        },
        {"parameter batch of 2", "gradient batch of 2", "state holds 1"});
    auto bst = rule.make_state(4, 5, 3);
    const snapshot bst_before = take(bst);
    expect_throw<orthopt::shape_error>(
        [&] {
          rule.step(orthopt::row_major_batch(wb.data(), 3, 4, 5), orthopt::row_major_batch<const T>(gb.data(), 2, 4, 5),
                    bst);
        },
        {"parameter batch of 3", "gradient batch of 2", "state holds 3"});
    expect_throw<orthopt::shape_error>(
        [&] {
          rule.step(orthopt::row_major_batch(wb.data(), 3, 5, 4), orthopt::row_major_batch<const T>(gb.data(), 3, 5, 4),
                    bst);
        },
        {"parameter is 5x4", "gradient is 5x4", "state is 4x5"});
    CHECK(take(bst) == bst_before);
    CHECK(bit_identical<T>(w, w_before));
    CHECK(take(st) == before);
    CHECK(std::all_of(wb.begin(), wb.end(), [](T x) { return x == T(1); }));
    // A state needs every extent ≥ 1.
    CHECK_THROWS_AS(rule.make_state(0, 5), orthopt::shape_error);
    CHECK_THROWS_AS(rule.make_state(4, 0), orthopt::shape_error);
    CHECK_THROWS_AS(rule.make_state(4, 5, 0), orthopt::shape_error);
  });
}

// ---------------------------------------------------------------------------------------------------
// A state made by another rule
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("a state made by another rule raises value_error", "[rules][errors][state]", float, double) {
  using T = TestType;
  Muon<T> muon;
  AdaMuon<T> adamuon;
  Namo<T> namo;
  NamoD<T> namo_d;
  AdamW<T> adamw;
  Mat<T> w = gaussian(6, 4, 12).cast<T>();
  const Mat<T> g = gaussian(6, 4, 13).cast<T>();
  const Mat<T> w_before = w;
  auto s_muon = muon.make_state(6, 4);
  auto s_adamuon = adamuon.make_state(6, 4);
  auto s_namo = namo.make_state(6, 4);
  auto s_namo_d = namo_d.make_state(6, 4);
  auto s_adamw = adamw.make_state(6, 4);
  const auto wv = [&] { return orthopt::make_view(w); };
  const auto gv = [&] { return orthopt::make_view(g); };
  expect_throw<orthopt::value_error>([&] { muon.step(wv(), gv(), s_adamuon); }, {"made by adamuon", "not by muon"});
  expect_throw<orthopt::value_error>([&] { adamuon.step(wv(), gv(), s_muon); }, {"made by muon", "not by adamuon"});
  expect_throw<orthopt::value_error>([&] { namo.step(wv(), gv(), s_namo_d); }, {"made by namo_d", "not by namo"});
  expect_throw<orthopt::value_error>([&] { namo_d.step(wv(), gv(), s_namo); }, {"made by namo", "not by namo_d"});
  expect_throw<orthopt::value_error>([&] { adamw.step(wv(), gv(), s_muon); }, {"made by muon", "not by adamw"});
  expect_throw<orthopt::value_error>([&] { muon.step(wv(), gv(), s_adamw); }, {"made by adamw", "not by muon"});
  CHECK(bit_identical<T>(w, w_before));
  for (auto* st : {&s_muon, &s_adamuon, &s_namo, &s_namo_d, &s_adamw}) CHECK(st->step() == 0);
}

// ---------------------------------------------------------------------------------------------------
// Invalid hyper-parameters
// ---------------------------------------------------------------------------------------------------
namespace {
/// Each invalid setting is rejected at construction (naming the field) and, written into options() of a
/// working rule, at the next step, with W and the state untouched; restoring the options makes the rule
/// step again.
template <class T, class Rule>
void check_invalid(
    const typename Rule::options_type& good,
    const std::vector<std::pair<std::string, std::function<void(typename Rule::options_type&)>>>& breaks) {
  for (const auto& [field, brk] : breaks) {
    INFO("preset " << good.preset << ", invalid " << field);
    auto bad = good;
    brk(bad);
    expect_throw<orthopt::value_error>([&] { Rule r(bad); }, {field});
    Rule rule(good);
    auto st = rule.make_state(5, 3);
    Mat<T> w = gaussian(5, 3, 14).cast<T>();
    const Mat<T> g = gaussian(5, 3, 15).cast<T>();
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    const Mat<T> w_before = w;
    const snapshot before = take(st);
    brk(rule.options());
    expect_throw<orthopt::value_error>([&] { rule.step(orthopt::make_view(w), orthopt::make_view(g), st); }, {field});
    CHECK(bit_identical<T>(w, w_before));
    CHECK(take(st) == before);
    rule.options() = good;
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    CHECK(st.step() == 2);
  }
}
template <class O>
using breaks_of = std::vector<std::pair<std::string, std::function<void(O&)>>>;
}  // namespace

TEMPLATE_TEST_CASE("invalid hyper-parameters raise value_error at construction and at the next step",
                   "[rules][errors][options]", float, double) {
  using T = TestType;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const breaks_of<orthopt::muon_options> muon_breaks = {
      {"lr = -", [](auto& o) { o.lr = -0.01; }},
      {"lr = nan", [nan](auto& o) { o.lr = nan; }},
      {"weight_decay = -", [](auto& o) { o.weight_decay = -0.1; }},
      {"momentum = 1.0", [](auto& o) { o.momentum = 1.0; }},
      {"momentum = 1.5", [](auto& o) { o.momentum = 1.5; }},
      {"momentum = -", [](auto& o) { o.momentum = -0.5; }},
      {"steps = 0", [](auto& o) { o.ortho.ns.steps = 0; }},
      // Enum fields holding no enumerator (found by reviewing the options; they ran as a default).
      {"momentum_type = 2 is not one of its enumerators", [](auto& o) { o.momentum_type = static_cast<orthopt::momentum_kind>(2); }},
      {"scale = 7 is not one of its enumerators", [](auto& o) { o.scale = static_cast<orthopt::shape_scale>(7); }},
      {"normalization = 9 is not an ns_normalization", [](auto& o) { o.ortho.ns.normalization = static_cast<orthopt::ns_normalization>(9); }},
  };
  check_invalid<T, Muon<T>>(orthopt::muon_presets::keller(), muon_breaks);
  check_invalid<T, Muon<T>>(orthopt::muon_presets::moonlight(), muon_breaks);
  const breaks_of<orthopt::adamuon_options> adamuon_breaks = {
      {"lr = -", [](auto& o) { o.lr = -1.0; }},
      {"beta = 1.0", [](auto& o) { o.beta = 1.0; }},
      {"beta = 2.0", [](auto& o) { o.beta = 2.0; }},
      {"eps = 0.0", [](auto& o) { o.eps = 0.0; }},
      {"eps = -", [](auto& o) { o.eps = -1e-8; }},
      {"beta2 = 1.0", [](auto& o) { o.beta2 = 1.0; }},
      {"form = 5 is not one of its enumerators", [](auto& o) { o.form = static_cast<orthopt::adamuon_form>(5); }},
      {"weight_decay = inf", [](auto& o) { o.weight_decay = std::numeric_limits<double>::infinity(); }},
  };
  check_invalid<T, AdaMuon<T>>(orthopt::adamuon_presets::paper(), adamuon_breaks);
  check_invalid<T, AdaMuon<T>>(orthopt::adamuon_presets::v1(), adamuon_breaks);
  const breaks_of<orthopt::namo_options> namo_breaks = {
      {"lr = -", [](auto& o) { o.lr = -1e-3; }},
      {"mu1 = 1.0", [](auto& o) { o.mu1 = 1.0; }},
      {"mu2 = 1.0", [](auto& o) { o.mu2 = 1.0; }},
      {"eps = 0.0", [](auto& o) { o.eps = 0.0; }},
      {"rms_scale = 0.0", [](auto& o) { o.rms_scale = 0.0; }},
      {"column_clamp = -", [](auto& o) { o.column_clamp = -0.5; }},
      {"form = 3 is not one of its enumerators", [](auto& o) { o.form = static_cast<orthopt::namo_form>(3); }},
  };
  check_invalid<T, Namo<T>>(orthopt::namo_presets::code(), namo_breaks);
  check_invalid<T, Namo<T>>(orthopt::namo_presets::paper(), namo_breaks);
  check_invalid<T, NamoD<T>>(orthopt::namo_d_presets::code(), namo_breaks);
  const breaks_of<orthopt::adamw_options> adamw_breaks = {
      {"lr = -", [](auto& o) { o.lr = -1e-3; }},       {"beta1 = 1.0", [](auto& o) { o.beta1 = 1.0; }},
      {"beta2 = 1.0", [](auto& o) { o.beta2 = 1.0; }}, {"eps = 0.0", [](auto& o) { o.eps = 0.0; }},
      {"eps = -", [](auto& o) { o.eps = -1.0; }},
      {"form = 2 is not one of its enumerators", [](auto& o) { o.form = static_cast<orthopt::adamw_form>(2); }},
  };
  check_invalid<T, AdamW<T>>(orthopt::adamw_presets::torch(), adamw_breaks);
  check_invalid<T, AdamW<T>>(orthopt::adamw_presets::moonlight(), adamw_breaks);
  // NAMO-D exists only in the code form, at construction and when options() is changed later (it was
  // once silently ignored).
  expect_throw<orthopt::value_error>([] { NamoD<T> r(orthopt::namo_presets::paper()); }, {"only the code form"});
  check_invalid<T, NamoD<T>>(orthopt::namo_d_presets::code(),
                             breaks_of<orthopt::namo_options>{{"only the code form", [](auto& o) { o.form = orthopt::namo_form::paper; }}});
}

// Values valid as doubles that a step uses in the element type's arithmetic must
// survive rounding to it; in float they do not, in double they do.
TEMPLATE_TEST_CASE("hyper-parameters that the element type cannot hold are refused, naming them",
                   "[rules][errors][options]", float, double) {
  using T = TestType;
  const bool narrow = sizeof(T) == 4;
  const auto expect = [narrow](auto make, const std::string& field) {
    INFO(field);
    if (narrow) {
      expect_throw<orthopt::value_error>(make, {field});
    } else {
      CHECK_NOTHROW(make());
    }
  };
  expect([] { AdamW<T> r(orthopt::adamw_options{"t", orthopt::adamw_form::torch, 1e-3, 0.1, 0.9, 0.95, 1e-50}); },
         "eps = 1e-50 rounds to 0 in the element type (float)");
  expect([] { AdamW<T> r(orthopt::adamw_options{"t", orthopt::adamw_form::torch, 1e-3, 0.1, 0.9, 1 - 1e-8, 1e-8}); },
         "beta2 = 0.99999999 rounds to 1 in the element type (float)");
  expect([] {
    auto o = orthopt::adamuon_presets::code();
    o.eps = 1e-50;
    AdaMuon<T> r(o);
  }, "eps = 1e-50 rounds to 0");
  expect([] {
    auto o = orthopt::muon_presets::keller();
    o.momentum = 1 - 1e-9;
    Muon<T> r(o);
  }, "momentum = 0.999999999 rounds to 1");
  expect([] {
    auto o = orthopt::namo_presets::code();
    o.mu1 = 1 - 1e-9;
    Namo<T> r(o);
  }, "mu1 = 0.999999999 rounds to 1");
  expect([] {
    auto o = orthopt::muon_presets::keller();
    o.ortho.ns.table = {{1e39, -1.0, 0.0}};
    Muon<T> r(o);
  }, "Newton–Schulz table row 1 (1e+39, -1.0, 0.0) overflows");
  // NAMO's μ2 and ε are used in double: values float cannot hold are fine there.
  auto namo = orthopt::namo_presets::code();
  namo.eps = 1e-50;
  namo.mu2 = 1 - 1e-9;
  CHECK_NOTHROW(Namo<T>(namo));
  // A later change through options() is refused at the next step, with nothing written.
  if (narrow) {
    check_invalid<T, AdamW<T>>(orthopt::adamw_presets::torch(),
                               breaks_of<orthopt::adamw_options>{{"eps = 1e-50 rounds to 0", [](auto& o) { o.eps = 1e-50; }}});
  }
  // The aol normalization needs ε > 0 for its row scale 1/√max(row sum, ε).
  auto aol = orthopt::ns_presets::aol();
  aol.eps = 0.0;
  expect_throw<orthopt::value_error>([&] { aol.validate(); }, {"the aol normalization needs eps > 0"});
}

// A state at the largest step count (2^63 − 1, from set_step or a checkpoint) must
// not overflow `step + 1` (undefined behaviour) and must not write W before throwing.
TEMPLATE_TEST_CASE("a state at the largest step count is refused before anything is written", "[rules][errors][state]",
                   float, double) {
  using T = TestType;
  constexpr std::int64_t largest = std::numeric_limits<std::int64_t>::max();
  for_each_rule<T>([&](auto rule, const char* what) {
    INFO(what);
    auto st = rule.make_state(6, 4);
    Mat<T> w = gaussian(6, 4, 16).cast<T>();
    const Mat<T> g = gaussian(6, 4, 17).cast<T>();
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    st.set_step(largest);
    const Mat<T> w_before = w;
    const snapshot before = take(st);
    expect_throw<orthopt::value_error>([&] { rule.step(orthopt::make_view(w), orthopt::make_view(g), st); },
                                       {"step count", "9223372036854775807", "nothing was changed"});
    CHECK(bit_identical<T>(w, w_before));
    CHECK(take(st) == before);
    st.set_step(41);  // any smaller count steps again
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    CHECK(st.step() == 42);
  });
}

// Sizes whose element count (or byte count) does not fit index_t must be refused
// before any allocation, not wrap around into a small buffer claiming a huge one.
TEMPLATE_TEST_CASE("sizes that overflow are refused with a shape_error", "[rules][errors][size]", float, double) {
  using T = TestType;
  const index_t big = index_t{1} << 32;
  Muon<T> rule;
  expect_throw<orthopt::shape_error>([&] { (void)rule.make_state(big, big); }, {"larger than any buffer can be"});
  expect_throw<orthopt::shape_error>([&] { (void)rule.make_state(1 << 20, 1 << 20, big); }, {"larger than any buffer can be"});
  expect_throw<orthopt::shape_error>([&] { orthopt::newton_schulz<T, backend_under_test> ns(big, big, orthopt::ns_presets::keller()); },
                                     {"larger than any buffer can be"});
  T x = 0;
  expect_throw<orthopt::shape_error>([&] { (void)orthopt::tensor_as_matrix(&x, {big, big}); },
                                     {"the product of the dimensions overflows at dimension 1"});
  expect_throw<orthopt::shape_error>([&] { (void)orthopt::tensor_as_batch(&x, {big, big, 2}); },
                                     {"the product of the dimensions overflows"});
}

// ---------------------------------------------------------------------------------------------------
// Finite values that overflow. A gradient entry of 3e38 (finite in float) made
// Muon's classical momentum Inf and W all NaN, kept AdaMuon's paper momentum at ±Inf and froze AdamW's
// second moment, silently. Every step now refuses gradient and state entries beyond the limits its
// arithmetic can take (step_limits), before anything is written.
// ---------------------------------------------------------------------------------------------------
namespace {
/// Every entry of a view is finite.
template <class V>
bool all_finite(const V& v) {
  for (index_t i = 0; i < v.rows; ++i)
    for (index_t j = 0; j < v.cols; ++j)
      if (!std::isfinite(static_cast<double>(v(i, j)))) return false;
  return true;
}
/// Every persistent tensor of a state is finite.
template <class State>
bool state_is_finite(const State& st) {
  for (index_t k = 0; k < st.count(); ++k) {
    if (!all_finite(st.momentum(k)) || !all_finite(st.second_moment(k)) || !all_finite(st.column_moment(k))) return false;
  }
  return true;
}
/// Steps twice on ordinary gradients, so that the state is not zero.
template <class T, class Rule, class State>
void warm_up(Rule& rule, Mat<T>& w, State& st, shape s) {
  for (std::uint64_t k = 0; k < 2; ++k) {
    const Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 40 + k)).cast<T>();
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
  }
}
}  // namespace

TEMPLATE_TEST_CASE("finite gradients beyond a rule's overflow limit are refused with nothing changed",
                   "[rules][errors][overflow]", float, double) {
  using T = TestType;
  const shape s{7, 5};
  for_each_rule<T>([&](auto rule, const char* label) {
    const orthopt::step_limits lim = rule.limits(s.rows, s.cols);
    REQUIRE(std::isfinite(lim.gradient));
    REQUIRE(std::isfinite(lim.momentum));
    auto st = rule.make_state(s.rows, s.cols);
    Mat<T> w = gaussian(s.rows, s.cols, seed_of(s, 2)).cast<T>();
    warm_up<T>(rule, w, st, s);
    // Just past the limit, the 3e38 (90% of the largest float; 1.6e308 in double), and the largest
    // finite value itself, with either sign.
    const double largest = static_cast<double>(std::numeric_limits<T>::max());
    for (const double value : {1.5 * lim.gradient, -1.5 * lim.gradient, 0.9 * largest, -largest}) {
      INFO(label << ": gradient(4, 3) = " << value << ", limit " << lim.gradient);
      Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 9)).cast<T>();
      g(4, 3) = static_cast<T>(value);
      REQUIRE(std::isfinite(g(4, 3)));
      const Mat<T> w_before = w;
      const snapshot state_before = take(st);
      expect_throw<orthopt::value_error>([&] { rule.step(orthopt::make_view(w), orthopt::make_view(g), st); },
                                         {"gradient(4, 3)", "beyond", "without overflowing", "unchanged"});
      CHECK(bit_identical<T>(w, w_before));
      CHECK(take(st) == state_before);
    }
    // At the limit itself the step goes through, and everything stays finite.
    Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 10)).cast<T>();
    // The largest value of T at or below the limit (rounding the limit to T may round it up).
    T at_limit = static_cast<T>(lim.gradient);
    if (static_cast<double>(at_limit) > lim.gradient) at_limit = std::nextafter(at_limit, T(0));
    g(4, 3) = at_limit;
    INFO(label << ": gradient(4, 3) just below the limit " << lim.gradient);
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    CHECK(w.allFinite());
    CHECK(state_is_finite(st));
  });
}

TEMPLATE_TEST_CASE("a state that is not finite or beyond its limit is refused with nothing changed",
                   "[rules][errors][overflow]", float, double) {
  using T = TestType;
  const shape s{6, 4};
  for_each_rule<T>([&](auto rule, const char* label) {
    const orthopt::step_limits lim = rule.limits(s.rows, s.cols);
    auto st = rule.make_state(s.rows, s.cols, 2);  // a batch of two: the problem is in item 1
    std::vector<T> wb(static_cast<std::size_t>(2 * s.rows * s.cols)), gb(wb.size());
    for (std::size_t i = 0; i < wb.size(); ++i) {
      wb[i] = static_cast<T>(std::sin(0.3 * double(i)));
      gb[i] = static_cast<T>(std::cos(0.7 * double(i)));
    }
    const auto W = orthopt::row_major_batch(wb.data(), 2, s.rows, s.cols);
    const auto G = orthopt::row_major_batch<const T>(gb.data(), 2, s.rows, s.cols);
    rule.step(W, G, st);
    struct corruption {
      std::string tensor;
      double value;
      const char* says;
    };
    std::vector<corruption> cases = {{"momentum", std::numeric_limits<double>::quiet_NaN(), "is nan"},
                                     {"momentum", -std::numeric_limits<double>::infinity(), "is -inf"},
                                     {"momentum", -1.5 * lim.momentum, "beyond"}};
    if (!st.second_moment(1).empty()) {
      cases.push_back({"second moment", std::numeric_limits<double>::infinity(), "is inf"});
      cases.push_back({"second moment", 1.5 * lim.second, "beyond"});
    }
    if (!st.column_moment(1).empty()) {
      cases.push_back({"column moment", std::numeric_limits<double>::quiet_NaN(), "is nan"});
      cases.push_back({"column moment", 1.5 * lim.column, "beyond"});
    }
    for (const corruption& c : cases) {
      INFO(label << ": " << c.tensor << " = " << c.value);
      const bool column = c.tensor == "column moment";
      const index_t r = column ? 0 : 3, col = column ? st.column_moment(1).cols - 1 : 1;  // NAMO's v is 1×1
      auto slot = [&]() -> double {
        if (c.tensor == "momentum") return static_cast<double>(st.momentum(1)(r, col));
        if (c.tensor == "second moment") return static_cast<double>(st.second_moment(1)(r, col));
        return st.column_moment(1)(r, col);
      };
      auto set = [&](double v) {
        if (c.tensor == "momentum") st.momentum(1)(r, col) = static_cast<T>(v);
        else if (c.tensor == "second moment") st.second_moment(1)(r, col) = static_cast<T>(v);
        else st.column_moment(1)(r, col) = v;
      };
      const double kept = slot();
      set(c.value);
      const std::vector<T> w_before = wb;
      const snapshot state_before = take(st);
      const std::string where = "the state's " + c.tensor + "(" + std::to_string(r) + ", " + std::to_string(col) + ")";
      expect_throw<orthopt::value_error>([&] { rule.step(W, G, st); }, {where, c.says, "batch item 1", "unchanged"});
      CHECK(wb == w_before);
      CHECK(take(st) == state_before);
      set(kept);  // repaired, the state steps again
      rule.step(W, G, st);
      CHECK(state_is_finite(st));
    }
  });
}

// The limits are right: from a fresh state, any sequence of gradients within them — of any magnitude
// from 1e-30 to the limit, jumping between them — gives finite parameters and states at every step. A
// classical momentum (Muon moonlight, AdaMuon paper) may grow past its own limit under gradients at the
// limit: that step is then refused (nothing changed), never computed into Inf or NaN.
TEMPLATE_TEST_CASE("gradients within the limits never give a non-finite step", "[rules][overflow][property]", float,
                   double) {
  using T = TestType;
  for (const shape s : {shape{1, 1}, shape{5, 3}, shape{8, 12}, shape{16, 16}}) {
    for (std::uint64_t seed = 1; seed <= 5; ++seed) {
      for_each_rule<T>([&](auto rule, const char* label) {
        const orthopt::step_limits lim = rule.limits(s.rows, s.cols);
        auto st = rule.make_state(s.rows, s.cols);
        Mat<T> w = gaussian(s.rows, s.cols, seed_of(s, 100 + seed)).cast<T>();
        std::mt19937_64 rng(seed * 7919 + static_cast<std::uint64_t>(s.rows * 31 + s.cols));
        std::uniform_real_distribution<double> unit(-1.0, 1.0);
        const double scales[] = {1e-30, 1e-3, 1.0, 1e6, lim.gradient};
        for (int t = 0; t < 10; ++t) {
          const double scale = scales[rng() % 5];
          Mat<T> g(s.rows, s.cols);
          for (index_t i = 0; i < s.rows; ++i)
            for (index_t j = 0; j < s.cols; ++j) {
              // A third of the entries at ±scale exactly (capped just below the limit), the rest inside.
              const double u = (rng() % 3 == 0) ? (unit(rng) < 0 ? -1.0 : 1.0) : unit(rng);
              g(i, j) = static_cast<T>(std::min(u * scale, std::nextafter(lim.gradient, 0.0)));
              if (std::abs(static_cast<double>(g(i, j))) > lim.gradient) g(i, j) = static_cast<T>(0);
            }
          INFO(label << " shape " << to_string(s) << " seed " << seed << " step " << t << " scale " << scale);
          const Mat<T> w_before = w;
          const snapshot before = take(st);
          try {
            rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
          } catch (const orthopt::value_error& e) {
            INFO(e.what());
            const std::string label_s = label;
            CHECK((label_s == "muon moonlight" || label_s == "muon exact polar" || label_s == "adamuon paper"));
            CHECK_THAT(std::string(e.what()), Contains("the state's momentum"));
            CHECK(bit_identical<T>(w, w_before));
            CHECK(take(st) == before);
            break;
          }
          REQUIRE(w.allFinite());
          REQUIRE(state_is_finite(st));
          // A rule that says its update kept the state within its limits (AdamW: the next check then
          // reads only the gradient) is right, entry by entry, at every scale up to the limits.
          if (st.values_known_within(lim)) {
            const auto& cs = std::as_const(st);
            for (index_t i = 0; i < s.rows; ++i)
              for (index_t j = 0; j < s.cols; ++j) {
                REQUIRE(std::abs(static_cast<double>(cs.momentum()(i, j))) <= lim.momentum);
                if (!cs.second_moment().empty()) REQUIRE(std::abs(static_cast<double>(cs.second_moment()(i, j))) <= lim.second);
              }
          }
          CHECK(st.values_known_within(lim) == std::string_view(label).starts_with("adamw"));
        }
      });
    }
  }
}

// The value guard reads a state again whenever it cannot know it unchanged: after a mutable view of it
// was taken (a write, a checkpoint load), after a step without the check, and when the limits tighten.
TEMPLATE_TEST_CASE("the value guard skips only a state a checked step left within limits and nobody touched since",
                   "[rules][errors][guard]", float, double) {
  using T = TestType;
  const shape s{6, 4};
  orthopt::adamw_options o = orthopt::adamw_presets::torch();
  AdamW<T> rule(o);
  auto st = rule.make_state(s.rows, s.cols);
  Mat<T> w = gaussian(s.rows, s.cols, 5).template cast<T>(), g = gaussian(s.rows, s.cols, 6).template cast<T>();
  const auto step = [&] { rule.step(orthopt::make_view(w), orthopt::make_view(g).as_const(), st); };
  CHECK_FALSE(st.values_known_within(rule.limits(s.rows, s.cols)));  // a fresh state: nothing noted yet
  step();
  CHECK(st.values_known_within(rule.limits(s.rows, s.cols)));
  // A mutable view forgets it, and a value written through it is found by the next step.
  st.second_moment()(2, 3) = std::numeric_limits<T>::quiet_NaN();
  CHECK_FALSE(st.values_known_within(rule.limits(s.rows, s.cols)));
  const Mat<T> w_before = w;
  expect_throw<orthopt::value_error>(step, {"the state's second moment(2, 3) is nan", "unchanged"});
  CHECK(bit_identical<T>(w, w_before));
  st.second_moment()(2, 3) = T(0);
  step();
  // A tighter limit (a larger beta1 shrinks the momentum's) is not covered by what was noted.
  rule.options().beta1 = 0.99;
  CHECK_FALSE(st.values_known_within(rule.limits(s.rows, s.cols)));
  step();
  CHECK(st.values_known_within(rule.limits(s.rows, s.cols)));
  // A step without the check notes nothing; neither does a beta too close to 1 for the margins.
  rule.options().check_finite = false;
  step();
  CHECK_FALSE(st.values_known_within(rule.limits(s.rows, s.cols)));
  rule.options().check_finite = true;
  rule.options().beta2 = 0.99999;
  step();
  CHECK_FALSE(st.values_known_within(rule.limits(s.rows, s.cols)));
  // The other rules never note it (their states are read every step; the NS call dominates anyway).
  Muon<T> muon(orthopt::muon_presets::keller());
  auto ms = muon.make_state(s.rows, s.cols);
  muon.step(orthopt::make_view(w), orthopt::make_view(g).as_const(), ms);
  CHECK_FALSE(ms.values_known_within(muon.limits(s.rows, s.cols)));
}
