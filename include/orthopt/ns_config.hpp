// SPDX-License-Identifier: Apache-2.0
//
// Newton–Schulz coefficient schedules and input normalizations, as data. Each preset says where its
// numbers come from; the numbers are facts from the cited papers and codebases.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "orthopt/errors.hpp"

namespace orthopt {

/// One Newton–Schulz step X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ.
struct ns_coefficients {
  double a = 0.0;
  double b = 0.0;
  double c = 0.0;
  friend bool operator==(const ns_coefficients&, const ns_coefficients&) = default;
};

/// How the input is brought inside the iteration's basin before the first step.
enum class ns_normalization {
  frobenius,        ///< X / (‖X‖_F + ε)          (KellerJordan/Muon); orthopt: X / (‖X‖_F·(1 + ε))
  frobenius_clamp,  ///< X / max(‖X‖_F, ε)        (torch.optim.Muon);  orthopt: X / ‖X‖_F, zero stays zero
  safety,           ///< X / (‖X‖_F·(1 + s) + ε)  (Polar Express);     orthopt: X / (‖X‖_F·(1 + s + ε))
  aol,              ///< X / ‖X‖_F, then on the first step: A = XXᵀ, s_i = 1/√max(Σ_j|A_ij|, ε),
                    ///< X ← diag(s)X, A ← diag(s)A diag(s) (AOL preconditioning, Turbo-Muon)
};

/// How the iteration is carried out. Both compute the same polynomial of X; they differ in which
/// products they form, so in cost and in rounding.
enum class ns_algorithm {
  /// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ formed from X every step (Jordan 2024): the form every
  /// preset's source uses, so the one that reproduces them. Per step 3m²n + m³ flops (m ≤ n).
  standard,
  /// Gram Newton–Schulz (Dao-AILab, 2026): form R = X·Xᵀ once, iterate on the small m×m side
  /// (P_k = a·I + b·R_k + c·R_k², R_{k+1} = R_k·P_k² as a product known to be symmetric, Q ← P_k·Q) and
  /// apply the accumulated Q to X once at
  /// the end. Every P_k is a polynomial in R_0, so in exact arithmetic the result is the standard one.
  /// Flops: about 5m³ per step on the small side plus m²n (R_0) and 2m²n (Q·X), and 3m²n more per
  /// restart; the standard iteration costs 3m²n + m³ per step. Keller, 5 steps, one restart: 41m³ against
  /// 65m³ at 1:4, 65m³ against 125m³ at 1:8, but 23m³ against 20m³ on a square matrix: use it for
  /// n ≥ 2m. In floating point R_0 carries σ², so small singular values lose digits that Q then
  /// multiplies by the schedule's gain; a restart (X ← Q·X, R ← X·Xᵀ, Q ← I; see gram_restart_after)
  /// brings float results back near the standard iteration's accuracy (ns_config::gram_error_gain).
  gram,
  /// Whichever of the two needs fewer flops for the plan's shape, decided when a plan is made
  /// (ns_config::gram_flops_ratio below 0.8: the Gram algorithm from about 1:2.2 on, with keller's 5 steps),
  /// never the Gram algorithm where it would be refused (16-bit storage types, or a schedule whose rounding
  /// growth is beyond the element type's precision): the standard iteration there.
  fastest,
};

/// A complete Newton–Schulz configuration: a coefficient table, a step count and a normalization.
///
/// Step k (1-based) uses row min(k, table.size()) of the table: a table shorter than `steps` repeats
/// its last row.
///
/// Scale invariance: the reference codes divide by ‖X‖ + ε (or ‖X‖(1 + s) + ε), where ε guards against
/// a zero matrix but also swamps a tiny one (‖X‖ = 1e-30 comes out degenerate). orthopt applies ε
/// relative to the norm, dividing by ‖X‖·(1 + s + ε); a zero matrix maps to zero by itself. The result
/// equals the reference formula when ‖X‖_F = 1 and is exactly invariant to positive scaling of X;
/// elsewhere the normalization differs from the reference's by the relative amount
/// ε·(1/‖X‖ − 1)/(1 + ε/‖X‖), which grows as ‖X‖ shrinks (2e-6 at ‖X‖ = 0.05 with ε = 1e-7), and Newton–
/// Schulz can amplify that by its schedule's gain. `absolute_eps = true` uses the reference formulas
/// exactly — ‖X‖ + ε, max(‖X‖, ε), ‖X‖(1 + s) + ε — so that every preset reproduces its source to
/// rounding, at the price of scale invariance for tiny inputs.
struct ns_config {
  std::string name = "custom";
  std::vector<ns_coefficients> table;
  int steps = 5;
  ns_normalization normalization = ns_normalization::frobenius;
  double eps = 1e-7;     ///< ε of the normalization
  double safety = 0.0;   ///< s of the `safety` normalization
  bool check_finite = true;  ///< reject NaN/Inf inputs with value_error (a device→host read on a GPU)
  bool absolute_eps = false;  ///< normalize with the sources' absolute ε (see above); default: relative ε
  ns_algorithm algorithm = ns_algorithm::standard;  ///< which products carry the iteration (see ns_algorithm)
  /// ns_algorithm::gram only: restart after this iteration (1-based); 0: never; −1 (default): the
  /// position gram_restart_iteration derives (keller, polar_express, quintic, cans, aol: 2; you: 3; cubic: 5).
  int gram_restart_after = -1;

