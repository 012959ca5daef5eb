// SPDX-License-Identifier: Apache-2.0
//
// An optimizer over many named parameters: groups, each with one update rule (Muon, AdaMuon, NAMO,
// NAMO-D or AdamW), its hyper-parameters and a learning-rate schedule; one state per parameter, made
// from the parameter's shape when it is registered; and a routing helper that sends each parameter to a
// group the way every Muon-family codebase does (Muon's and Moonlight's: matrices of hidden layers to
// the Muon-family rule, embeddings, heads and vectors to AdamW).
//
//   using opt_t = orthopt::optimizer<float, orthopt::eigen_backend>;
//   opt_t opt;
//   auto hidden = opt.add_group("hidden", orthopt::muon<float, orthopt::eigen_backend>(
//                                             orthopt::muon_presets::moonlight()),
//                               orthopt::warmup_stable_decay(2000, 100000, 0.2));
//   auto rest = opt.add_group("adamw", orthopt::adamw<float, orthopt::eigen_backend>(), ...);
//   orthopt::param_router router(hidden, rest);                // embeddings, head, vectors → AdamW
//   opt.add_param("blocks.0.mlp.fc.weight", orthopt::make_view(W_fc), router);
//   opt.add_param("blocks.0.attn.qkv.weight", orthopt::split_rows(orthopt::make_view(W_qkv), 3), router);
//   opt.add_param("conv1.weight", orthopt::tensor_as_matrix(conv_ptr, {64, 3, 7, 7}), router);
//   opt.add_param("experts.w1", orthopt::tensor_as_batch(experts_ptr, {8, 512, 128}), router);
//   ...
//   opt.step(gradients);   // a span of batch_view<const T>, one per parameter in registration order
//
// Parameters are the host's memory: the optimizer keeps non-owning views of them, which must stay valid
// (and keep their addresses) for as long as the optimizer steps them. Gradients are handed over at each
// step as views, in registration order (`step(span)`), or bound once to the parameter when the host's
// gradient buffers keep their addresses (`bind_gradient`, then `step()`). `gradient_like(p, ptr)` builds
// a gradient view with the parameter's own shape, batch and strides at another address, so a host whose
// gradients mirror its parameters' layout (PyTorch's .grad, for instance) needs only a pointer.
//
// A step is all-or-nothing: every gradient (shape, usable view, NaN/Inf unless the group's rule has
// check_finite = false), every group's scheduled learning rate and hyper-parameters are checked before
// the first parameter is written; on any failure step() throws (shape_error / value_error naming the
// parameter) and leaves every parameter, every state and the step count as they were. After the first
// step, step() allocates nothing: all states and scratch exist from registration.
//
// Hyper-parameters may change between steps without touching the state: set `group(g).lr` (the base
// learning rate), `group(g).schedule`, or `group(g).options<muon_options>().momentum` and the like. The
// `lr` inside a rule's options is written by every step (base lr × schedule); set the group's lr
// instead. The orthogonalizer settings (`options().ortho`) are planned into each state at registration;
// changing them later has no effect on parameters already registered.
//
// Newton–Schulz iteration counts: per parameter (`set_ns_steps(param_id, n)`, `ns_steps(p)`) or per group
// (`set_ns_steps(group_id, n)`), stopping inside a call at a residual tolerance
// (`set_ns_stop_tolerance`, CPU backends), or chosen by the adaptive budget (`set_ns_budget`,
// orthopt/ns_budget.hpp: observe how many iterations each matrix needs, then commit counts within a
// total budget; its phase and counts are saved in checkpoints).
//
// Thread safety: an optimizer is not synchronized. Its mutating members (add_group, add_param,
// bind_gradient, step, set_steps_taken, group(...) writes, checkpoint loading) must not run concurrently
// with any other member call on the same optimizer. Const members may run concurrently with each other.
// Two optimizers may step on two threads at once only if their backend handles share no scratch: with
// the Eigen backend, give each optimizer's rules their own `eigen_backend` object, not copies of one
// (copies share packing buffers). Results are deterministic for a given backend thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/name_pattern.hpp"
#include "orthopt/ns_budget.hpp"
#include "orthopt/rules/options.hpp"
#include "orthopt/rules/rules.hpp"
#include "orthopt/schedule.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

// ---------------------------------------------------------------------------------------------------
// Views of N-D parameters
// ---------------------------------------------------------------------------------------------------

namespace detail {
inline index_t product_of_dims(std::span<const index_t> dims, const char* who) {
  index_t n = 1;
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 1) {
      throw shape_error(std::string("orthopt::") + who + ": dimension " + std::to_string(i) + " is " +
                        std::to_string(dims[i]) + "; every dimension must be at least 1");
    }
    if (__builtin_mul_overflow(n, dims[i], &n)) {
      throw shape_error(std::string("orthopt::") + who + ": the product of the dimensions overflows at dimension " +
                        std::to_string(i) + " (" + std::to_string(dims[i]) + ")");
    }
  }
  return n;
}
}  // namespace detail

/// A dense row-major N-D tensor [d0, d1, …, dk] as the d0 × (d1⋯dk) matrix Muon-family codebases
/// orthogonalize: a conv filter [out, in, kh, kw] becomes out × (in·kh·kw). A 1-D tensor [n] is 1×n.
template <class T>
matrix_view<T> tensor_as_matrix(T* data, std::span<const index_t> dims) {
  if (dims.empty()) throw shape_error("orthopt::tensor_as_matrix: the dimension list is empty");
  const index_t total = detail::product_of_dims(dims, "tensor_as_matrix");
  if (dims.size() == 1) return row_major_view(data, 1, total);
  return row_major_view(data, dims[0], total / dims[0]);
}
template <class T>
matrix_view<T> tensor_as_matrix(T* data, std::initializer_list<index_t> dims) {
  return tensor_as_matrix(data, std::span<const index_t>(dims.begin(), dims.size()));
}

