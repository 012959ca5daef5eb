// SPDX-License-Identifier: Apache-2.0
//
// The list of update rules an optimizer group can run (any_rule). A new rule is a header in this folder
// (its options, its class deriving from detail::rule_base with a kind code, a name, a state layout and
// its limits), one entry in this list, and its kind code and name in orthopt/rules/rule_kind.hpp (the
// one table of the codes checkpoints store, so two rules cannot claim one). The optimizers, their
// checkpoints and the distributed cost model learn the rest from the rule (make_state, slots, step_cost).
#pragma once

#include <variant>

#include "orthopt/rules/adamuon.hpp"
#include "orthopt/rules/adamw.hpp"
#include "orthopt/rules/muon.hpp"
#include "orthopt/rules/namo.hpp"
#include "orthopt/rules/namo_d.hpp"

namespace orthopt {

/// The list of rules: every rule an optimizer group can run.
template <class T, class Backend>
using any_rule = std::variant<muon<T, Backend>, adamuon<T, Backend>, namo<T, Backend>, namo_d<T, Backend>,
                              adamw<T, Backend>>;

}  // namespace orthopt