  /// The coefficients of step k (1-based).
  [[nodiscard]] const ns_coefficients& step(int k) const {
    const auto last = static_cast<int>(table.size());
    return table[static_cast<std::size_t>((k < last ? k : last) - 1)];
  }

  /// How much the Gram algorithm can amplify a rounding error of its m×m Gram matrix with a restart after
  /// iteration `restart` (0: none). On a run of iterations s..e carried on R (between restarts),
  /// X_e = q(R_s)·X_s with q(λ) = Π_k (a_k + b_k·λ_k + c_k·λ_k²), a polynomial in λ = σ² with
  /// λ_{k+1} = λ_k·(a_k + b_k·λ_k + c_k·λ_k²)². An error δ in λ moves σ_e by |q'(σ_s²)|·δ·σ_s, and the steps
  /// after the run multiply that by their slopes |p_k'(σ)|. The gain is the sum over runs of the largest
  /// such factor over σ ∈ (0, 1] (a grid of 1000 points). Keller, 5 steps: about 36000 without a restart,
  /// 430 with one after step 2 (its standard-iteration slope product is 485).
  [[nodiscard]] double gram_error_gain(int restart) const {
    const auto p = [this](int k, double x) {
      const ns_coefficients& c = step(k);
      return x * (c.a + x * x * (c.b + c.c * x * x));
    };
    const auto slope = [this](int k, double x) {
      const ns_coefficients& c = step(k);
      return std::abs(c.a + x * x * (3 * c.b + 5 * c.c * x * x));
    };
    const auto run_gain = [&](int first, int last) {
      double best = 0.0;
      for (int g = 1; g <= 1000; ++g) {
        double sigma = g / 1000.0;
        for (int k = 1; k < first; ++k) sigma = p(k, sigma);
        double lambda = sigma * sigma, d_lambda = 1.0, q = 1.0, d_q = 0.0;  // forward-mode d/dλ
        for (int k = first; k <= last; ++k) {
          const ns_coefficients& c = step(k);
          const double f = c.a + lambda * (c.b + c.c * lambda), d_f = (c.b + 2 * c.c * lambda) * d_lambda;
          d_q = d_q * f + q * d_f;
          q *= f;
          d_lambda = f * (d_lambda * f + 2 * lambda * d_f);
          lambda *= f * f;
        }
        double sensitivity = std::abs(d_q) * sigma, x = q * sigma;
        for (int k = last + 1; k <= steps; ++k) {
          sensitivity *= slope(k, x);
          x = p(k, x);
        }
        if (sensitivity > best) best = sensitivity;
      }
      return best;
    };
    if (restart > 0 && restart < steps) return run_gain(1, restart) + run_gain(restart + 1, steps);
    return run_gain(1, steps);
  }