/// A dense row-major tensor [b0, …, bj, M, N] (at least 3-D) as a batch of b0⋯bj matrices M×N: stacked
/// MoE experts [E, M, N] are a batch of E matrices, each orthogonalized on its own.
template <class T>
batch_view<T> tensor_as_batch(T* data, std::span<const index_t> dims) {
  if (dims.size() < 3) {
    throw shape_error("orthopt::tensor_as_batch: a batch needs at least 3 dimensions [batch…, rows, cols], got " +
                      std::to_string(dims.size()));
  }
  const index_t total = detail::product_of_dims(dims, "tensor_as_batch");
  const index_t rows = dims[dims.size() - 2], cols = dims[dims.size() - 1];
  return row_major_batch(data, total / (rows * cols), rows, cols);
}
template <class T>
batch_view<T> tensor_as_batch(T* data, std::initializer_list<index_t> dims) {
  return tensor_as_batch(data, std::span<const index_t>(dims.begin(), dims.size()));
}

/// A matrix split into k blocks of rows/k consecutive rows, as a batch: a fused QKV projection
/// [3·d, d] split in 3, or per-head blocks, each orthogonalized alone (microsoft/dion's split). Works for
/// either storage order (the batch stride is rows/k row strides). Throws shape_error unless k ≥ 1
/// divides rows.
template <class T>
batch_view<T> split_rows(matrix_view<T> m, index_t k) {
  if (k < 1 || m.rows % k != 0) {
    throw shape_error("orthopt::split_rows: cannot split " + shape_string(m) + " into " + std::to_string(k) +
                      " row blocks; the row count must be a multiple of the block count");
  }
  const index_t block_rows = m.rows / k;
  return {m.block(0, 0, block_rows, m.cols), k, block_rows * m.row_stride};
}

/// One matrix as a batch of one (what step() takes for every parameter).
template <class T>
constexpr batch_view<T> as_batch(matrix_view<T> m) noexcept {
  return {m, 1, 0};
}

