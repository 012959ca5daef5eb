// SPDX-License-Identifier: Apache-2.0
//
// The update rules: Muon, AdaMuon, NAMO, NAMO-D and AdamW, their presets and per-parameter state.
#pragma once

#include "orthopt/rules/options.hpp"
#include "orthopt/rules/rules.hpp"
#include "orthopt/rules/stages.hpp"
