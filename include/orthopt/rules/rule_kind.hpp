// SPDX-License-Identifier: Apache-2.0
//
// The kind codes of the update rules: what a state and a checkpoint record of the rule that made them.
// The codes are stable (checkpoints store them); a new rule takes the next unused one.
#pragma once

#include <cstdint>

namespace orthopt {

/// Which rule a state belongs to (also the tag a checkpoint records).
enum class rule_kind : std::uint32_t { muon = 1, adamuon = 2, namo = 3, namo_d = 4, adamw = 5 };

inline const char* rule_name(rule_kind k) {
  switch (k) {
    case rule_kind::muon: return "muon";
    case rule_kind::adamuon: return "adamuon";
    case rule_kind::namo: return "namo";
    case rule_kind::namo_d: return "namo_d";
    case rule_kind::adamw: return "adamw";
  }
  return "unknown";
}

}  // namespace orthopt