namespace detail {
/// The registration checks of a parameter view (optimizer and distributed_optimizer): a batch of at
/// least one matrix, usable views, no element addressed twice, and no memory shared with a registered
/// parameter. `for_each_registered(visit)` calls visit(name, batch_view) for each registered parameter.
template <class T, class ForEachRegistered>
void check_new_param(const char* who, const std::string& name, batch_view<T> param,
                     ForEachRegistered for_each_registered) {
  if (param.count < 1) {
    throw shape_error(std::string(who) + ": parameter '" + name + "' is a batch of " + std::to_string(param.count) +
                      " matrices; at least 1 is needed");
  }
  if (param.count > 1 && param.batch_stride == 0) {
    throw shape_error(std::string(who) + ": parameter '" + name +
                      "' is a batch whose matrices all share one address (batch stride 0)");
  }
  const std::string what = "parameter '" + name + "'";
  check_view(param.first, who, what.c_str());
  for (index_t k = 1; k < param.count; ++k) check_view(param[k], who, what.c_str());
  // Memory shared with itself or with a registered parameter would be updated twice per step (tied
  // weights: register the shared tensor once), or read after another update wrote it.
  for (index_t k = 0; k < param.count; ++k) {
    if (view_overlaps_itself(param[k])) {
      throw shape_error(std::string(who) + ": " + what + " [" + describe_view(param[k]) + "] addresses some elements twice");
    }
  }
  if (const auto [j, k] = overlapping_batch_items(param); j >= 0) {
    throw shape_error(std::string(who) + ": " + what + ": batch items " + std::to_string(j) + " and " + std::to_string(k) +
                      " share memory [" + describe_view(param[j]) + "], [" + describe_view(param[k]) + "]");
  }
  for_each_registered([&](const std::string& other_name, const batch_view<T>& other) {
    if (const auto [j, k] = overlapping_items(param, other); j >= 0) {
      throw shape_error(std::string(who) + ": " + what + " [" + describe_view(param[j]) + "] shares memory with parameter '" +
                        other_name + "' [" + describe_view(other[k]) +
                        "]; each step would update it twice (for tied weights, register the shared tensor once)");
    }
  });
}

/// "count x rows x cols" (or "rows x cols" for one matrix), for messages.
template <class U>
std::string batch_shape(const batch_view<U>& b) {
  return (b.count == 1 ? std::string() : std::to_string(b.count) + " x ") + shape_string(b.rows(), b.cols());
}

/// A view at `data` with the parameter's shape, batch layout and strides (gradient_like).
template <class T>
batch_view<const T> view_like(const batch_view<T>& param, const T* data) {
  return {matrix_view<const T>(data, param.first.rows, param.first.cols, param.first.row_stride, param.first.col_stride),
          param.count, param.batch_stride};
}

/// The checks of a step's gradient that read no values (optimizer and distributed_optimizer): the
/// parameter's shape, usable views, and no memory shared with any parameter (the step would read it after
/// an update wrote it; two comparisons per parameter when the memory is separate, an exact check where
/// ranges meet). `for_each_registered(visit)` calls visit(name, batch_view) for every parameter.
template <class T, class ForEachRegistered>
void check_gradient_view(const char* who, const std::string& name, const batch_view<const T>& grad,
                         const batch_view<T>& param, ForEachRegistered for_each_registered) {
  if (grad.count != param.count || grad.rows() != param.rows() || grad.cols() != param.cols()) {
    throw shape_error(std::string(who) + ": the gradient of '" + name + "' is " + batch_shape(grad) +
                      " but the parameter is " + batch_shape(param) + "; nothing was changed");
  }
  for (index_t k = 0; k < grad.count; ++k) {
    if (!view_is_usable(grad[k])) {  // the message is built only then: a step must not allocate
      const std::string what = "gradient of '" + name + "'";
      check_view(grad[k], who, what.c_str());
    }
  }
  for_each_registered([&](const std::string& other_name, const batch_view<T>& other) {
    if (const auto [j, k] = overlapping_items(grad, other); j >= 0) {
      throw shape_error(std::string(who) + ": the gradient of '" + name + "' [" + describe_view(grad[j]) +
                        "] shares memory with parameter '" + other_name + "' [" + describe_view(other[k]) +
                        "]; nothing was changed");
    }
  });
}

/// Whether a rule orthogonalizes by Newton–Schulz (not AdamW, not the exact polar factor).
template <class Rule>
bool rule_runs_newton_schulz(const Rule& rule) {
  return std::visit(
      [](const auto& r) {
        using R = std::decay_t<decltype(r)>;
        if constexpr (R::kind == rule_kind::adamw) return false;
        else return !r.options().ortho.exact;
      },
      rule);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------------

/// Names a group of an optimizer (its index, in creation order).
struct group_id {
  std::size_t index = 0;
  friend bool operator==(group_id, group_id) = default;
};
/// Names a parameter of an optimizer (its index, in registration order).
struct param_id {
  std::size_t index = 0;
  friend bool operator==(param_id, param_id) = default;
};

/// One of the five rules.
template <class T, class Backend>
using any_rule = std::variant<muon<T, Backend>, adamuon<T, Backend>, namo<T, Backend>, namo_d<T, Backend>,
                              adamw<T, Backend>>;

/// A learning-rate schedule: the multiplier of the base lr at a 0-based step (orthopt/schedule.hpp).
/// Called once per group per step; it must not allocate if step() is to allocate nothing.
using lr_schedule = std::function<double(std::int64_t)>;

/// A group: a rule with its hyper-parameters, a base learning rate and a schedule. Each step uses
/// lr = lr × schedule(steps_taken) for every parameter of the group.
template <class T, class Backend>
struct param_group {
  std::string name;
  any_rule<T, Backend> rule;
  double lr = 0.0;  ///< the base learning rate (taken from the rule's options when the group is made)
  lr_schedule schedule = constant_schedule{};

  [[nodiscard]] rule_kind kind() const {
    return std::visit([](const auto& r) { return std::decay_t<decltype(r)>::kind; }, rule);
  }
  /// The rule's options (muon_options, adamuon_options, namo_options for NAMO and NAMO-D,
  /// adamw_options); value_error when the rule takes other options. Their `lr` is overwritten by step().
  template <class Options>
  [[nodiscard]] Options& options() {
    return std::visit(
        [this](auto& r) -> Options& {
          if constexpr (std::is_same_v<typename std::decay_t<decltype(r)>::options_type, Options>) {
            return r.options();
          } else {
            throw value_error("orthopt::param_group '" + name + "': the rule is " +
                              rule_name(std::decay_t<decltype(r)>::kind) + ", which takes other options");
          }
        },
        rule);
  }
};

// ---------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------

/// Why a parameter went to its group.
enum class route_reason {
  explicit_group,  ///< registered with a group directly, no router
  name_override,   ///< the router's per-name override
  vector_shape,    ///< rows == 1 or cols == 1 (biases, norms' gains): AdamW
  embedding_name,  ///< the name matches an embedding pattern: AdamW
  head_name,       ///< the name matches an output-head pattern: AdamW
  hidden_matrix,   ///< any other matrix (or batch of matrices): the Muon-family group
};

inline const char* route_reason_name(route_reason r) {
  switch (r) {
    case route_reason::explicit_group: return "explicit_group";
    case route_reason::name_override: return "name_override";
    case route_reason::vector_shape: return "vector_shape";
    case route_reason::embedding_name: return "embedding_name";
    case route_reason::head_name: return "head_name";
    case route_reason::hidden_matrix: return "hidden_matrix";
  }
  return "unknown";
}

/// A routing decision: the group and why, in words.
struct route_decision {
  group_id group;
  route_reason reason;
  std::string why;
};

/// The routing every Muon-family codebase applies (KellerJordan/Muon, Moonlight, AdaMuon, NAMO code):
/// 2-D hidden matrices to the Muon-family rule; vectors, embeddings and the output head to AdamW.
/// Decision order: a per-name override, then vector shape, then embedding names, then head names, else
/// hidden matrix. Embeddings and heads are found by name because their shapes look like any matrix.
struct param_router {
  group_id matrix_group;
  group_id adamw_group;
  /// Defaults: any name containing "embed" (embed_tokens, tok_embeddings, word_embeddings), and the
  /// GPT-2 names "wte" / "wpe" as whole components.
  std::vector<name_pattern> embedding_patterns{{"embed", false}, {"wte", true}, {"wpe", true}};
  /// Defaults: any name containing "lm_head", and "head" as a whole component (timm's "head.weight"),
  /// never "head" inside "multihead".
  std::vector<name_pattern> head_patterns{{"lm_head", false}, {"head", true}};
  /// Exact parameter name → group, checked first.
  std::vector<std::pair<std::string, group_id>> overrides;

  param_router(group_id matrix, group_id adamw) : matrix_group(matrix), adamw_group(adamw) {}

  /// Send the parameter named exactly `name` to `g`, whatever its shape or name.
  param_router& override_param(std::string name, group_id g) {
    for (auto& o : overrides) {
      if (o.first == name) {
        o.second = g;
        return *this;
      }
    }
    overrides.emplace_back(std::move(name), g);
    return *this;
  }

  /// The group for a parameter of this name whose matrices are rows×cols.
  [[nodiscard]] route_decision decide(std::string_view name, index_t rows, index_t cols) const {
    for (const auto& o : overrides) {
      if (o.first == name) return {o.second, route_reason::name_override, "override for the name '" + o.first + "'"};
    }
    if (rows == 1 || cols == 1) {
      return {adamw_group, route_reason::vector_shape, "shape " + shape_string(rows, cols) + " is a vector"};
    }
    for (const auto& p : embedding_patterns) {
      if (p.matches(name)) return {adamw_group, route_reason::embedding_name, "embedding: " + p.describe()};
    }
    for (const auto& p : head_patterns) {
      if (p.matches(name)) return {adamw_group, route_reason::head_name, "output head: " + p.describe()};
    }
    return {matrix_group, route_reason::hidden_matrix, "hidden matrix " + shape_string(rows, cols)};
  }
};

/// Where a registered parameter went, for inspection (optimizer::routing()).
struct route_record {
  std::string name;
  std::string group;
  rule_kind rule;
  route_reason reason;
  std::string why;
  index_t rows, cols, count;
};

// ---------------------------------------------------------------------------------------------------
// The optimizer
// ---------------------------------------------------------------------------------------------------

template <class T, class Backend>
class distributed_optimizer;

template <class T, class Backend>
class optimizer {
 public:
  using value_type = T;
  using backend_type = Backend;
  using rule_type = any_rule<T, Backend>;
  using group_type = param_group<T, Backend>;
  using state_type = param_state<T, Backend>;
  using gradient_view = batch_view<const T>;

  optimizer() = default;
  // The groups' schedules and the parameters' views are plain data, but the states own backend memory:
  // an optimizer moves, it does not copy.
  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;
  optimizer(optimizer&&) noexcept = default;
  optimizer& operator=(optimizer&&) noexcept = default;

  // ---- Setup (allocates) ----------------------------------------------------------------------

  /// A new group. Its base learning rate is the rule's options().lr; its schedule defaults to constant.
  group_id add_group(std::string name, rule_type rule, lr_schedule schedule = constant_schedule{}) {
    if (name.empty()) throw value_error("orthopt::optimizer::add_group: the group name is empty");
    for (const auto& g : groups_) {
      if (g.name == name) throw value_error("orthopt::optimizer::add_group: a group named '" + name + "' exists already");
    }
    if (!schedule) throw value_error("orthopt::optimizer::add_group: group '" + name + "' has an empty schedule");
    const double base_lr = std::visit([](auto& r) { return r.options().lr; }, rule);
    // Reserve first, so a failed allocation leaves the three per-group vectors the same length.
    groups_.reserve(groups_.size() + 1);
    saved_lr_.reserve(groups_.size() + 1);
    saved_check_finite_.reserve(groups_.size() + 1);
    groups_.push_back(group_type{std::move(name), std::move(rule), base_lr, std::move(schedule)});
    saved_lr_.push_back(0.0);
    saved_check_finite_.push_back(0);
    return {groups_.size() - 1};
  }

  /// Register a parameter (or a batch of same-shape matrices updated independently) with a group; its
  /// state is made now from the shape. The view must stay valid while the optimizer is used.
  param_id add_param(std::string name, group_id g, batch_view<T> param) {
    return add_param_impl(std::move(name), g, param, route_reason::explicit_group, "registered with this group");
  }
  param_id add_param(std::string name, group_id g, matrix_view<T> param) {
    return add_param(std::move(name), g, as_batch(param));
  }
  /// Register a parameter with the group `router` chooses (see param_router); routing() shows why.
  param_id add_param(std::string name, batch_view<T> param, const param_router& router) {
    check_group(router.matrix_group, "add_param (router's matrix group)");
    check_group(router.adamw_group, "add_param (router's AdamW group)");
    if (groups_[router.adamw_group.index].kind() != rule_kind::adamw) {
      throw value_error("orthopt::optimizer::add_param: the router's AdamW group '" +
                        groups_[router.adamw_group.index].name + "' runs " +
                        rule_name(groups_[router.adamw_group.index].kind()) + ", not adamw");
    }
    route_decision d = router.decide(name, param.rows(), param.cols());
    return add_param_impl(std::move(name), d.group, param, d.reason, std::move(d.why));
  }
  param_id add_param(std::string name, matrix_view<T> param, const param_router& router) {
    return add_param(std::move(name), as_batch(param), router);
  }

  /// Throws value_error naming every override of `router` that matches no registered parameter (a
  /// misspelt override would otherwise do nothing, silently).
  void check_overrides_used(const param_router& router) const {
    std::string unused;
    for (const auto& o : router.overrides) {
      if (!find_param(o.first)) unused += (unused.empty() ? "'" : ", '") + o.first + "'";
    }
    if (!unused.empty()) {
      throw value_error("orthopt::optimizer: router overrides name no registered parameter: " + unused);
    }
  }

  /// Bind the gradient step() reads for `p` (for hosts whose gradient buffers keep their addresses).
  void bind_gradient(param_id p, gradient_view grad) {
    check_param(p, "bind_gradient");
    params_[p.index].bound_gradient = grad;
  }
  void bind_gradient(param_id p, const_matrix_view<T> grad) { bind_gradient(p, as_batch(grad)); }

  /// A gradient view with the parameter's shape, batch layout and strides, at `data`.
  [[nodiscard]] gradient_view gradient_like(param_id p, const T* data) const {
    check_param(p, "gradient_like");
    return detail::view_like(params_[p.index].param, data);
  }

  // ---- Stepping (allocates nothing) ------------------------------------------------------------

  /// One step of every parameter, gradients[i] for the i-th registered parameter. All-or-nothing: see
  /// the file comment.
  void step(std::span<const gradient_view> gradients) {
    if (gradients.size() != params_.size()) {
      throw value_error("orthopt::optimizer::step: " + std::to_string(gradients.size()) + " gradients for " +
                        std::to_string(params_.size()) + " parameters; nothing was changed");
    }
    step_impl([gradients](std::size_t i) { return gradients[i]; });
  }

  /// One step with the gradients bound by bind_gradient (value_error if any parameter has none).
  void step() {
    for (const auto& p : params_) {
      if (p.bound_gradient.count == 0) {
        throw value_error("orthopt::optimizer::step: parameter '" + p.name +
                          "' has no bound gradient (bind_gradient, or pass the gradients); nothing was changed");
      }
    }
    step_impl([this](std::size_t i) { return params_[i].bound_gradient; });
  }

  // ---- Inspection and state access ------------------------------------------------------------

  /// Completed optimizer steps; the schedules see this value at the next step.
  [[nodiscard]] std::int64_t steps_taken() const noexcept { return steps_taken_; }
  /// Set the completed step count (checkpoint loading, or a restart that keeps no state).
  void set_steps_taken(std::int64_t n) {
    if (n < 0) throw value_error("orthopt::optimizer::set_steps_taken: " + std::to_string(n) + " < 0");
    steps_taken_ = n;
  }
  /// The learning rate the next step will use for group g: base lr × schedule(steps_taken()).
  [[nodiscard]] double next_lr(group_id g) const {
    check_group(g, "next_lr");
    return groups_[g.index].lr * groups_[g.index].schedule(steps_taken_);
  }

  [[nodiscard]] std::size_t group_count() const noexcept { return groups_.size(); }
  [[nodiscard]] std::size_t param_count() const noexcept { return params_.size(); }
  [[nodiscard]] group_type& group(group_id g) {
    check_group(g, "group");
    return groups_[g.index];
  }
  [[nodiscard]] const group_type& group(group_id g) const {
    check_group(g, "group");
    return groups_[g.index];
  }
  [[nodiscard]] std::optional<group_id> find_group(std::string_view name) const {
    for (std::size_t i = 0; i < groups_.size(); ++i)
      if (groups_[i].name == name) return group_id{i};
    return std::nullopt;
  }
  [[nodiscard]] std::optional<param_id> find_param(std::string_view name) const {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (params_[i].name == name) return param_id{i};
    return std::nullopt;
  }
  [[nodiscard]] const std::string& param_name(param_id p) const {
    check_param(p, "param_name");
    return params_[p.index].name;
  }
  [[nodiscard]] group_id group_of(param_id p) const {
    check_param(p, "group_of");
    return params_[p.index].group;
  }
  [[nodiscard]] batch_view<T> param_view(param_id p) const {
    check_param(p, "param_view");
    return params_[p.index].param;
  }
  /// The parameter's state: its persistent tensors (slots()) are what checkpoints save.
  [[nodiscard]] state_type& state(param_id p) {
    check_param(p, "state");
    return params_[p.index].state;
  }
  [[nodiscard]] const state_type& state(param_id p) const {
    check_param(p, "state");
    return params_[p.index].state;
  }

  /// For every parameter, in registration order: its group, rule and why it went there.
  [[nodiscard]] std::vector<route_record> routing() const {
    std::vector<route_record> out;
    out.reserve(params_.size());
    for (const auto& p : params_) {
      const group_type& g = groups_[p.group.index];
      out.push_back({p.name, g.name, g.kind(), p.reason, p.why, p.param.rows(), p.param.cols(), p.param.count});
    }
    return out;
  }
  // ---- Newton–Schulz step counts and the adaptive budget (orthopt/ns_budget.hpp) ----------------

  /// The Newton–Schulz iterations parameter p runs per step; value_error for a parameter without a
  /// Newton–Schulz plan (AdamW, or the exact polar factor).
  [[nodiscard]] int ns_steps(param_id p) const { return ns_plan_of(p, "ns_steps")->steps(); }
  /// Set parameter p's iteration count (≥ 1). Refused while an adaptive budget is set (it owns the
  /// counts: clear_ns_budget() first).
  void set_ns_steps(param_id p, int steps) {
    refuse_with_budget("set_ns_steps");
    auto* ns = ns_plan_of(p, "set_ns_steps");
    if (steps < 1) {
      throw value_error("orthopt::optimizer::set_ns_steps: steps = " + std::to_string(steps) + " for '" +
                        params_[p.index].name + "'; at least 1 is needed");
    }
    ns->set_steps(steps);
  }
  /// Set the iteration count of every parameter of group g (a group whose rule orthogonalizes by
  /// Newton–Schulz; value_error otherwise). New parameters of the group keep the rule's own count.
  void set_ns_steps(group_id g, int steps) {
    refuse_with_budget("set_ns_steps");
    const auto members = ns_members(g, "set_ns_steps");
    if (steps < 1) {
      throw value_error("orthopt::optimizer::set_ns_steps: steps = " + std::to_string(steps) + " for group '" +
                        groups_[g.index].name + "'; at least 1 is needed");
    }
    for (std::size_t i : members) params_[i].state.ns_plan()->set_steps(steps);
  }
  /// Residual-based stopping inside each call for every parameter of group g (tolerance > 0; 0 turns it
  /// off): a call stops at the first iteration whose residual ‖XXᵀ − I‖_F/√m is ≤ tolerance and never
  /// runs more than the parameter's count. It reads the residual back to the host each iteration:
  /// meant for CPU backends; on a GPU prefer a committed budget. Refused while a budget is set.
  void set_ns_stop_tolerance(group_id g, double tolerance) {
    refuse_with_budget("set_ns_stop_tolerance");
    const auto members = ns_members(g, "set_ns_stop_tolerance");
    if (!(tolerance >= 0.0) || !std::isfinite(tolerance)) {
      throw value_error("orthopt::optimizer::set_ns_stop_tolerance: tolerance = " + std::to_string(tolerance) +
                        " for group '" + groups_[g.index].name + "' must be finite and >= 0");
    }
    for (std::size_t i : members) {
      if (params_[i].state.ns_plan()->steps() > ns_max_recorded_steps && tolerance > 0.0) {
        throw value_error("orthopt::optimizer::set_ns_stop_tolerance: '" + params_[i].name + "' runs " +
                          std::to_string(params_[i].state.ns_plan()->steps()) + " iterations; stopping works up to " +
                          std::to_string(ns_max_recorded_steps));
      }
    }
    for (std::size_t i : members) params_[i].state.ns_plan()->stop_at_residual(tolerance);
  }
  /// Record the residuals r_0 … r_T of every Newton–Schulz call of group g (ns_residuals reads them).
  void record_ns_residuals(group_id g, bool on) {
    const auto members = ns_members(g, "record_ns_residuals");
    // All or nothing: a plan that cannot record refuses before any member is switched.
    if (on) {
      for (std::size_t i : members) {
        if (!params_[i].state.ns_plan()->can_record_residuals()) params_[i].state.ns_plan()->record_residuals(true);
      }
    }
    for (std::size_t i : members) params_[i].state.ns_plan()->record_residuals(on);
  }
  /// The residuals r_0 … r_T of parameter p's last Newton–Schulz call (matrix k of its last chunk),
  /// copied to the host; empty before any call that measured them. Allocates.
  [[nodiscard]] std::vector<double> ns_residuals(param_id p, index_t k = 0) {
    auto* ns = ns_plan_of(p, "ns_residuals");
    if (!ns->records_residuals() && ns->stop_tolerance() == 0.0) return {};
    if (k < 0 || k >= ns->batch_capacity()) {
      throw value_error("orthopt::optimizer::ns_residuals: matrix " + std::to_string(k) + " of '" +
                        params_[p.index].name + "', whose calls hold " + std::to_string(ns->batch_capacity()));
    }
    return ns->residuals(k);
  }

  /// Run the adaptive budget (orthopt/ns_budget.hpp) over every registered parameter with a
  /// Newton–Schulz plan, from the next step. Register all parameters first: add_param is refused while a
  /// budget is set. Replaces a budget already set (its counts are discarded). Throws value_error for
  /// invalid options, when no parameter runs Newton–Schulz, or when min_steps alone exceeds the budget;
  /// the optimizer is then unchanged. Allocates (setup); the steps after it do not, except for what
  /// on_commit does.
  void set_ns_budget(ns_budget_options options) {
    options.validate();
    budget_state b;
    b.options = std::move(options);
    build_budget(b);
    if (budget_) clear_ns_budget();
    budget_ = std::move(b);
  }
  /// Remove the budget: every parameter it ran goes back to its configured count, observation stops.
  void clear_ns_budget() {
    if (!budget_) return;
    for (const auto& part : budget_->participants) {
      auto* ns = params_[part.param].state.ns_plan();
      ns->stop_observing();
      ns->set_steps(params_[part.param].state.configured_ns_steps());
    }
    budget_.reset();
  }
  [[nodiscard]] bool has_ns_budget() const noexcept { return budget_.has_value(); }
  [[nodiscard]] ns_budget_phase ns_budget_state() const noexcept {
    return budget_ ? budget_->phase : ns_budget_phase::none;
  }
  /// The optimizer step at which the current phase began (a window's start, or the last commit).
  [[nodiscard]] std::int64_t ns_budget_phase_start() const noexcept { return budget_ ? budget_->phase_start : 0; }
  /// The last commit's report, or nullptr before the first commit.
  [[nodiscard]] const ns_budget_report* ns_budget_last_report() const noexcept {
    return budget_ && budget_->has_report ? &budget_->report : nullptr;
  }
  /// Put the budget in `phase`, begun at step `start` (checkpoint loading; the parameters' counts and
  /// accumulators are restored by the loader). No effect without a budget or for phase none.
  void restore_ns_budget_phase(ns_budget_phase phase, std::int64_t start) {
    if (!budget_ || phase == ns_budget_phase::none) return;
    for (const auto& part : budget_->participants) {
      auto* ns = params_[part.param].state.ns_plan();
      if (phase == ns_budget_phase::observing) ns->observe(part.target);
      else ns->stop_observing();
    }
    budget_->phase = phase;
    budget_->phase_start = start;
  }

  /// routing() as text, one line per parameter: "name  shape  -> group (rule): why".
  [[nodiscard]] std::string routing_table() const {
    std::string s;
    for (const auto& r : routing()) {
      s += r.name + "  " + (r.count > 1 ? std::to_string(r.count) + "x" : std::string()) + shape_string(r.rows, r.cols) +
           "  -> " + r.group + " (" + rule_name(r.rule) + "): " + r.why + "\n";
    }
    return s;
  }

 private:
  struct param_entry {
    std::string name;
    group_id group;
    batch_view<T> param;
    state_type state;
    gradient_view bound_gradient{};
    route_reason reason;
    std::string why;
  };

  struct budget_participant {
    std::size_t param;
    std::size_t role;
    int observe_steps;
    double target;
  };
  struct budget_state {
    ns_budget_options options;
    ns_budget_phase phase = ns_budget_phase::waiting;
    std::int64_t phase_start = 0;
    std::vector<budget_participant> participants;
    std::vector<double> role_need, role_calls;
    std::vector<index_t> role_matrices;
    std::vector<int> role_max, role_committed;
    ns_budget_report report;  // sized at setup; a commit fills in numbers only
    bool has_report = false;
  };

  newton_schulz<T, Backend>* ns_plan_of(param_id p, const char* who) {
    check_param(p, who);
    auto* ns = params_[p.index].state.ns_plan();
    if (ns == nullptr) {
      throw value_error(std::string("orthopt::optimizer::") + who + ": parameter '" + params_[p.index].name +
                        "' runs " + rule_name(params_[p.index].state.kind()) +
                        " without a Newton–Schulz plan (AdamW, or the exact polar factor)");
    }
    return ns;
  }
  const newton_schulz<T, Backend>* ns_plan_of(param_id p, const char* who) const {
    return const_cast<optimizer*>(this)->ns_plan_of(p, who);
  }
  /// The parameters of group g; value_error if its rule has no Newton–Schulz plan.
  std::vector<std::size_t> ns_members(group_id g, const char* who) {
    check_group(g, who);
    if (!detail::rule_runs_newton_schulz(groups_[g.index].rule)) {
      throw value_error(std::string("orthopt::optimizer::") + who + ": group '" + groups_[g.index].name + "' runs " +
                        rule_name(groups_[g.index].kind()) + " without Newton–Schulz");
    }
    std::vector<std::size_t> members;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (params_[i].group == g && params_[i].state.ns_plan() != nullptr) members.push_back(i);
    }
    return members;
  }
  void refuse_with_budget(const char* who) const {
    if (budget_) {
      throw value_error(std::string("orthopt::optimizer::") + who +
                        ": an adaptive Newton–Schulz budget is set and owns the step counts; clear_ns_budget() first");
    }
  }

  /// Participants, roles, targets and the report's fixed fields (setup; throws before anything changes).
  void build_budget(budget_state& b) const {
    const ns_budget_options& o = b.options;
    std::vector<std::string> role_names;
    std::int64_t uniform = 0, matrices = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const state_type& st = params_[i].state;
      const auto* ns = st.ns_plan();
      if (ns == nullptr) continue;
      std::string role = params_[i].name;
      for (const auto& pat : o.roles) {
        if (pat.matches(params_[i].name)) {
          role = pat.describe();
          break;
        }
      }
      std::size_t r = 0;
      while (r < role_names.size() && role_names[r] != role) ++r;
      if (r == role_names.size()) {
        role_names.push_back(role);
        b.role_matrices.push_back(0);
        b.role_max.push_back(ns_max_recorded_steps + 1);
      }
      const int configured = st.configured_ns_steps();
      const int observe = o.observe_ns_steps > 0 ? o.observe_ns_steps : std::min(2 * configured, ns_max_recorded_steps);
      const int most = o.max_steps > 0 ? o.max_steps : observe;
      if (most < o.min_steps) {
        throw value_error("orthopt::optimizer::set_ns_budget: parameter '" + params_[i].name + "' would have max_steps = " +
                          std::to_string(most) + " below min_steps = " + std::to_string(o.min_steps));
      }
      const double target =
          o.residual_target > 0.0 ? o.residual_target : ns_auto_residual_target(ns->config().with_steps(configured));
      b.participants.push_back({i, r, observe, target});
      b.role_matrices[r] += st.count();
      b.role_max[r] = std::min(b.role_max[r], most);
      uniform += static_cast<std::int64_t>(configured) * st.count();
      matrices += st.count();
      ns_budget_param_report pr;
      pr.name = params_[i].name;
      pr.role = role;
      pr.matrices = st.count();
      pr.configured_steps = configured;
      pr.observed_steps = observe;
      pr.target = target;
      b.report.params.push_back(std::move(pr));
    }
    if (b.participants.empty()) {
      throw value_error(
          "orthopt::optimizer::set_ns_budget: no registered parameter runs Newton–Schulz (register parameters first)");
    }
    b.report.uniform_cost = uniform;
    b.report.budget = std::llround(o.budget_fraction * static_cast<double>(uniform));
    if (static_cast<std::int64_t>(o.min_steps) * matrices > b.report.budget) {
      throw value_error("orthopt::optimizer::set_ns_budget: min_steps = " + std::to_string(o.min_steps) + " for " +
                        std::to_string(matrices) + " matrices costs " +
                        std::to_string(static_cast<std::int64_t>(o.min_steps) * matrices) +
                        " iterations per step, above the budget of " + std::to_string(b.report.budget) +
                        " (budget_fraction " + std::to_string(o.budget_fraction) + " of " + std::to_string(uniform) + ")");
    }
    b.role_need.assign(role_names.size(), 0.0);
    b.role_calls.assign(role_names.size(), 0.0);
    b.role_committed.assign(role_names.size(), 0);
  }

