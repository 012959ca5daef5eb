// SPDX-License-Identifier: Apache-2.0
//
// The stages of an update step, each a small function over the backend concept, shared by the rules:
//
//   gradient → momentum → (Nesterov direction) → (sign) → orthogonalize → (second moment / adaptive
//   scale) → shape or RMS scaling → weight decay and update
//
// Scalars computed from the data (norms, adaptive factors) stay in backend memory as doubles; host
// constants (β, η, bias corrections from the host-side step count) travel inside the functors.
#pragma once

#include <math.h>  // ::sqrt for device code

#include <optional>
#include <type_traits>
#include <utility>

#include "orthopt/backend.hpp"
#include "orthopt/newton_schulz.hpp"
#include "orthopt/polar.hpp"
#include "orthopt/rules/options.hpp"
#include "orthopt/view.hpp"

namespace orthopt::stages {

namespace fn {
/// m ← μm + (1−μ)g  (ema)  or  m ← μm + g  (classical); constants and arithmetic in compute_t<T>
template <class T>
struct momentum_update {
  compute_t<T> mu, g_weight;
  ORTHOPT_HD T operator()(T g, T m) const {
    return static_cast<T>(mu * detail::widen(m) + g_weight * detail::widen(g));
  }
};
/// u ← (1−μ)g + μm  (ema)  or  u ← g + μm  (classical): the Nesterov direction
template <class T>
struct nesterov_mix {
  compute_t<T> mu, g_weight;
  ORTHOPT_HD T operator()(T g, T m) const {
    return static_cast<T>(g_weight * detail::widen(g) + mu * detail::widen(m));
  }
};
/// v ← βv + (1−β)x²
template <class T>
struct square_average {
  compute_t<T> beta;
  ORTHOPT_HD T operator()(T x, T v) const {
    using C = compute_t<T>;
    const C cx = detail::widen(x);
    return static_cast<T>(beta * detail::widen(v) + (C(1) - beta) * cx * cx);
  }
};
/// √|x| in the compute type, for a second moment (a sum of squares: never negative, and −0 only as +0 is).
/// Float's own square root for float: correctly rounded, so equal to the double square root rounded to
/// float, without widening every entry to double. The magnitude lets the compiler see that the root never
/// sets errno, so the loop around it vectorizes (a C math library's sqrt of a negative number must).
template <class C>
ORTHOPT_HD C root(C x) {
  if constexpr (std::is_same_v<C, float>) {
    return ::sqrtf(::fabsf(x));
  } else {
    return static_cast<C>(::sqrt(::fabs(static_cast<double>(x))));
  }
}
/// out ← c·x / (√(v·s) + ε)
template <class T>
struct divide_by_root {
  compute_t<T> c, s, eps;
  ORTHOPT_HD T operator()(T x, T v) const {
    return static_cast<T>(c * detail::widen(x) / (root(detail::widen(v) * s) + eps));
  }
};
/// w·decay − step·o in double, rounded to T: the last stage of every update.
template <class T>
ORTHOPT_HD T decayed_step(T w, T o, scalar_t decay, scalar_t step) {
  return static_cast<T>(static_cast<scalar_t>(w) * decay - step * static_cast<scalar_t>(o));
}
/// The Nesterov momentum step in one pass: m ← μm + w·g, u ← w·g + μm (the new m), each rounded to T as
/// momentum_update and nesterov_mix round them.
template <class T>
struct momentum_and_nesterov {
  compute_t<T> mu, g_weight;
  ORTHOPT_HD void operator()(const T& g, T& m, T& u) const {
    m = momentum_update<T>{mu, g_weight}(g, m);
    u = nesterov_mix<T>{mu, g_weight}(g, m);
  }
};
/// AdaMuon's direction in one pass: m ← μm + w·g, then u ← sign(d) (or u ← d with the sign map off), d the
/// Nesterov mix w·g + μm (of the new m) or m itself; each value rounded to T as momentum_update,
/// nesterov_mix and functors::sign round it. The choices are template parameters, so that the loop holds
/// no branch on them.
template <class T, bool Nesterov, bool Sign>
struct momentum_and_sign {
  compute_t<T> mu, g_weight;
  ORTHOPT_HD void operator()(const T& g, T& m, T& u) const {
    m = momentum_update<T>{mu, g_weight}(g, m);
    T d = m;
    if constexpr (Nesterov) d = nesterov_mix<T>{mu, g_weight}(g, m);
    if constexpr (Sign) d = functors::sign{}(d);
    u = d;
  }
};
/// v ← βv + (1−β)o², then o ← c·o / (√(v·s) + ε) with the new v: a second moment and its division in one
/// pass, each rounded to T as square_average and divide_by_root round it.
template <class T>
struct square_average_and_divide {
  square_average<T> second;
  divide_by_root<T> direction;
  ORTHOPT_HD void operator()(T& o, T& v) const {
    v = second(o, v);
    o = direction(o, v);
  }
};
/// An AdamW step in one pass over g, m, v and w: the moments, the normalized direction and the decayed
/// update, each rounded to T exactly where the separate stages round it, so the result is theirs bit
/// for bit (decay and step as doubles, as decay_and_step takes them).
template <class T>
struct adamw_entry {
  momentum_update<T> first;
  square_average<T> second;
  divide_by_root<T> direction;
  double decay, step;
  ORTHOPT_HD void operator()(const T& g, T& m, T& v, T& w) const {
    m = first(g, m);
    v = second(g, v);
    w = decayed_step(w, direction(m, v), decay, step);
  }
};
/// w ← w·decay − step·o, decay and step doubles in backend memory
struct decay_and_step {
  const scalar_t* decay;
  const scalar_t* step;
  template <class T>
  ORTHOPT_HD T operator()(T o, T w) const {
    return decayed_step(w, o, *decay, *step);
  }
};
/// w ← w − o
struct subtract {
  template <class T>
  ORTHOPT_HD T operator()(T o, T w) const {
    return static_cast<T>(detail::widen(w) - detail::widen(o));
  }
};
/// Writes two host constants into backend memory.
struct set_pair {
  scalar_t* out;
  double first, second;
  ORTHOPT_HD void operator()() const {
    out[0] = first;
    out[1] = second;
  }
};
}  // namespace fn

/// Momentum: M ← μM + (1−μ)G (ema) or M ← μM + G (classical).
template <class T, class Backend>
void accumulate_momentum(Backend& be, momentum_kind kind, double mu, const_matrix_view<T> G, matrix_view<T> M) {
  using C = compute_t<T>;
  const C g_weight = kind == momentum_kind::ema ? static_cast<C>(1.0 - mu) : C(1);
  transform(be, G, M.as_const(), M, fn::momentum_update<T>{static_cast<C>(mu), g_weight});
}

/// The Nesterov direction: U ← (1−μ)G + μM (ema) or U ← G + μM (classical).
template <class T, class Backend>
void nesterov_direction(Backend& be, momentum_kind kind, double mu, const_matrix_view<T> G, const_matrix_view<T> M,
                        matrix_view<T> U) {
  using C = compute_t<T>;
  const C g_weight = kind == momentum_kind::ema ? static_cast<C>(1.0 - mu) : C(1);
  transform(be, G, M, U, fn::nesterov_mix<T>{static_cast<C>(mu), g_weight});
}

/// Momentum, then the direction the polar operator sees: the Nesterov mix (written to `scratch`) or M.
/// With Nesterov, one pass writes both (the same values as accumulate_momentum, then nesterov_direction).
template <class T, class Backend>
matrix_view<T> momentum_direction(Backend& be, momentum_kind kind, double mu, bool nesterov, const_matrix_view<T> G,
                                  matrix_view<T> M, matrix_view<T> scratch) {
  if (!nesterov) {
    accumulate_momentum(be, kind, mu, G, M);
    return M;
  }
  using C = compute_t<T>;
  const C g_weight = kind == momentum_kind::ema ? static_cast<C>(1.0 - mu) : C(1);
  for_each_entry(be, fn::momentum_and_nesterov<T>{static_cast<C>(mu), g_weight}, G, M, scratch);
  return scratch;
}

/// Momentum and the direction AdaMuon orthogonalizes, in one pass over G, M and U: M ← μM + w·G (w = 1−μ
/// for ema, 1 for classical), then U ← sign(D) with D the Nesterov mix w·G + μM or M itself; with the sign
/// map off (arXiv v1), U ← D. The values accumulate_momentum, nesterov_direction and sign_map give in
/// up to three passes.
template <class T, class Backend>
void momentum_sign_direction(Backend& be, momentum_kind kind, double mu, bool nesterov, bool sign,
                             const_matrix_view<T> G, matrix_view<T> M, matrix_view<T> U) {
  using C = compute_t<T>;
  const C m = static_cast<C>(mu), g_weight = kind == momentum_kind::ema ? static_cast<C>(1.0 - mu) : C(1);
  if (nesterov && sign) for_each_entry(be, fn::momentum_and_sign<T, true, true>{m, g_weight}, G, M, U);
  else if (nesterov) for_each_entry(be, fn::momentum_and_sign<T, true, false>{m, g_weight}, G, M, U);
  else if (sign) for_each_entry(be, fn::momentum_and_sign<T, false, true>{m, g_weight}, G, M, U);
  else for_each_entry(be, fn::momentum_and_sign<T, false, false>{m, g_weight}, G, M, U);
}

/// The sign map of AdaMuon (Theorem 1): U ← sign(X), sign(0) = 0, in one pass; with the map off
/// (arXiv v1), U ← X. X may be U itself.
template <class T, class Backend>
void sign_map(Backend& be, bool enabled, const_matrix_view<T> X, matrix_view<T> U) {
  if (enabled) {
    transform(be, X, U, functors::sign{});
  } else if (X.data != U.data || X.row_stride != U.row_stride || X.col_stride != U.col_stride) {
    transform(be, X, U, functors::identity{});
  }
}

/// V ← βV + (1−β)·X⊙X
template <class T, class Backend>
void accumulate_square(Backend& be, double beta, const_matrix_view<T> X, matrix_view<T> V) {
  transform(be, X, V.as_const(), V, fn::square_average<T>{static_cast<compute_t<T>>(beta)});
}

/// Out ← c·X ⊘ (√(V·s) + ε): the adaptive normalization (s undoes a bias in V, c in X).
template <class T, class Backend>
void divide_by_root_second_moment(Backend& be, const_matrix_view<T> X, const_matrix_view<T> V, double c, double s,
                                  double eps, matrix_view<T> out) {
  transform(be, X, V, out, fn::divide_by_root<T>{static_cast<compute_t<T>>(c), static_cast<compute_t<T>>(s),
                                                         static_cast<compute_t<T>>(eps)});
}

/// V ← βV + (1−β)·X⊙X, then X ← c·X ⊘ (√(V·s) + ε) with the new V, in one pass: the values
/// accumulate_square and divide_by_root_second_moment (writing X) give in two.
template <class T, class Backend>
void accumulate_square_and_divide(Backend& be, double beta, double c, double s, double eps, matrix_view<T> X,
                                  matrix_view<T> V) {
  using C = compute_t<T>;
  const fn::square_average_and_divide<T> f{{static_cast<C>(beta)}, {static_cast<C>(c), static_cast<C>(s), static_cast<C>(eps)}};
  for_each_entry(be, f, X, V);
}

/// One AdamW step in one pass: M ← β1·M + (1−β1)·G, V ← β2·V + (1−β2)·G⊙G, then
/// W ← W·decay − step·(c·M ⊘ (√(V·s) + ε)); the values accumulate_momentum, accumulate_square,
/// divide_by_root_second_moment and decay_and_update give in four passes, with decay and step host
/// constants.
template <class T, class Backend>
void adamw_update(Backend& be, double beta1, double beta2, double c, double s, double eps, double decay, double step,
                  const_matrix_view<T> G, matrix_view<T> M, matrix_view<T> V, matrix_view<T> W) {
  using C = compute_t<T>;
  const fn::adamw_entry<T> f{{static_cast<C>(beta1), static_cast<C>(1.0 - beta1)},
                             {static_cast<C>(beta2)},
                             {static_cast<C>(c), static_cast<C>(s), static_cast<C>(eps)},
                             decay,
                             step};
  for_each_entry(be, f, G, M, V, W);
}

/// W ← W·decay − step·O with decay = scalars[0], step = scalars[1] in backend memory.
template <class T, class Backend>
void decay_and_update(Backend& be, matrix_view<T> W, const_matrix_view<T> O, const scalar_t* scalars) {
  transform(be, O, W.as_const(), W, fn::decay_and_step{scalars, scalars + 1});
}

/// Per column j: W[:,j] ← W[:,j]·decay[j] − step[j]·O[:,j]  (O is overwritten with step[j]·O[:,j]).
template <class T, class Backend>
void decay_and_update_columns(Backend& be, matrix_view<T> W, matrix_view<T> O, const scalar_t* decay,
                              const scalar_t* step) {
  scale_columns(be, decay, W);
  scale_columns(be, step, O);
  transform(be, O.as_const(), W.as_const(), W, fn::subtract{});
}

/// decay = scalars[0], step = scalars[1] from host constants.
template <class Backend>
void set_decay_and_step(Backend& be, scalar_t* scalars, double decay, double step) {
  run_scalar(be, fn::set_pair{scalars, decay, step});
}

/// The polar operator a rule uses, planned for one shape: Newton–Schulz or the exact polar factor.
template <class T, class Backend>
class orthogonalizer_plan {
 public:
  /// `batch_capacity`: how many matrices a batched call orthogonalizes together (Newton–Schulz only;
  /// the exact polar factor is computed matrix by matrix).
  orthogonalizer_plan(index_t rows, index_t cols, const orthogonalizer& o, const Backend& be, index_t batch_capacity = 1) {
    if (o.exact) {
      polar_.emplace(rows, cols, be, /*check_finite=*/false);
    } else {
      ns_config cfg = o.ns;
      // The step's value check (step_limits, orthopt/rules/param_state.hpp) has bounded the gradient and the
      // state so that the direction is finite; with the rule's check_finite off nothing is checked and a
      // NaN or Inf propagates to the parameter.
      cfg.check_finite = false;
      ns_.emplace(rows, cols, std::move(cfg), be, batch_capacity);
    }
  }
  /// O ← polar(U) (approximately, with Newton–Schulz).
  void operator()(const_matrix_view<T> U, matrix_view<T> O) {
    if (ns_) (*ns_)(U, O);
    else (*polar_)(U, O);
  }
  /// O[k] ← polar(U[k]) for a batch (one batched Newton–Schulz call).
  void operator()(batch_view<const T> U, batch_view<T> O) {
    if (ns_) {
      (*ns_)(U, O);
    } else {
      for (index_t k = 0; k < U.count; ++k) (*polar_)(U[k], O[k]);
    }
  }
  /// Change the Newton–Schulz step count (the adaptive budget uses this); no effect on exact polar.
  void set_steps(int steps) {
    if (ns_) ns_->set_steps(steps);
  }
  /// The Newton–Schulz plan, or nullptr when the operator is the exact polar factor.
  [[nodiscard]] newton_schulz<T, Backend>* ns() noexcept { return ns_ ? &*ns_ : nullptr; }
  [[nodiscard]] const newton_schulz<T, Backend>* ns() const noexcept { return ns_ ? &*ns_ : nullptr; }

 private:
  std::optional<newton_schulz<T, Backend>> ns_;
  std::optional<exact_polar<T, Backend>> polar_;
};

}  // namespace orthopt::stages
