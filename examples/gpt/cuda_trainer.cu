// SPDX-License-Identifier: Apache-2.0
//
// The GPT demo's trainer on the CUDA backend (see trainer.hpp): compiled by nvcc, without torch, and
// linked into orthopt_gpt_demo_cuda beside gpt_demo.cpp.
//
// With checks_on_device (the demo's default) the NaN/Inf and overflow checks run in the backend's
// flag_on_device mode: every check of a step is recorded on the device, and the host reads the record
// once after the step, instead of waiting for the GPU after each tensor's check (throw_on_host, the
// library's default, which refuses before anything is written). The price: a bad value is reported
// after the step that met it was applied, which ends the run here.
#include <orthopt/cuda.cuh>

#include <stdexcept>
#include <string>

#include "trainer.hpp"

namespace gpt_demo {
namespace {

orthopt::cuda_backend backend_for(bool checks_on_device) {
  orthopt::cuda_backend::settings settings;  // the legacy default stream, as libtorch's kernels
  settings.nonfinite =
      checks_on_device ? orthopt::nonfinite_check::flag_on_device : orthopt::nonfinite_check::throw_on_host;
  return orthopt::cuda_backend(settings);
}

class cuda_trainer final : public trainer_interface {
 public:
  cuda_trainer(const trainer_settings& s, const std::vector<parameter>& params, bool checks_on_device)
      : backend_(backend_for(checks_on_device)), trainer_(s, params, backend_) {}

  void step(const std::vector<orthopt::matrix_view<const float>>& grads) override {
    trainer_.step(grads);
    ++steps_;
    if (backend_.nonfinite_mode() != orthopt::nonfinite_check::flag_on_device) return;
    const orthopt::device_status status = backend_.read_status();  // the step's one synchronization
    if (status.failed_checks != 0) {
      throw std::runtime_error("optimizer step " + std::to_string(steps_) + ": " + std::to_string(status.failed_checks) +
                               " check(s) found a NaN, an Inf or an entry beyond the overflow limit; the first: " +
                               std::to_string(status.value) + " at (" + std::to_string(status.row) + ", " +
                               std::to_string(status.col) + ") of its tensor (the step was applied)");
    }
  }
  [[nodiscard]] std::string routing_table() const override { return trainer_.routing_table(); }
  [[nodiscard]] std::string budget_report() const override { return trainer_.budget_report(); }
  [[nodiscard]] std::int64_t ns_iterations() const override { return trainer_.ns_iterations(); }

 private:
  orthopt::cuda_backend backend_;
  trainer<orthopt::cuda_backend> trainer_;
  int steps_ = 0;
};

}  // namespace

std::unique_ptr<trainer_interface> make_cuda_trainer(const trainer_settings& s, const std::vector<parameter>& params,
                                                     bool checks_on_device) {
  return std::make_unique<cuda_trainer>(s, params, checks_on_device);
}

}  // namespace gpt_demo