  /// Before the updates of a step: open an observation window when one is due.
  void budget_before_step() {
    budget_state& b = *budget_;
    const bool first = b.phase == ns_budget_phase::waiting && steps_taken_ >= b.options.start_step;
    const bool again = b.phase == ns_budget_phase::committed && b.options.reobserve_every > 0 &&
                       steps_taken_ - b.phase_start >= b.options.reobserve_every;
    if (!first && !again) return;
    for (const auto& part : b.participants) {
      auto* ns = params_[part.param].state.ns_plan();
      ns->set_steps(part.observe_steps);
      ns->reset_observation();
      ns->observe(part.target);
    }
    b.phase = ns_budget_phase::observing;
    b.phase_start = steps_taken_;
  }

  /// After a step: commit when the window is over.
  void budget_after_step() {
    budget_state& b = *budget_;
    if (b.phase != ns_budget_phase::observing || steps_taken_ - b.phase_start < b.options.observe_steps) return;
    std::fill(b.role_need.begin(), b.role_need.end(), 0.0);
    std::fill(b.role_calls.begin(), b.role_calls.end(), 0.0);
    for (std::size_t k = 0; k < b.participants.size(); ++k) {
      const auto& part = b.participants[k];
      auto* ns = params_[part.param].state.ns_plan();
      const ns_observation obs = ns->read_observation();
      ns->stop_observing();
      b.report.params[k].observed = obs;
      b.role_need[part.role] += obs.mean_needed * obs.calls;
      b.role_calls[part.role] += obs.calls;
    }
    for (std::size_t r = 0; r < b.role_need.size(); ++r) {
      if (b.role_calls[r] > 0.0) b.role_need[r] /= b.role_calls[r];
    }
    b.report.committed_cost = commit_ns_steps(b.role_need, b.role_matrices, b.options.min_steps, b.role_max,
                                              b.report.budget, b.options.spend_whole_budget, b.role_committed);
    for (std::size_t k = 0; k < b.participants.size(); ++k) {
      const auto& part = b.participants[k];
      params_[part.param].state.ns_plan()->set_steps(b.role_committed[part.role]);
      b.report.params[k].role_need = b.role_need[part.role];
      b.report.params[k].committed_steps = b.role_committed[part.role];
    }
    b.report.window_start = b.phase_start;
    b.report.committed_at = steps_taken_;
    b.has_report = true;
    b.phase = ns_budget_phase::committed;
    b.phase_start = steps_taken_;
    if (b.options.on_commit) b.options.on_commit(b.report);
  }

