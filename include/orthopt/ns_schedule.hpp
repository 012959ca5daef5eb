// SPDX-License-Identifier: Apache-2.0
//
// Newton–Schulz coefficient schedules and input normalizations, as data. Each preset says where its
// numbers come from; the numbers are facts from the cited papers and codebases.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
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

  /// The coefficients of step k (1-based).
  [[nodiscard]] const ns_coefficients& step(int k) const {
    const auto last = static_cast<int>(table.size());
    return table[static_cast<std::size_t>((k < last ? k : last) - 1)];
  }

  /// Throws value_error naming the first offending field. Allocates nothing unless it throws.
  void validate() const {
    const auto fail = [this](const std::string& what) {
      throw value_error("orthopt::ns_config '" + name + "': " + what);
    };
    if (table.empty()) fail("the coefficient table is empty");
    if (steps < 1) fail("steps = " + std::to_string(steps) + "; at least 1 step is needed");
    for (std::size_t r = 0; r < table.size(); ++r) {
      const auto& t = table[r];
      if (!std::isfinite(t.a) || !std::isfinite(t.b) || !std::isfinite(t.c)) {
        fail("table row " + std::to_string(r + 1) + " has a non-finite coefficient");
      }
    }
    if (!std::isfinite(eps) || eps < 0.0) fail("eps = " + std::to_string(eps) + " must be finite and >= 0");
    if (!std::isfinite(safety) || safety < 0.0) fail("safety = " + std::to_string(safety) + " must be finite and >= 0");
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
