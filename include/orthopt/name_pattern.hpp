// SPDX-License-Identifier: Apache-2.0
//
// Parameter-name patterns, shared by the optimizer's router (orthopt/optimizer.hpp) and the adaptive
// budget's roles (orthopt/ns_budget.hpp).
#pragma once

#include <string>
#include <string_view>

namespace orthopt {

/// A parameter-name pattern: a substring, or a whole component of a name split at '.', '/' and ':'.
/// Whole-component matching keeps short words from matching inside longer ones: "head" matches
/// "head.weight" and "model.head.bias" but not "attn.multihead.weight" or "heads.0.weight".
struct name_pattern {
  std::string text;
  bool whole_component = false;

  [[nodiscard]] bool matches(std::string_view name) const {
    if (text.empty()) return false;
    if (!whole_component) return name.find(text) != std::string_view::npos;
    std::size_t start = 0;
    while (start <= name.size()) {
      std::size_t end = name.find_first_of("./:", start);
      if (end == std::string_view::npos) end = name.size();
      if (name.substr(start, end - start) == text) return true;
      start = end + 1;
    }
    return false;
  }
  [[nodiscard]] std::string describe() const {
    return (whole_component ? "name component '" : "name containing '") + text + "'";
  }
};

}  // namespace orthopt