  void check_group(group_id g, const char* who) const {
    if (g.index >= groups_.size()) {
      throw value_error(std::string("orthopt::optimizer::") + who + ": group index " + std::to_string(g.index) +
                        " but the optimizer has " + std::to_string(groups_.size()) + " groups");
    }
  }
  void check_param(param_id p, const char* who) const {
    if (p.index >= params_.size()) {
      throw value_error(std::string("orthopt::optimizer::") + who + ": parameter index " + std::to_string(p.index) +
                        " but the optimizer has " + std::to_string(params_.size()) + " parameters");
    }
  }

  param_id add_param_impl(std::string name, group_id g, batch_view<T> param, route_reason reason, std::string why) {
    const char* who = "orthopt::optimizer::add_param";
    check_group(g, "add_param");
    if (budget_) {
      throw value_error(std::string(who) + ": parameter '" + name +
                        "' comes after set_ns_budget; register every parameter first (or clear_ns_budget, add, "
                        "and set the budget again)");
    }
    if (name.empty()) throw value_error(std::string(who) + ": the parameter name is empty");
    if (find_param(name)) throw value_error(std::string(who) + ": a parameter named '" + name + "' exists already");
    detail::check_new_param(who, name, param, [this](auto&& visit) {
      for (const param_entry& other : params_) visit(other.name, other.param);
    });
    state_type state = std::visit([&](auto& r) { return r.make_state(param.rows(), param.cols(), param.count); },
                                  groups_[g.index].rule);
    params_.push_back(param_entry{std::move(name), g, param, std::move(state), {}, reason, std::move(why)});
    return {params_.size() - 1};
  }

