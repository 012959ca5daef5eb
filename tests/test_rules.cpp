// The update rules (Muon, AdaMuon, NAMO, NAMO-D, AdamW) against plain float64 transcriptions of their
// formulas as their papers and the authors' code give them (docs/references.md), written here formula by
// formula and not from the library; batches; hyper-parameters changed between steps.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <utility>

#include "test_util.hpp"

using namespace testing;

namespace {

// ---------------------------------------------------------------------------------------------------
// The float64 transcriptions
// ---------------------------------------------------------------------------------------------------

/// polar(U) by the rule's operator, in float64.
///
/// Newton–Schulz: reference_ns (test_util.hpp) is the sources' iteration with their absolute ε
/// (X/(‖X‖+ε) and so on). orthopt applies ε relative to the norm (X/(‖X‖·(1+s+ε)), see
/// orthopt/newton_schulz.hpp); the two agree exactly at ‖X‖ = 1. This transcription mirrors orthopt's
/// convention by handing reference_ns the unit-norm U/‖U‖, so the double comparison stays tight: the
/// absolute-ε form would differ by up to ε = 1e-7 relative in the normalization, which NS amplifies by
/// its schedule gain (~485 for keller). A zero U maps to zero (as documented for both operators).
///
/// Exact polar: U·Vᵀ from the SVD (svd_polar). `gain` receives how much the operator amplifies a
/// relative perturbation of its input: the schedule gain for NS, 2κ(U) for the polar factor (the polar
/// factor's perturbation bound ‖δQ‖ ≤ 2‖δX‖/σ_min with ‖δX‖ ~ ε‖X‖).
MatD orthogonalize(const MatD& u, const orthopt::orthogonalizer& o, double& gain) {
  gain = 1.0;
  const double n = u.norm();
  if (n == 0.0) return MatD::Zero(u.rows(), u.cols());
  if (o.exact) {
    const Eigen::VectorXd sv = singular_values(u);
    gain = 2.0 * sv.maxCoeff() / sv.minCoeff();
    return svd_polar(u);
  }
  gain = schedule_gain(o.ns);
  // With absolute_eps the library uses the source's formula itself: hand the transcription U as it is
  // (AOL's normalization has no ε, and reference_ns applies only its row scaling: U/‖U‖ for both).
  const bool as_is = o.ns.absolute_eps && o.ns.normalization != orthopt::ns_normalization::aol;
  return as_is ? reference_ns(u, o.ns) : reference_ns(u / n, o.ns);
}

/// Each transcription keeps `sensitivity`: the largest factor by which its step amplified a relative
/// rounding error of the library's inputs into an error relative to the update (see the tolerance below).

double max_side(const MatD& w) { return static_cast<double>(std::max(w.rows(), w.cols())); }

/// Muon (Jordan et al. 2024; Moonlight's scale).
struct muon_ref {
  MatD M;
  double sensitivity = 1.0;
  muon_ref(index_t r, index_t c) : M(MatD::Zero(r, c)) {}
  void step(MatD& W, const MatD& G, std::int64_t, const orthopt::muon_options& o) {
    const double mu = o.momentum;
    const bool ema = o.momentum_type == orthopt::momentum_kind::ema;
    // M ← μM + (1−μ)G (ema)  or  M ← μM + G (classical)
    M = ema ? MatD(mu * M + (1.0 - mu) * G) : MatD(mu * M + G);
    // U ← nesterov ? mix(G, M) : M; mix = (1−μ)G + μM (ema) or G + μM (classical)
    MatD U = M;
    if (o.nesterov) U = ema ? MatD((1.0 - mu) * G + mu * M) : MatD(G + mu * M);
    double gain = 1.0;
    const MatD O = orthogonalize(U, o.ortho, gain);
    sensitivity = std::max(sensitivity, gain);
    const double A = static_cast<double>(W.rows()), B = static_cast<double>(W.cols());
    double scale = 1.0;
    switch (o.scale) {
      case orthopt::shape_scale::original:
        scale = std::sqrt(std::max(1.0, A / B));
        break;
      case orthopt::shape_scale::match_rms_adamw:
        scale = 0.2 * std::sqrt(std::max(A, B));
        break;
      case orthopt::shape_scale::spectral:
        scale = std::sqrt(A / B);
        break;
      case orthopt::shape_scale::none:
        scale = 1.0;
        break;
    }
    // W ← W(1 − ηλ);  W ← W − η·scale·O
    W = W * (1.0 - o.lr * o.weight_decay);
    W = W - o.lr * scale * O;
  }
};

/// AdaMuon: the paper's Algorithm 1, the authors' code, and arXiv v1 (sign = false, β2 with bias
/// correction of V).
struct adamuon_ref {
  MatD M, V;
  double sensitivity = 1.0;
  adamuon_ref(index_t r, index_t c)
      : M(MatD::Zero(r, c)), V(MatD::Zero(r, c)), dM(MatD::Zero(r, c)), extra(MatD::Zero(r, c)) {}
  void step(MatD& W, const MatD& G, std::int64_t t, const orthopt::adamuon_options& o) {
    const double b = o.beta;
    const bool paper = o.form == orthopt::adamuon_form::paper;
    MatD U;
    const MatD M_prev = M;
    if (paper) {
      M = b * M + G;  // M ← βM + G
      U = M;
    } else {
      M = b * M + (1.0 - b) * G;  // ema momentum
      U = (1.0 - b) * G + b * M;  // Nesterov mix
    }
    // (For the tolerance:) a bound on the library's rounding error in M and U, each operation rounding
    // its coefficient, product and sum to T. An entry of U within it of 0 may have the other sign in
    // the library, and sign() turns that rounding error into a difference of 2.
    const double w_g = paper ? 1.0 : 1.0 - b;
    dM = b * dM + 3.0 * unit * MatD(b * M_prev.cwiseAbs() + w_g * G.cwiseAbs() + M.cwiseAbs());
    const MatD dU =
        paper ? dM : MatD(b * dM + 3.0 * unit * MatD((1.0 - b) * G.cwiseAbs() + b * M.cwiseAbs() + U.cwiseAbs()));
    double flippable = 0.0, nonzero = 0.0;
    for (index_t i = 0; i < U.size(); ++i) {
      if (U(i) != 0.0) nonzero += 1.0;
      if (o.sign && U(i) != 0.0 && std::abs(U(i)) <= dU(i)) flippable += 1.0;
    }
    // The relative change of sign(U) in Frobenius norm if all of them flip; its effect on V decays by
    // β per step after that.
    const double b2_now = o.beta2 > 0.0 ? o.beta2 : b;
    flip = std::max(flippable > 0.0 ? 2.0 * std::sqrt(flippable / nonzero) : 0.0, b2_now * flip);
    if (o.sign) U = U.unaryExpr([](double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); });  // sign(0) = 0
    double gain = 1.0;
    const MatD O = orthogonalize(U, o.ortho, gain);
    const double b2 = o.beta2 > 0.0 ? o.beta2 : b;
    V = b2 * V + (1.0 - b2) * O.cwiseProduct(O);  // V ← βV + (1−β) O⊙O
    MatD Vhat = V;
    if (o.beta2 > 0.0) Vhat = V / (1.0 - std::pow(o.beta2, static_cast<double>(t)));  // v1: bias correction
    const MatD Ohat = O.array() / (Vhat.array().sqrt() + o.eps);                      // Ô ← O ⊘ (√V + ε)
    sensitivity = std::max(sensitivity, gain);
    const double A = static_cast<double>(W.rows()), B = static_cast<double>(W.cols());
    const double nrm = Ohat.norm();
    // γ ← 0.2·√(AB)/‖Ô‖ (paper) or 0.2·√(AB)/(‖Ô‖ + ε) (code); a zero Ô gives γ = 0 (documented in
    // detail::adamuon_scale: step 0 rather than 0/0).
    const double denom = paper ? nrm : nrm + o.eps;
    const double gamma = denom > 0.0 ? 0.2 * std::sqrt(A * B) / denom : 0.0;
    if (paper) {
      W = W - o.lr * (gamma * Ohat + o.weight_decay * W);  // W ← W − η(γÔ + λW)
    } else {
      W = W * (1.0 - o.lr * o.weight_decay) - o.lr * gamma * Ohat;  // W ← W(1 − ηλ) − ηγÔ
    }
    // Per-entry error bound of the element-wise division (for the tolerance, not part of the rule).
    // The library's O carries an absolute error up to δ = 10·(ε_T + flip)·√n·S·max|O|: the NS bound, plus
    // the relative change of sign(U) should entries within rounding of 0 flip (none in double; in float
    // two U entries of these runs are that close, and each makes its run's float bound loose). Dividing
    // by √V + ε amplifies δ entry by entry: |∂Ô_ij/∂O_ij| ≤ 2/(√V_ij + ε) (V holds (1−β)O_ij², so each of
    // the derivative's two terms is at most 1/(√V_ij + ε)); the error V inherits from earlier steps adds
    // as much again, hence 4δ/(√V_ij + ε). An entry whose whole history is near 0 is where this bites: at
    // step 1 Ô_ij = O_ij/(√(1−β)|O_ij| + ε), of slope 1/ε at O_ij = 0 (measured: 1.5e-13 in double on
    // 75×55, 1000× the usual rounding). But |Ô_ij| ≤ 1/√((1−β)·unbias) because V ≥ (1−β)O², so no entry
    // can be off by more than twice that. γ's relative error is at most ‖e‖_F/‖Ô‖_F. The bound is
    // accumulated over the steps with the decay.
    if (unit > 0.0 && nrm > 0.0) {
      const double unbias = o.beta2 > 0.0 ? 1.0 / (1.0 - std::pow(o.beta2, static_cast<double>(t))) : 1.0;
      const double delta = 10.0 * (unit + flip) * std::sqrt(max_side(W)) * gain * O.cwiseAbs().maxCoeff();
      const double cap = 2.0 / std::sqrt((1.0 - b2) * unbias);
      const MatD e = (4.0 * delta / (Vhat.array().sqrt() + o.eps)).min(cap).matrix();
      const double gamma_rel = e.norm() / nrm;
      extra = (1.0 - o.lr * o.weight_decay) * extra + o.lr * gamma * (e + gamma_rel * Ohat.cwiseAbs());
    }
  }
  double unit = 0.0;  ///< ε_T of the library's element type (set by the driver)
  MatD dM;            ///< bound on the library's rounding error in M
  double flip = 0.0;  ///< relative change of sign(U) that rounding may cause (see step)
  MatD extra;         ///< per-entry error bound beyond the driver's generic tolerance
};