  /// The iteration after which the Gram algorithm restarts, 0 for none: gram_restart_after, or for −1
  /// the position whose runs have the smallest worst rounding growth (gram_rounding_growth), ties
  /// broken by the smaller gram_error_gain (computed here: a plan calls this once, when made or when its
  /// step count changes). Chosen by measurement: on float inputs of condition up to 10⁶ in both
  /// orientations (benchmarks/gram_restart_study.cpp), this position's worst error is the smallest of
  /// all positions or within 20 % of it for every preset but cubic (2.9× the standard error against
  /// 1.8×), where the smallest gram_error_gain alone put CANS's restart after iteration 1, 5× worse than
  /// after 2. A float or double plan passes its element type's unit roundoff: positions whose growth
  /// reaches 1/unit_roundoff are then never chosen when another exists (with 0, every position is a
  /// candidate).
  [[nodiscard]] int gram_restart_iteration(double unit_roundoff = 0.0) const {
    if (gram_restart_after >= 0) return gram_restart_after;
    const auto feasible = [&](int r) { return unit_roundoff <= 0.0 || gram_rounding_growth(r) * unit_roundoff < 1.0; };
    const auto better = [this](int r, int than) {
      const double g = gram_rounding_growth(r), h = gram_rounding_growth(than);
      if (g < h * (1 - 1e-9)) return true;
      if (h < g * (1 - 1e-9)) return false;
      return gram_error_gain(r) < gram_error_gain(than);
    };
    int best = -1, best_any = 0;
    for (int r = 1; r < steps; ++r) {
      if (better(r, best_any)) best_any = r;
    }
    for (int r = 0; r < steps; ++r) {
      if (feasible(r) && (best < 0 || better(r, best))) best = r;
    }
    return best >= 0 ? best : best_any;
  }

  /// The Gram algorithm's multiply-adds over the standard iteration's, for a small×large matrix
  /// (small ≤ large) with restart after iteration `restart` (0: none), counting a rank-k update and a
  /// product known to be symmetric at half a gemm's. Standard, per step: X·Xᵀ, A², P·X. Gram: R_0, then per
  /// step P (one rank-k update), Q ← P·Q (after the first step of a run), R ← R·P² (but on the last step
  /// and at a restart), a restart X ← Q·X and R ← X·Xᵀ, and Q·X at the end.
  [[nodiscard]] double gram_flops_ratio(double small, double large, int restart) const {
    const double m3 = small * small * small, mmn = small * small * large;
    const double standard = steps * (1.5 * mmn + 0.5 * m3);
    double gram = 0.5 * mmn + mmn;  // R_0, and Q·X at the end
    bool q_identity = true;
    for (int k = 1; k <= steps; ++k) {
      gram += 0.5 * m3;               // P_k = a·I + b·R + c·R²
      if (!q_identity) gram += m3;    // Q ← P·Q
      q_identity = false;
      if (k == steps) break;
      if (k == restart) {
        gram += 1.5 * mmn;            // X ← Q·X, R ← X·Xᵀ
        q_identity = true;
      } else {
        gram += m3;                   // P² as a rank-k update, then R·P² as a symmetric product
      }
    }
    return gram / standard;
  }

  /// The Gram algorithm's worst growth of a rounding error in its Gram matrix R: near λ = 0 each
  /// iteration maps λ to λ·(a_k + b_k·λ + c_k·λ²)² ≈ a_k²·λ, so the iterations of a run between restarts
  /// multiply an error of R — which can make a zero eigenvalue slightly negative, a direction standard
  /// Newton–Schulz never sees — by the product of their a_k² (the R a run's last iteration produces is
  /// never used). Once that error reaches order 1 on the negative side, the polynomials grow without
  /// bound (Inf, then NaN). Returns the largest such product over the runs the restart position
  /// `restart` (0: none) makes.
  [[nodiscard]] double gram_rounding_growth(int restart) const {
    const auto run = [this](int first, int last) {
      double g = 1.0;
      for (int k = first; k < last; ++k) g *= step(k).a * step(k).a;
      return g;
    };
    if (restart > 0 && restart < steps) {
      const double a = run(1, restart), b = run(restart + 1, steps);
      return a > b ? a : b;
    }
    return run(1, steps);
  }

