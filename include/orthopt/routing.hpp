// SPDX-License-Identifier: Apache-2.0
//
// Routing: which group a parameter goes to, and why. param_router applies the rule every Muon-family
// codebase applies (KellerJordan/Muon, Moonlight, AdaMuon, NAMO code): hidden matrices to the
// Muon-family rule; vectors, embeddings and the output head to AdamW. Both optimizers take a router in
// add_param and report each decision in routing() / routing_table().
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "orthopt/name_pattern.hpp"
#include "orthopt/rules/rule_kind.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

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


}  // namespace orthopt