/// NAMO (paper and code forms).
struct namo_ref {
  MatD M;
  double v = 0.0;
  double sensitivity = 1.0;
  namo_ref(index_t r, index_t c) : M(MatD::Zero(r, c)) {}
  void step(MatD& W, const MatD& G, std::int64_t t, const orthopt::namo_options& o) {
    const bool code = o.form == orthopt::namo_form::code;
    const double mu1 = o.mu1, mu2 = o.mu2, td = static_cast<double>(t);
    const double g = G.norm();      // g = ‖G‖_F
    M = mu1 * M + (1.0 - mu1) * G;  // M ← μ1M + (1−μ1)G
    MatD U = M;                     // the paper form has no Nesterov
    if (code && o.nesterov) U = (1.0 - mu1) * G + mu1 * M;
    const double u = U.norm();          // u = ‖U‖_F (= ‖M‖_F in the paper form)
    v = mu2 * v + (1.0 - mu2) * g * g;  // v ← μ2v + (1−μ2)g²
    double gain = 1.0;
    const MatD O = orthogonalize(U, o.ortho, gain);
    sensitivity = std::max(sensitivity, gain);
    if (code) {
      const double alpha =
          o.lr * std::sqrt(1.0 - std::pow(mu2, td)) / ((1.0 - std::pow(mu1, td)) + 1e-12) * u / (std::sqrt(v) + o.eps);
      W = W * (1.0 - o.weight_decay * std::min(alpha, 1.0));
      W = W - std::min(alpha * o.rms_scale * std::sqrt(max_side(W)), 1.0) * O;
    } else {
      const double alpha = std::sqrt(1.0 - std::pow(mu2, td)) / (1.0 - std::pow(mu1, td)) * u / (std::sqrt(v) + o.eps);
      W = W - o.lr * alpha * (O + o.weight_decay * W);  // W ← W − ηα(O + λW)
    }
  }
};