  // distributed_optimizer runs a step in two halves with an agreement of all ranks between them.
  template <class, class>
  friend class distributed_optimizer;

  /// Checks everything, then updates everything: nothing is written until every check has passed.
  template <class GradientAt>
  void step_impl(GradientAt gradient_at) {
    check_step(gradient_at);
    apply_step(gradient_at);
  }

  /// The checks of a step (1–3 below). On success every group's rule lr holds the step's scheduled value
  /// (apply_step uses it; abandon_checked_step puts the previous values back); on failure it throws and
  /// nothing has changed.
  template <class GradientAt>
  void check_step(GradientAt gradient_at) {
    const char* who = "orthopt::optimizer::step";
    // 1. Scheduled learning rates and hyper-parameters. The rule's lr is set so that validate() sees
    //    the value the step will use; any failure puts every lr back.
    std::size_t written = 0;  // groups whose rule lr has been overwritten (and saved)
    constexpr std::int64_t largest_count = std::numeric_limits<std::int64_t>::max();
    if (steps_taken_ == largest_count) {
      throw value_error(std::string(who) + ": steps_taken = " + std::to_string(steps_taken_) +
                        ", the largest count there is; nothing was changed");
    }
    try {
      for (group_type& g : groups_) {
        if (!g.schedule) {
          throw value_error(std::string(who) + ": group '" + g.name +
                            "' has an empty schedule (set group(g).schedule to a callable); nothing was changed");
        }
        const double multiplier = g.schedule(steps_taken_);
        const double lr = g.lr * multiplier;
        if (!std::isfinite(lr) || lr < 0.0) {
          throw value_error(std::string(who) + ": group '" + g.name + "' gets lr = " + std::to_string(g.lr) + " x " +
                            std::to_string(multiplier) + " = " + std::to_string(lr) + " at step " +
                            std::to_string(steps_taken_) + "; it must be finite and >= 0; nothing was changed");
        }
        std::visit(
            [&](auto& r) {
              saved_lr_[written] = r.options().lr;
              r.options().lr = lr;
            },
            g.rule);
        ++written;
        std::visit([](auto& r) { r.validate_options(); }, g.rule);
      }
      // 2. Every gradient: the state belongs to the group's rule, shapes match, views are usable,
      //    values are finite.
      for (std::size_t i = 0; i < params_.size(); ++i) check_gradient(params_[i], gradient_at(i));
      // 3. Every state can count one more step (the rule would refuse after earlier parameters were
      //    written).
      for (const param_entry& p : params_) {
        if (p.state.step() == largest_count) {
          throw value_error(std::string(who) + ": the state of '" + p.name + "' is at step count " +
                            std::to_string(p.state.step()) + ", the largest there is; nothing was changed");
        }
      }
    } catch (...) {
      restore_lrs(written);
      throw;
    }
  }

