// SPDX-License-Identifier: Apache-2.0
//
// The update rules — Muon, AdaMuon, NAMO, NAMO-D and AdamW — their options and presets, their shared
// stages and per-parameter state: every header of orthopt/rules/.
#pragma once

#include "orthopt/rules/adamuon.hpp"
#include "orthopt/rules/adamw.hpp"
#include "orthopt/rules/muon.hpp"
#include "orthopt/rules/namo.hpp"
#include "orthopt/rules/namo_d.hpp"
#include "orthopt/rules/options.hpp"
#include "orthopt/rules/param_state.hpp"
#include "orthopt/rules/rule_base.hpp"
#include "orthopt/rules/rule_list.hpp"
#include "orthopt/rules/stages.hpp"