/// NAMO-D (the authors' code form).
struct namo_d_ref {
  MatD M;
  Eigen::VectorXd Vc;
  double sensitivity = 1.0;
  namo_d_ref(index_t r, index_t c) : M(MatD::Zero(r, c)), Vc(Eigen::VectorXd::Zero(c)) {}
  void step(MatD& W, const MatD& G, std::int64_t t, const orthopt::namo_options& o) {
    const double mu1 = o.mu1, mu2 = o.mu2, td = static_cast<double>(t);
    const index_t B = W.cols();
    for (index_t j = 0; j < B; ++j) Vc(j) = mu2 * Vc(j) + (1.0 - mu2) * G.col(j).squaredNorm();
    M = mu1 * M + (1.0 - mu1) * G;
    MatD U = M;
    if (o.nesterov) U = (1.0 - mu1) * G + mu1 * M;
    double gain = 1.0;
    const MatD O = orthogonalize(U, o.ortho, gain);
    sensitivity = std::max(sensitivity, gain);
    const double base = o.lr * std::sqrt(1.0 - std::pow(mu2, td)) / ((1.0 - std::pow(mu1, td)) + 1e-12);
    Eigen::VectorXd d(B);
    for (index_t j = 0; j < B; ++j) d(j) = U.col(j).norm() / (std::sqrt(Vc(j)) + o.eps);
    const double c = o.column_clamp;
    if (c > 0.0 && c <= 1.0) {
      double sum = 0.0;
      int finite = 0;
      for (index_t j = 0; j < B; ++j)
        if (std::isfinite(d(j))) sum += d(j), ++finite;
      const double mean = finite > 0 ? sum / finite : 0.0;
      if (std::isfinite(mean) && mean > 0.0)
        for (index_t j = 0; j < B; ++j) d(j) = std::clamp(d(j), c * mean, mean / c);
    }
    const double rms = o.rms_scale * std::sqrt(max_side(W));
    for (index_t j = 0; j < B; ++j) {
      W.col(j) *= std::max(1.0 - o.weight_decay * std::min(d(j) * base, 1.0), 0.0);
      W.col(j) -= std::min(d(j) * base * rms, 1.0) * O.col(j);
    }
  }
};