  /// Puts back the rule lrs a successful check_step replaced (the step will not run).
  void abandon_checked_step() { restore_lrs(groups_.size()); }

  void restore_lrs(std::size_t groups) {
    for (std::size_t k = 0; k < groups; ++k) {
      std::visit([&](auto& r) { r.options().lr = saved_lr_[k]; }, groups_[k].rule);
    }
  }

  /// The updates of a step whose check_step passed.
  template <class GradientAt>
  void apply_step(GradientAt gradient_at) {
    // 4. Update. The rules would scan every gradient for NaN/Inf again; that was done above, so their
    //    own scan is switched off for the step and restored after it.
    for (std::size_t k = 0; k < groups_.size(); ++k) {
      std::visit(
          [&](auto& r) {
            saved_check_finite_[k] = r.options().check_finite ? 1 : 0;
            r.options().check_finite = false;
          },
          groups_[k].rule);
    }
    struct restore_flags {
      optimizer* self;
      ~restore_flags() {
        for (std::size_t k = 0; k < self->groups_.size(); ++k) {
          std::visit([&](auto& r) { r.options().check_finite = self->saved_check_finite_[k] != 0; },
                     self->groups_[k].rule);
        }
      }
    } restore{this};
    if (budget_) budget_before_step();
    for (std::size_t i = 0; i < params_.size(); ++i) {
      param_entry& p = params_[i];
      const gradient_view grad = gradient_at(i);
      std::visit([&](auto& r) { r.step(p.param, grad, p.state); }, groups_[p.group.index].rule);
    }
    ++steps_taken_;
    if (budget_) budget_after_step();
  }

