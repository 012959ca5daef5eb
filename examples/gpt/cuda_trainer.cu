// SPDX-License-Identifier: Apache-2.0
//
// The GPT demo's trainer on the CUDA backend (see trainer.hpp): compiled by nvcc, without torch, and
// linked into orthopt_gpt_demo_cuda beside gpt_demo.cpp.
#include <orthopt/cuda.cuh>

#include "trainer.hpp"

namespace gpt_demo {

std::unique_ptr<trainer_interface> make_cuda_trainer(const trainer_settings& s, const std::vector<parameter>& params) {
  return std::make_unique<trainer<orthopt::cuda_backend>>(s, params, orthopt::cuda_backend{});
}

}  // namespace gpt_demo