/// AdamW (torch and Moonlight forms).
struct adamw_ref {
  MatD m, v;
  double sensitivity = 1.0;
  adamw_ref(index_t r, index_t c) : m(MatD::Zero(r, c)), v(MatD::Zero(r, c)) {}
  void step(MatD& W, const MatD& G, std::int64_t t, const orthopt::adamw_options& o) {
    const double td = static_cast<double>(t);
    m = o.beta1 * m + (1.0 - o.beta1) * G;
    v = o.beta2 * v + (1.0 - o.beta2) * G.cwiseProduct(G);
    W = W * (1.0 - o.lr * o.weight_decay);
    const double c1 = 1.0 - std::pow(o.beta1, td), c2 = 1.0 - std::pow(o.beta2, td);
    if (o.form == orthopt::adamw_form::torch) {
      W = W - o.lr * MatD((m / c1).array() / ((v / c2).array().sqrt() + o.eps));
    } else {
      W = W - o.lr * std::sqrt(c2) / c1 * MatD(m.array() / (v.array().sqrt() + o.eps));
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// The driver: one rule, one shape, K steps against the transcription
// ---------------------------------------------------------------------------------------------------
constexpr int steps_per_run = 12;
constexpr int zero_gradient_step = 7;  // one all-zero gradient in the middle (momentum is not zero then)

/// Step k's gradient: Gaussian times a random scale in [e⁻², e²], rounded to T (the transcription sees
/// exactly the values the library sees); step 7 is all zero.
template <class T>
MatD gradient(shape s, int k, std::uint64_t salt) {
  if (k == zero_gradient_step) return MatD::Zero(s.rows, s.cols);
  std::mt19937_64 rng(seed_of(s, salt * 131 + static_cast<std::uint64_t>(k)));
  const double scale = std::exp(std::uniform_real_distribution<double>(-2.0, 2.0)(rng));
  return (gaussian(s.rows, s.cols, seed_of(s, salt * 977 + static_cast<std::uint64_t>(k))) * scale)
      .cast<T>()
      .template cast<double>();
}

/// A learning-rate and weight-decay schedule: both change at every step (written into options()).
double lr_multiplier(int k) { return 0.4 + 0.6 * std::abs(std::cos(0.7 * k)); }
double wd_multiplier(int k) { return 0.5 + 0.5 * std::abs(std::sin(0.3 * k)); }

struct run_result {
  double worst_ratio = 0.0;  // max over steps of error / tolerance
  int worst_step = 0;
  double worst_error = 0.0;
  bool finite = true;
};

/// Steps the library rule (element type T, W column-major, G row-major) and the float64 transcription
/// side by side over `steps_per_run` steps and compares W after every step.
///
/// Tolerance at step k, derived from the scalar type:
///   10·ε_T·√n·S·D_k  +  4·ε_T·k·max|W|
/// where n = max(rows, cols), S the polar operator's error amplification (schedule_gain of the NS
/// schedule, the same bound tests/test_newton_schulz.cpp uses; 2κ for the exact polar; 1 for AdamW),
/// and D_k = Σ_{i≤k} max|W_i − W_{i−1}| the total size of the updates so far in the transcription. The
/// first term: every quantity the library rounds to T on the way to an update (momentum, the NS input,
/// the second moments, the norms' inputs) carries O(ε_T) relative error, which the polar operator
/// amplifies by at most S and inner products of length n grow by √n; it is relative to the update, not
/// to W. The second term: W itself is rounded to T once per step. For double this is ~1e-11 of the
/// update (the transcription is exact math in float64); for float it is ~6e-3 of the update for
/// Newton–Schulz rules because keller's worst-case gain is ~485 (measured errors are far below).
/// AdaMuon adds, entry by entry, the bound its transcription accumulates in `extra` for the amplification
/// of its element-wise division by √V + ε (see adamuon_ref).
template <class T, class Rule, class Ref>
run_result run_against_reference(Rule& rule, Ref ref, shape s, std::uint64_t salt) {
  using Options = typename Rule::options_type;
  const Options base = rule.options();
  auto state = rule.make_state(s.rows, s.cols);
  MatD w_ref = (0.5 * gaussian(s.rows, s.cols, seed_of(s, salt + 7))).template cast<T>().template cast<double>();
  Mat<T> w = w_ref.template cast<T>();
  MatRM<T> g(s.rows, s.cols);
  const double n = static_cast<double>(std::max(s.rows, s.cols));
  double total_update = 0.0;
  run_result r;
  constexpr bool per_entry = requires { ref.extra; };
  if constexpr (per_entry) ref.unit = eps<T>();
  for (int k = 1; k <= steps_per_run; ++k) {
    rule.options().lr = base.lr * lr_multiplier(k);
    rule.options().weight_decay = base.weight_decay * wd_multiplier(k);
    const MatD gd = gradient<T>(s, k, salt);
    g = gd.template cast<T>();
    rule.step(orthopt::make_view(w), orthopt::make_view(std::as_const(g)), state);
    const MatD before = w_ref;
    ref.step(w_ref, gd, k, std::as_const(rule).options());
    total_update += max_abs_diff(w_ref, before);
    const MatD got = w.template cast<double>();
    if (!got.allFinite()) r.finite = false;
    const double tol = 10.0 * eps<T>() * std::sqrt(n) * ref.sensitivity * total_update +
                       4.0 * eps<T>() * k * std::max(1.0, w_ref.cwiseAbs().maxCoeff());
    const double err = max_abs_diff(got, w_ref);
    double ratio = err / tol;
    if constexpr (per_entry) ratio = ((got - w_ref).array().abs() / (tol + ref.extra.array())).maxCoeff();
    if (!(ratio <= r.worst_ratio)) {  // also catches NaN
      r.worst_ratio = ratio;
      r.worst_step = k;
      r.worst_error = err;
    }
  }
  CHECK(state.step() == steps_per_run);
  rule.options() = base;
  return r;
}

std::vector<shape> reference_shapes() { return property_shapes(3, 424242); }

template <class T, class Rule, class Ref>
void check_rule(const std::string& label, typename Rule::options_type opts, std::uint64_t salt) {
  for (const shape s : reference_shapes()) {
    Rule rule(opts);
    const run_result r = run_against_reference<T>(rule, Ref(s.rows, s.cols), s, salt);
    INFO(label << " shape " << to_string(s) << ": worst error " << r.worst_error << " at step " << r.worst_step << " = "
               << r.worst_ratio << " of the tolerance");
    if (std::getenv("ORTHOPT_TEST_VERBOSE") != nullptr) {
      std::cout << "[measured] " << (sizeof(T) == 4 ? "float " : "double ") << label << " " << to_string(s) << " error "
                << r.worst_error << " = " << r.worst_ratio << " of tol\n";
    }
    CHECK(r.finite);
    CHECK(r.worst_ratio <= 1.0);
  }
}

struct named_muon {
  std::string label;
  orthopt::muon_options o;
};

std::vector<named_muon> muon_cases() {
  namespace mp = orthopt::muon_presets;
  std::vector<named_muon> c = {{"keller", mp::keller()},
                               {"moonlight", mp::moonlight()},
                               {"torch", mp::torch()},
                               {"torch match_rms_adamw", mp::torch(orthopt::shape_scale::match_rms_adamw)}};
  for (const auto kind : {orthopt::momentum_kind::ema, orthopt::momentum_kind::classical}) {
    for (const bool nesterov : {true, false}) {
      orthopt::muon_options o = mp::keller();
      o.weight_decay = 0.05;
      o.momentum = 0.9;
      o.momentum_type = kind;
      o.nesterov = nesterov;
      c.push_back(
          {std::string(kind == orthopt::momentum_kind::ema ? "ema" : "classical") + (nesterov ? " nesterov" : " plain"),
           o});
    }
  }
  const std::pair<orthopt::shape_scale, const char*> scales[] = {
      {orthopt::shape_scale::original, "original"},
      {orthopt::shape_scale::match_rms_adamw, "match_rms_adamw"},
      {orthopt::shape_scale::spectral, "spectral"},
      {orthopt::shape_scale::none, "none"}};
  for (const auto& [sc, name] : scales) {
    orthopt::muon_options o = mp::keller();
    o.weight_decay = 0.1;
    o.scale = sc;
    c.push_back({std::string("scale ") + name, o});
  }
  orthopt::muon_options exact = mp::moonlight();
  exact.ortho.exact = true;
  c.push_back({"moonlight with the exact polar", exact});
  orthopt::muon_options pe = mp::keller();
  pe.ortho.ns = orthopt::ns_presets::polar_express();  // the `safety` normalization
  c.push_back({"keller with polar_express", pe});
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// 1. Every rule and preset against its transcription
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("Muon presets and variants match a float64 transcription of Muon", "[rules][reference][muon]", float,
                   double) {
  std::uint64_t salt = 100;
  for (const auto& c : muon_cases()) check_rule<TestType, Muon<TestType>, muon_ref>("muon " + c.label, c.o, ++salt);
}

TEMPLATE_TEST_CASE("with absolute_eps every schedule and rule reproduces its source's normalization",
                   "[rules][reference][absolute_eps]", float, double) {
  // The transcription normalizes U by the source's formula (‖U‖ + ε, max(‖U‖, ε), ‖U‖(1 + s) + ε) on U
  // as it is, whose norm here is far from 1 (gradients of scale e⁻² to e², momentum of many of them).
  using T = TestType;
  std::uint64_t salt = 700;
  for (orthopt::ns_config ns : testing::all_presets()) {
    ns.absolute_eps = true;
    orthopt::muon_options o = orthopt::muon_presets::keller();
    o.ortho.ns = ns;
    check_rule<T, Muon<T>, muon_ref>("muon with " + ns.name + " absolute_eps", o, ++salt);
  }
  orthopt::muon_options torch_form = orthopt::muon_presets::torch();  // frobenius_clamp: max(‖U‖, ε)
  torch_form.ortho.ns.absolute_eps = true;
  check_rule<T, Muon<T>, muon_ref>("muon torch absolute_eps", torch_form, ++salt);
  orthopt::adamuon_options ada = orthopt::adamuon_presets::code();
  ada.ortho.ns.absolute_eps = true;
  check_rule<T, AdaMuon<T>, adamuon_ref>("adamuon code absolute_eps", ada, ++salt);
  orthopt::namo_options nm = orthopt::namo_presets::code();
  nm.ortho.ns.absolute_eps = true;
  check_rule<T, Namo<T>, namo_ref>("namo code absolute_eps", nm, ++salt);
  orthopt::namo_options nd = orthopt::namo_d_presets::code();
  nd.ortho.ns.absolute_eps = true;
  check_rule<T, NamoD<T>, namo_d_ref>("namo_d code absolute_eps", nd, ++salt);
}

TEMPLATE_TEST_CASE("AdaMuon presets match a float64 transcription of the AdaMuon paper and code",
                   "[rules][reference][adamuon]", float, double) {
  namespace ap = orthopt::adamuon_presets;
  std::uint64_t salt = 200;
  for (const auto& o : {ap::paper(), ap::code(), ap::code_gpt2(), ap::v1()})
    check_rule<TestType, AdaMuon<TestType>, adamuon_ref>("adamuon " + o.preset, o, ++salt);
}

TEMPLATE_TEST_CASE("NAMO presets match a float64 transcription of the NAMO paper and code", "[rules][reference][namo]",
                   float, double) {
  std::uint64_t salt = 300;
  for (const auto& o : {orthopt::namo_presets::code(), orthopt::namo_presets::paper()})
    check_rule<TestType, Namo<TestType>, namo_ref>("namo " + o.preset, o, ++salt);
  // The code form's clamps min(α, 1) and min(0.2·√max(A,B)·α, 1) only act with a large lr.
  orthopt::namo_options clamped = orthopt::namo_presets::code();
  clamped.lr = 5.0;
  check_rule<TestType, Namo<TestType>, namo_ref>("namo code, lr 5 (clamps active)", clamped, ++salt);
}

TEMPLATE_TEST_CASE("NAMO-D presets match a float64 transcription of the NAMO authors' code",
                   "[rules][reference][namo_d]", float, double) {
  std::uint64_t salt = 400;
  for (const auto& o : {orthopt::namo_d_presets::code(), orthopt::namo_d_presets::gpt2_small()})
    check_rule<TestType, NamoD<TestType>, namo_d_ref>("namo_d " + o.preset, o, ++salt);
  // lr 5 and λ 1.5: min(d_j·base, 1) = 1, the decay max(1 − 1.5, 0) = 0 and the step clamp act.
  orthopt::namo_options clamped = orthopt::namo_d_presets::code();
  clamped.lr = 5.0;
  clamped.weight_decay = 1.5;
  check_rule<TestType, NamoD<TestType>, namo_d_ref>("namo_d code, lr 5, wd 1.5 (clamps active)", clamped, ++salt);
  // Without the column clamp (c = 0 disables it).
  orthopt::namo_options unclamped = orthopt::namo_d_presets::code();
  unclamped.column_clamp = 0.0;
  check_rule<TestType, NamoD<TestType>, namo_d_ref>("namo_d code, c = 0", unclamped, ++salt);
}

TEMPLATE_TEST_CASE("AdamW presets match a float64 transcription of torch's and Moonlight's AdamW",
                   "[rules][reference][adamw]", float, double) {
  std::uint64_t salt = 500;
  for (const auto& o : {orthopt::adamw_presets::torch(), orthopt::adamw_presets::moonlight()})
    check_rule<TestType, AdamW<TestType>, adamw_ref>("adamw " + o.preset, o, ++salt);
}

TEMPLATE_TEST_CASE("the one-pass AdamW, Nesterov-momentum and AdaMuon stages equal the separate stages bit for bit",
                   "[rules][adamw][fused]", float, double) {
  // adamw's step, momentum_direction and AdaMuon's two fused stages make one pass over memory; the separate
  // stages (four passes for AdamW, two or three for the others) are the definition they must reproduce
  // exactly, rounding included.
  using T = TestType;
  namespace st = orthopt::stages;
  auto be = make_backend(2);
  const index_t rows = 300, cols = 257;  // long enough to be split over the backend's threads
  for (const auto& o : {orthopt::adamw_presets::torch(), orthopt::adamw_presets::moonlight()}) {
    INFO("adamw " << o.preset);
    AdamW<T> rule(o, be);
    auto state = rule.make_state(rows, cols);
    Mat<T> w_fused = gaussian(rows, cols, 901).cast<T>(), w_staged = w_fused;
    Mat<T> m(rows, cols), v(rows, cols), direction(rows, cols);
    m.setZero();
    v.setZero();
    std::vector<orthopt::scalar_t> scalars(2);
    for (std::int64_t t = 1; t <= 4; ++t) {
      Mat<T> g = gaussian(rows, cols, 910 + static_cast<std::uint64_t>(t)).cast<T>();
      if (t == 2) g(3, 4) = T(0);  // a zero gradient entry: v's root of a small value
      rule.step(orthopt::make_view(w_fused), orthopt::make_view(g).as_const(), state);
      const double c1 = 1.0 - std::pow(o.beta1, double(t)), c2 = 1.0 - std::pow(o.beta2, double(t));
      st::accumulate_momentum(be, orthopt::momentum_kind::ema, o.beta1, orthopt::make_view(g).as_const(), orthopt::make_view(m));
      st::accumulate_square(be, o.beta2, orthopt::make_view(g).as_const(), orthopt::make_view(v));
      const bool torch_form = o.form == orthopt::adamw_form::torch;
      st::divide_by_root_second_moment(be, orthopt::make_view(m).as_const(), orthopt::make_view(v).as_const(),
                                       torch_form ? 1.0 / c1 : std::sqrt(c2) / c1, torch_form ? 1.0 / c2 : 1.0, o.eps,
                                       orthopt::make_view(direction));
      st::set_decay_and_step(be, scalars.data(), 1.0 - o.lr * o.weight_decay, o.lr);
      st::decay_and_update(be, orthopt::make_view(w_staged), orthopt::make_view(direction).as_const(), scalars.data());
      CHECK(w_fused == w_staged);
      bool state_equal = true;
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j)
          state_equal = state_equal && state.momentum(0)(i, j) == m(i, j) && state.second_moment(0)(i, j) == v(i, j);
      CHECK(state_equal);
    }
  }
  for (const auto kind : {orthopt::momentum_kind::ema, orthopt::momentum_kind::classical}) {
    INFO("Nesterov momentum, " << (kind == orthopt::momentum_kind::ema ? "ema" : "classical"));
    const Mat<T> g = gaussian(rows, cols, 920).cast<T>();
    Mat<T> m_fused = gaussian(rows, cols, 921).cast<T>(), m_staged = m_fused, u_fused(rows, cols), u_staged(rows, cols);
    const auto out = st::momentum_direction(be, kind, 0.95, true, orthopt::make_view(g).as_const(),
                                            orthopt::make_view(m_fused), orthopt::make_view(u_fused));
    CHECK(out.data == u_fused.data());
    st::accumulate_momentum(be, kind, 0.95, orthopt::make_view(g).as_const(), orthopt::make_view(m_staged));
    st::nesterov_direction(be, kind, 0.95, orthopt::make_view(g).as_const(), orthopt::make_view(m_staged).as_const(),
                           orthopt::make_view(u_staged));
    CHECK(m_fused == m_staged);
    CHECK(u_fused == u_staged);
  }
  // AdaMuon's two one-pass stages: momentum with the (Nesterov) direction and its sign, and the second
  // moment with its division.
  for (const auto kind : {orthopt::momentum_kind::ema, orthopt::momentum_kind::classical}) {
    for (const bool nesterov : {false, true}) {
      for (const bool sign : {false, true}) {
        INFO("AdaMuon direction, " << (kind == orthopt::momentum_kind::ema ? "ema" : "classical") << ", Nesterov "
                                   << nesterov << ", sign " << sign);
        Mat<T> g = gaussian(rows, cols, 930).cast<T>();
        Mat<T> m_fused = gaussian(rows, cols, 931).cast<T>();
        g(0, 0) = T(0);  // with m(0, 0) = 0 too: sign(0) = 0 (and −0 keeps its sign bit as the sign map does)
        m_fused(0, 0) = T(0);
        g(1, 1) = -T(0);
        m_fused(1, 1) = -T(0);
        Mat<T> m_staged = m_fused, u_fused(rows, cols), u_staged(rows, cols);
        st::momentum_sign_direction(be, kind, 0.95, nesterov, sign, orthopt::make_view(g).as_const(),
                                    orthopt::make_view(m_fused), orthopt::make_view(u_fused));
        st::accumulate_momentum(be, kind, 0.95, orthopt::make_view(g).as_const(), orthopt::make_view(m_staged));
        if (nesterov) {
          st::nesterov_direction(be, kind, 0.95, orthopt::make_view(g).as_const(),
                                 orthopt::make_view(m_staged).as_const(), orthopt::make_view(u_staged));
          st::sign_map(be, sign, orthopt::make_view(u_staged).as_const(), orthopt::make_view(u_staged));
        } else {
          st::sign_map(be, sign, orthopt::make_view(m_staged).as_const(), orthopt::make_view(u_staged));
        }
        CHECK(m_fused == m_staged);
        bool same_bits = true;  // == would take −0 for +0
        for (index_t i = 0; i < rows; ++i)
          for (index_t j = 0; j < cols; ++j)
            same_bits = same_bits && std::memcmp(&u_fused(i, j), &u_staged(i, j), sizeof(T)) == 0;
        CHECK(same_bits);
      }
    }
  }
  for (const double s : {1.0, 1.0 / (1.0 - std::pow(0.999, 3.0))}) {
    INFO("AdaMuon second moment and division, bias correction " << s);
    const Mat<T> o = gaussian(rows, cols, 940).cast<T>() * T(0.03);
    Mat<T> v_fused = gaussian(rows, cols, 941).cast<T>().cwiseAbs() * T(1e-3), v_staged = v_fused;
    v_fused(2, 2) = v_staged(2, 2) = T(0);  // a zero moment beside a non-zero entry: ε decides
    Mat<T> o_fused = o, o_staged(rows, cols);
    st::accumulate_square_and_divide(be, 0.95, 1.0, s, 1e-8, orthopt::make_view(o_fused), orthopt::make_view(v_fused));
    st::accumulate_square(be, 0.95, orthopt::make_view(o).as_const(), orthopt::make_view(v_staged));
    st::divide_by_root_second_moment(be, orthopt::make_view(o).as_const(), orthopt::make_view(v_staged).as_const(), 1.0, s,
                                     1e-8, orthopt::make_view(o_staged));
    CHECK(v_fused == v_staged);
    CHECK(o_fused == o_staged);
  }
}

// ---------------------------------------------------------------------------------------------------
// 4. Batches and schedules
// ---------------------------------------------------------------------------------------------------
namespace {

/// A stacked [E, M, N] batch stepped in one call against E states stepped separately: the same arithmetic
/// on the same data, so W and every state tensor must agree bit for bit.
template <class T, class Rule>
void check_batch(Rule rule, shape s, std::uint64_t salt) {
  const index_t E = 3, n = s.rows * s.cols;
  std::vector<T> w_batch(static_cast<std::size_t>(E * n)), g_batch(w_batch.size());
  const MatD w0 = gaussian(E * s.rows, s.cols, salt);
  for (index_t k = 0; k < E; ++k)
    for (index_t i = 0; i < s.rows; ++i)
      for (index_t j = 0; j < s.cols; ++j)
        w_batch[static_cast<std::size_t>(k * n + i * s.cols + j)] = static_cast<T>(w0(k * s.rows + i, j));
  std::vector<T> w_single = w_batch, g_single(w_batch.size());
  auto batch_state = rule.make_state(s.rows, s.cols, E);
  std::vector<decltype(rule.make_state(1, 1))> states;
  for (index_t k = 0; k < E; ++k) states.push_back(rule.make_state(s.rows, s.cols));
  const double base_lr = rule.options().lr;
  for (int step = 1; step <= 5; ++step) {
    rule.options().lr = base_lr * lr_multiplier(step);
    const MatD g = gaussian(E * s.rows, s.cols, salt + 1000 + static_cast<std::uint64_t>(step));
    for (index_t k = 0; k < E; ++k)
      for (index_t i = 0; i < s.rows; ++i)
        for (index_t j = 0; j < s.cols; ++j)
          g_batch[static_cast<std::size_t>(k * n + i * s.cols + j)] = static_cast<T>(g(k * s.rows + i, j));
    g_single = g_batch;
    rule.step(orthopt::row_major_batch(w_batch.data(), E, s.rows, s.cols),
              orthopt::row_major_batch<const T>(g_batch.data(), E, s.rows, s.cols), batch_state);
    for (index_t k = 0; k < E; ++k) {
      rule.step(orthopt::row_major_view(w_single.data() + k * n, s.rows, s.cols),
                orthopt::row_major_view<const T>(g_single.data() + k * n, s.rows, s.cols),
                states[static_cast<std::size_t>(k)]);
    }
  }
  // A backend that batches products (the CUDA backend) forms each A·Aᵀ of the batch by a batched GEMM
  // instead of syrk: W and AdaMuon's V (which see NS's output) then agree to NS's rounding; momentum
  // and the column moments (which see only G) still agree bit for bit.
  const double ns_rounding = tol<T>(1000 * schedule_gain(orthopt::ns_presets::keller()), s);
  const auto close = [&](auto a, auto b) {
    double worst = 0.0, largest = 0.0;
    for (index_t i = 0; i < a.rows; ++i)
      for (index_t j = 0; j < a.cols; ++j) {
        worst = std::max(worst, std::abs(double(a(i, j)) - double(b(i, j))));
        largest = std::max(largest, std::abs(double(b(i, j))));
      }
    return worst <= ns_rounding * std::max(largest, 1.0);
  };
  if constexpr (batches_products) {
    CHECK(close(orthopt::row_major_view(w_batch.data(), E * s.rows, s.cols),
                orthopt::row_major_view(w_single.data(), E * s.rows, s.cols)));
  } else {
    CHECK(w_batch == w_single);
  }
  CHECK(batch_state.step() == 5);
  for (index_t k = 0; k < E; ++k) {
    auto& single = states[static_cast<std::size_t>(k)];
    CHECK(single.step() == 5);
    const auto same = [](auto a, auto b) {
      if (a.rows != b.rows || a.cols != b.cols) return false;
      for (index_t i = 0; i < a.rows; ++i)
        for (index_t j = 0; j < a.cols; ++j)
          if (a(i, j) != b(i, j)) return false;
      return true;
    };
    CHECK(same(batch_state.momentum(k), single.momentum()));
    if constexpr (batches_products) {
      CHECK((batch_state.second_moment(k).empty() || close(batch_state.second_moment(k), single.second_moment())));
    } else {
      CHECK(same(batch_state.second_moment(k), single.second_moment()));
    }
    CHECK(same(batch_state.column_moment(k), single.column_moment()));
  }
}
}  // namespace

TEMPLATE_TEST_CASE("a stacked batch stepped in one call equals separate states stepped separately", "[rules][batch]",
                   float, double) {
  using T = TestType;
  for (const shape s : {shape{6, 10}, shape{10, 6}, shape{1, 7}, shape{7, 1}, shape{9, 9}}) {
    INFO("shape " << to_string(s));
    const std::uint64_t salt = seed_of(s, 77);
    {
      INFO("muon");
      check_batch<T>(Muon<T>(orthopt::muon_presets::moonlight()), s, salt);
    }
    {
      INFO("muon exact polar");
      orthopt::muon_options o = orthopt::muon_presets::keller();
      o.ortho.exact = true;
      check_batch<T>(Muon<T>(o), s, salt);
    }
    for (const auto& o :
         {orthopt::adamuon_presets::paper(), orthopt::adamuon_presets::code(), orthopt::adamuon_presets::v1()}) {
      INFO("adamuon " << o.preset);
      check_batch<T>(AdaMuon<T>(o), s, salt);
    }
    for (const auto& o : {orthopt::namo_presets::code(), orthopt::namo_presets::paper()}) {
      INFO("namo " << o.preset);
      check_batch<T>(Namo<T>(o), s, salt);
    }
    {
      INFO("namo_d");
      check_batch<T>(NamoD<T>(orthopt::namo_d_presets::code()), s, salt);
    }
    for (const auto& o : {orthopt::adamw_presets::torch(), orthopt::adamw_presets::moonlight()}) {
      INFO("adamw " << o.preset);
      check_batch<T>(AdamW<T>(o), s, salt);
    }
  }
}

namespace {
/// lr = 0 written into options() between steps takes effect at once: W is left bit-identical while the
/// state still advances (the step count, the momentum); lr restored, W moves again. No rule is re-created.
template <class T, class Rule>
void check_lr_zero_takes_effect(Rule rule, shape s) {
  auto st = rule.make_state(s.rows, s.cols);
  Mat<T> w = gaussian(s.rows, s.cols, seed_of(s, 1)).cast<T>();
  const double lr = rule.options().lr;
  for (int k = 1; k <= 6; ++k) {
    const Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 10 + static_cast<std::uint64_t>(k))).cast<T>();
    const Mat<T> before = w;
    const Mat<T> m_before = Eigen::Map<const MatRM<T>>(st.momentum().data, s.rows, s.cols);
    rule.options().lr = (k == 3 || k == 4) ? 0.0 : lr;
    rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
    const Mat<T> m_after = Eigen::Map<const MatRM<T>>(st.momentum().data, s.rows, s.cols);
    INFO("step " << k);
    CHECK(st.step() == k);
    CHECK(m_after != m_before);  // the state advances whatever the lr
    if (k == 3 || k == 4) {
      CHECK(w == before);
    } else {
      CHECK(max_abs_diff(w.template cast<double>(), before.template cast<double>()) > 0.0);
    }
  }
}
}  // namespace

TEMPLATE_TEST_CASE("a learning rate written into options() between steps takes effect without a new state",
                   "[rules][schedule]", float, double) {
  using T = TestType;
  const shape s{12, 20};
  check_lr_zero_takes_effect<T>(Muon<T>(orthopt::muon_presets::moonlight()), s);
  check_lr_zero_takes_effect<T>(AdaMuon<T>(orthopt::adamuon_presets::paper()), s);
  check_lr_zero_takes_effect<T>(AdaMuon<T>(orthopt::adamuon_presets::code()), s);
  check_lr_zero_takes_effect<T>(Namo<T>(orthopt::namo_presets::code()), s);
  check_lr_zero_takes_effect<T>(Namo<T>(orthopt::namo_presets::paper()), s);
  check_lr_zero_takes_effect<T>(NamoD<T>(orthopt::namo_d_presets::code()), s);
  check_lr_zero_takes_effect<T>(AdamW<T>(orthopt::adamw_presets::torch()), s);
  // The reference tests above also change lr and weight_decay at every step (lr_multiplier,
  // wd_multiplier) and compare every step with the transcription under the same schedule.
}

// ---------------------------------------------------------------------------------------------------
// Tiny gradients under NAMO (documented in the class comment: ε acts as in Adam, so steps shrink)
// ---------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("NAMO with 1e-30 gradients takes the shrunken step its formula gives", "[rules][namo][tiny]", float,
                   double) {
  using T = TestType;
  for (const shape s : {shape{12, 20}, shape{20, 12}, shape{1, 9}, shape{16, 16}}) {
    for (const auto& o : {orthopt::namo_presets::code(), orthopt::namo_presets::paper()}) {
      INFO(o.preset << " shape " << to_string(s));
      const Mat<T> g = gaussian(s.rows, s.cols, seed_of(s, 3)).cast<T>();
      const Mat<T> g_tiny = (gaussian(s.rows, s.cols, seed_of(s, 3)) * 1e-30).cast<T>();
      // W starts at 0, so the step is W₁ = −step·O alone (weight decay of 0 is 0), and O = NS(U) is the same
      // for both gradients (NS is scale-invariant); only α differs.
      Namo<T> normal_rule(o), tiny_rule(o);
      auto st_n = normal_rule.make_state(s.rows, s.cols), st_t = tiny_rule.make_state(s.rows, s.cols);
      Mat<T> w_n = Mat<T>::Zero(s.rows, s.cols), w_t = Mat<T>::Zero(s.rows, s.cols);
      normal_rule.step(orthopt::make_view(w_n), orthopt::make_view(g), st_n);
      tiny_rule.step(orthopt::make_view(w_t), orthopt::make_view(g_tiny), st_t);
      // α at t = 1 from the formula: M = (1−μ1)G, U = (1−μ1)G + μ1M (code) or M (paper), v = (1−μ2)‖G‖².
      const auto alpha_of = [&](const Mat<T>& gt) {
        const MatD gd = gt.template cast<double>();
        const double mu1 = o.mu1, mu2 = o.mu2;
        const MatD m = (1.0 - mu1) * gd;
        const MatD u = o.form == orthopt::namo_form::code ? MatD((1.0 - mu1) * gd + mu1 * m) : m;
        const double v = (1.0 - mu2) * gd.squaredNorm();
        const double bias = o.form == orthopt::namo_form::code ? std::sqrt(1.0 - mu2) / ((1.0 - mu1) + 1e-12)
                                                               : std::sqrt(1.0 - mu2) / (1.0 - mu1);
        return bias * u.norm() / (std::sqrt(v) + o.eps);  // the common factor lr is left out
      };
      const double ratio = alpha_of(g_tiny) / alpha_of(g);
      // ‖G‖ ~ 1e-30·√(AB) ≪ ε = 1e-8: α shrinks by ~1e-30·√v/ε ~ 1e-22 instead of staying the same.
      CHECK(ratio < 1e-20);
      CHECK(ratio > 0.0);
      REQUIRE(w_t.allFinite());
      const MatD expected = ratio * w_n.template cast<double>();
      // O is the same up to NS's scale-invariance tolerance (rounding 1e-30·G to T, amplified by the
      // schedule gain); the step size is computed in double.
      const double bound = testing::tol<T>(10 * schedule_gain(o.ortho.ns), s) * expected.cwiseAbs().maxCoeff();
      CHECK(max_abs_diff(w_t.template cast<double>(), expected) <= bound);
      CHECK(w_t.cwiseAbs().maxCoeff() > 0.0);  // it shrinks, but it is not flushed to zero
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The presets carry the values their sources publish (typed here from the papers and the authors' code,
// not from the header):
// the reference tests above run each preset's own options, so a wrong preset value is caught only here.
// ---------------------------------------------------------------------------------------------------
TEST_CASE("rule presets carry the hyper-parameters their sources publish", "[rules][presets]") {
  using orthopt::momentum_kind;
  using orthopt::shape_scale;
  const orthopt::ns_config keller = orthopt::ns_presets::keller();
  const auto is_keller_ns = [&](const orthopt::orthogonalizer& o, orthopt::ns_normalization norm) {
    return !o.exact && o.ns.table == keller.table && o.ns.steps == 5 && o.ns.normalization == norm && o.ns.eps == 1e-7;
  };
  namespace mp = orthopt::muon_presets;
  // Muon: keller (ema, nesterov, keller NS5, original, lr 0.02, wd 0); moonlight (classical, nesterov,
  // match_rms_adamw, lr 1e-3, wd 0.1); torch (ema, nesterov, frobenius_clamp ε 1e-7, lr 1e-3, wd 0.1).
  const auto k = mp::keller();
  CHECK((k.momentum_type == momentum_kind::ema && k.nesterov && k.scale == shape_scale::original));
  CHECK((k.lr == 0.02 && k.weight_decay == 0.0 && k.momentum == 0.95));
  CHECK(is_keller_ns(k.ortho, orthopt::ns_normalization::frobenius));
  const auto m = mp::moonlight();
  CHECK((m.momentum_type == momentum_kind::classical && m.nesterov && m.scale == shape_scale::match_rms_adamw));
  CHECK((m.lr == 1e-3 && m.weight_decay == 0.1 && m.momentum == 0.95));
  CHECK(is_keller_ns(m.ortho, orthopt::ns_normalization::frobenius));
  for (const auto adjust : {shape_scale::original, shape_scale::match_rms_adamw}) {
    const auto t = mp::torch(adjust);
    CHECK((t.momentum_type == momentum_kind::ema && t.nesterov && t.scale == adjust));
    CHECK((t.lr == 1e-3 && t.weight_decay == 0.1 && t.momentum == 0.95));
    CHECK(is_keller_ns(t.ortho, orthopt::ns_normalization::frobenius_clamp));
  }
  CHECK(mp::torch().scale == shape_scale::original);
  // AdaMuon: paper (β 0.95 both moments, ε 1e-8, no bias correction, sign); code (lr 0.02, wd 0.01);
  // code_gpt2 (lr 6e-4, wd 0.1); v1 (no sign, β2 0.999 with bias correction).
  namespace ap = orthopt::adamuon_presets;
  const auto check_ada = [&](const orthopt::adamuon_options& o, orthopt::adamuon_form form, double lr, double wd,
                             bool sign, double beta2) {
    INFO("adamuon " << o.preset);
    CHECK(o.form == form);
    CHECK(o.lr == lr);
    CHECK(o.weight_decay == wd);
    CHECK(o.beta == 0.95);
    CHECK(o.eps == 1e-8);
    CHECK(o.sign == sign);
    CHECK(o.beta2 == beta2);
    CHECK(is_keller_ns(o.ortho, orthopt::ns_normalization::frobenius));
  };
  check_ada(ap::paper(), orthopt::adamuon_form::paper, 0.02, 0.01, true, 0.0);
  check_ada(ap::code(), orthopt::adamuon_form::code, 0.02, 0.01, true, 0.0);
  check_ada(ap::code_gpt2(), orthopt::adamuon_form::code, 6e-4, 0.1, true, 0.0);
  check_ada(ap::v1(), orthopt::adamuon_form::code, 0.02, 0.01, false, 0.999);
  // NAMO: lr 1e-2, wd 0.1, μ1 0.95, μ2 0.99, ε 1e-8, T 5, scale 0.2; code with Nesterov, paper without;
  // NAMO-D clamp 0.75 (code) and 0.01 (GPT-2 small).
  const auto check_namo = [&](const orthopt::namo_options& o, orthopt::namo_form form, bool nesterov, double clamp) {
    INFO("namo " << o.preset);
    CHECK(o.form == form);
    CHECK((o.lr == 1e-2 && o.weight_decay == 0.1 && o.mu1 == 0.95 && o.mu2 == 0.99 && o.eps == 1e-8));
    CHECK(o.nesterov == nesterov);
    CHECK(o.rms_scale == 0.2);
    CHECK(o.column_clamp == clamp);
    CHECK(is_keller_ns(o.ortho, orthopt::ns_normalization::frobenius));
  };
  check_namo(orthopt::namo_presets::code(), orthopt::namo_form::code, true, 0.75);
  check_namo(orthopt::namo_presets::paper(), orthopt::namo_form::paper, false, 0.75);
  check_namo(orthopt::namo_d_presets::code(), orthopt::namo_form::code, true, 0.75);
  check_namo(orthopt::namo_d_presets::gpt2_small(), orthopt::namo_form::code, true, 0.01);
  // AdamW: β = (0.9, 0.95), ε = 1e-8.
  for (const auto& o : {orthopt::adamw_presets::torch(), orthopt::adamw_presets::moonlight()}) {
    INFO("adamw " << o.preset);
    CHECK((o.beta1 == 0.9 && o.beta2 == 0.95 && o.eps == 1e-8));
  }
  CHECK(orthopt::adamw_presets::torch().form == orthopt::adamw_form::torch);
  CHECK(orthopt::adamw_presets::moonlight().form == orthopt::adamw_form::moonlight);
}