  void check_gradient(param_entry& p, const gradient_view& grad) {
    const char* who = "orthopt::optimizer::step";
    group_type& g = groups_[p.group.index];
    const rule_kind kind = g.kind();
    if (p.state.kind() != kind) {
      throw value_error(std::string(who) + ": parameter '" + p.name + "' has a " + rule_name(p.state.kind()) +
                        " state but its group '" + g.name + "' now runs " + rule_name(kind) +
                        " (a group's rule kind cannot change after registration); nothing was changed");
    }
    detail::check_gradient_view(who, p.name, grad, p.param, [this](auto&& visit) {
      for (const param_entry& q : params_) visit(q.name, q.param);
    });
    // The rule's value check (NaN, Inf and its overflow limits on the gradient and the state), run here
    // for every parameter before any is stepped.
    const auto problem = std::visit(
        [&](auto& r) -> std::optional<value_problem> {
          if (!r.options().check_finite) return std::nullopt;
          return r.find_value_problem(grad, p.state);
        },
        g.rule);
    if (!problem) return;
    const bool nonfinite = !std::isfinite(problem->entry.value);
    if (!problem->in_state && nonfinite) {
      throw value_error(std::string(who) + ": the gradient of '" + p.name + "' has " + std::to_string(problem->entry.value) +
                        " at (" + std::to_string(problem->entry.row) + ", " + std::to_string(problem->entry.col) + ")" +
                        (grad.count > 1 ? " of batch item " + std::to_string(problem->item) : std::string()) +
                        "; nothing was changed");
    }
    throw value_error(std::string(who) + ": parameter '" + p.name + "': " +
                      detail::describe_value_problem<T>(*problem, grad.count) + "; nothing was changed");
  }

  std::vector<group_type> groups_;
  std::vector<param_entry> params_;
  std::vector<double> saved_lr_;               // per group, scratch of step(): sized at add_group
  std::vector<unsigned char> saved_check_finite_;  // per group, likewise
  std::int64_t steps_taken_ = 0;
  std::optional<budget_state> budget_;
};

}  // namespace orthopt