  /// Throws value_error naming the first offending field. Allocates nothing unless it throws.
  void validate() const {
    const auto fail = [this](const std::string& what) {
      throw value_error("orthopt::ns_config '" + name + "': " + what);
    };
    if (table.empty()) fail("the coefficient table is empty");
    if (steps < 1) fail("steps = " + std::to_string(steps) + "; at least 1 step is needed");
    if (normalization != ns_normalization::frobenius && normalization != ns_normalization::frobenius_clamp &&
        normalization != ns_normalization::safety && normalization != ns_normalization::aol) {
      fail("normalization = " + std::to_string(static_cast<int>(normalization)) + " is not an ns_normalization");
    }
    if (algorithm != ns_algorithm::standard && algorithm != ns_algorithm::gram && algorithm != ns_algorithm::fastest) {
      fail("algorithm = " + std::to_string(static_cast<int>(algorithm)) + " is not an ns_algorithm");
    }
    if (gram_restart_after < -1) {
      fail("gram_restart_after = " + std::to_string(gram_restart_after) +
           "; use an iteration number, 0 for no restart or -1 for the default");
    }
    for (std::size_t r = 0; r < table.size(); ++r) {
      const auto& t = table[r];
      if (!std::isfinite(t.a) || !std::isfinite(t.b) || !std::isfinite(t.c)) {
        fail("table row " + std::to_string(r + 1) + " has a non-finite coefficient");
      }
    }
    if (!std::isfinite(eps) || eps < 0.0) fail("eps = " + detail::value_text(eps) + " must be finite and >= 0");
    if (!std::isfinite(safety) || safety < 0.0) fail("safety = " + detail::value_text(safety) + " must be finite and >= 0");
    if (normalization == ns_normalization::frobenius_clamp && eps <= 0.0) fail("frobenius_clamp needs eps > 0");
    if (normalization == ns_normalization::aol && eps <= 0.0) {
      fail("the aol normalization needs eps > 0 (its row scale is 1/√max(row sum, eps): eps = 0 divides by 0 on a zero row)");
    }
  }

  /// The same configuration with another step count.
  [[nodiscard]] ns_config with_steps(int t) const {
    ns_config c = *this;
    c.steps = t;
    return c;
  }
};

namespace detail {
/// A setting as the double for_each_setting reports: flags as 0 or 1, enumerators by their value.
inline double setting_value(bool b) { return b ? 1.0 : 0.0; }
template <class E>
  requires std::is_enum_v<E>
double setting_value(E e) {
  return static_cast<double>(static_cast<long long>(e));
}
}  // namespace detail

/// Calls f(prefix, name, value) for every setting of `c` that changes what an iteration computes, as a
/// double (detail::setting_value), prefix + name being the setting's path: what ranks compare to agree
/// on a configuration (distributed_optimizer). The table comes last: its row count, then each row's a,
/// b, c. `name` is only a label and is left out. Allocates nothing.
template <class F>
void for_each_setting(const ns_config& c, F&& f, const char* prefix = "") {
  f(prefix, "steps", static_cast<double>(c.steps));
  f(prefix, "normalization", detail::setting_value(c.normalization));
  f(prefix, "eps", c.eps);
  f(prefix, "safety", c.safety);
  f(prefix, "check_finite", detail::setting_value(c.check_finite));
  f(prefix, "absolute_eps", detail::setting_value(c.absolute_eps));
  f(prefix, "algorithm", detail::setting_value(c.algorithm));
  f(prefix, "gram_restart_after", static_cast<double>(c.gram_restart_after));
  f(prefix, "table rows", static_cast<double>(c.table.size()));
  for (const ns_coefficients& row : c.table) {
    f(prefix, "table a", row.a);
    f(prefix, "table b", row.b);
    f(prefix, "table c", row.c);
  }
}

/// The named schedules. Each returns a full configuration with the step count its source recommends.
namespace ns_presets {

/// KellerJordan/Muon (muon.py, Jordan 2024): (3.4445, −4.7750, 2.0315) at every step, 5 steps,
/// X / (‖X‖_F + 1e-7).
inline ns_config keller(int steps = 5) {
  return {"keller", {{3.4445, -4.7750, 2.0315}}, steps, ns_normalization::frobenius, 1e-7, 0.0};
}

/// The raw degree-5 rows of Polar Express (Amsel et al. 2025, arXiv 2505.16932, Algorithm 1, ℓ = 1e-3),
/// before the safety factor.
inline std::vector<ns_coefficients> polar_express_raw_rows() {
  return {{8.28721201814563, -23.595886519098837, 17.300387312530933},
          {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
          {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
          {3.3184196573706015, -2.488488024314874, 0.51004894012372},
          {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
          {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
          {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
          {1.875, -1.25, 0.375}};
}

/// Polar Express with its safety factor 1.01: every row but the last becomes (a/1.01, b/1.01³, c/1.01⁵)
/// and the input is normalized by ‖X‖_F·1.01 + 1e-7. Recommended 5 or 6 steps; the last row repeats.
inline ns_config polar_express(int steps = 5) {
  auto rows = polar_express_raw_rows();
  const double f = 1.01;
  for (std::size_t r = 0; r + 1 < rows.size(); ++r) {
    rows[r] = {rows[r].a / f, rows[r].b / (f * f * f), rows[r].c / (f * f * f * f * f)};
  }
  return {"polar_express", std::move(rows), steps, ns_normalization::safety, 1e-7, 0.01};
}

/// The five Polar Express rows modded-nanogpt uses (generator with ℓ = 1e-3, 5 steps, safety 0.02,
/// cushion 0.02), normalized by ‖X‖_F·1.02 + 1e-6.
inline ns_config polar_express_nanogpt(int steps = 5) {
  return {"polar_express_nanogpt",
          {{8.156554524902461, -22.48329292557795, 15.878769915207462},
           {4.042929935166739, -2.808917465908714, 0.5000178451051316},
           {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
           {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
           {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}},
          steps,
          ns_normalization::safety,
          1e-6,
          0.02};
}

/// The quintic table of optax's "dion" preset, 5 steps, X / (‖X‖_F + 1e-7).
inline ns_config quintic(int steps = 5) {
  return {"quintic",
          {{4.0848, -6.8946, 2.9270},
           {3.9505, -6.3029, 2.6377},
           {3.7418, -5.5913, 2.3037},
           {2.8769, -3.1427, 1.2046},
           {2.8366, -3.0525, 1.2012}},
          steps,
          ns_normalization::frobenius,
          1e-7,
          0.0};
}

/// CANS, 5 steps, X / (‖X‖_F + 1e-7).
inline ns_config cans(int steps = 5) {
  return {"cans",
          {{8.4703, -25.1081, 18.6293},
           {4.1828, -3.1087, 0.5806},
           {3.9619, -2.9541, 0.5630},
           {3.2866, -2.4647, 0.5074},
           {2.2737, -1.6447, 0.4162}},
          steps,
          ns_normalization::frobenius,
          1e-7,
          0.0};
}

/// Turbo-Muon: 4 steps after AOL preconditioning (which replaces the Frobenius normalization).
inline ns_config aol(int steps = 4) {
  return {"aol",
          {{4.0098, -7.0585, 2.4635}, {3.4585, -5.5479, 2.5959}, {2.7573, -3.2939, 1.4254}, {2.7215, -3.0494, 1.3169}},
          steps,
          ns_normalization::aol,
          1e-7,
          0.0};
}

/// The six-step "you" table, each coefficient /1024, X / (‖X‖_F + 1e-7).
inline ns_config you(int steps = 6) {
  const double d = 1024.0;
  return {"you",
          {{3955 / d, -8306 / d, 5008 / d},
           {3735 / d, -6681 / d, 3463 / d},
           {3799 / d, -6499 / d, 3211 / d},
           {4019 / d, -6385 / d, 2906 / d},
           {2677 / d, -3029 / d, 1162 / d},
           {2172 / d, -1833 / d, 682 / d}},
          steps,
          ns_normalization::frobenius,
          1e-7,
          0.0};
}

/// The classical cubic Newton–Schulz iteration X ← 1.5X − 0.5XXᵀX (c = 0: the A² product is skipped).
/// It converges for singular values in (0, √3) but only multiplies small ones by 1.5 per step, so it
/// needs many steps; 10 by default.
inline ns_config cubic(int steps = 10) {
  return {"cubic", {{1.5, -0.5, 0.0}}, steps, ns_normalization::frobenius, 1e-7, 0.0};
}

/// A user-supplied table.
inline ns_config custom(std::vector<ns_coefficients> table, int steps,
                        ns_normalization normalization = ns_normalization::frobenius, double eps = 1e-7,
                        double safety = 0.0) {
  return {"custom", std::move(table), steps, normalization, eps, safety};
}

/// A preset by name ("keller", "polar_express", "polar_express_nanogpt", "quintic", "cans", "aol",
/// "you", "cubic"); throws value_error listing the names for any other.
inline ns_config by_name(const std::string& name) {
  if (name == "keller") return keller();
  if (name == "polar_express") return polar_express();
  if (name == "polar_express_nanogpt") return polar_express_nanogpt();
  if (name == "quintic") return quintic();
  if (name == "cans") return cans();
  if (name == "aol") return aol();
  if (name == "you") return you();
  if (name == "cubic") return cubic();
  throw value_error("orthopt::ns_presets::by_name: unknown schedule '" + name +
                    "'; known: keller, polar_express, polar_express_nanogpt, quintic, cans, aol, you, cubic");
}

}  // namespace ns_presets
}  // namespace orthopt
