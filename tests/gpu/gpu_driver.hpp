// The GPU suite's device side (gpu_driver.cu): the CUDA backend run on device memory, behind an
// interface of host types only, so that the test cases and their Eigen reference (test_gpu.cpp) are
// compiled by the host compiler alone. gpu_driver.cu builds two ways: by nvcc for a GPU (test_gpu,
// label gpu), and by g++ on the backend's host emulation (test_gpu_thrust_host, label thrust_host), so
// that CI runs every line of this suite except the CUDA-graph checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gpu_runs.hpp"

namespace gpu_driver {

using gpu_runs::index_t;

/// The element type the device computes in.
enum class element { f32, f64, bf16 };

/// Whether a device is there; `description` names it (or says why not).
bool device_available(std::string& description);
/// True when built by nvcc for a real GPU (false on the host emulation).
bool on_gpu();

std::vector<double> newton_schulz(const std::vector<double>& x, index_t rows, index_t cols, const orthopt::ns_config& cfg,
                                  element e);
std::vector<double> newton_schulz_batch(const std::vector<double>& x, index_t count, index_t rows, index_t cols,
                                        const orthopt::ns_config& cfg, element e);
std::vector<double> exact_polar(const std::vector<double>& x, index_t rows, index_t cols, element e);
/// One exact_polar plan (check_finite as given) applied to each input in turn: its outputs, or for an
/// input the plan refused, an empty vector and the refusal's message in `refusals` at the same index.
std::vector<std::vector<double>> exact_polar_series(const std::vector<std::vector<double>>& xs, index_t rows, index_t cols,
                                                    element e, bool check_finite, std::vector<std::string>& refusals);
gpu_runs::rule_result rule(const gpu_runs::rule_spec& spec, index_t count, index_t rows, index_t cols, int steps,
                           std::uint64_t seed, element e);
gpu_runs::optimizer_result optimizer(int steps, int save_at, element e);

/// Device allocations made by orthopt's buffers during `steps` optimizer steps after setup (expected 0).
std::int64_t allocations_during_steps(int steps);

/// A rule step captured in a CUDA graph and replayed, against the same step run eagerly: true when the
/// parameters and states agree bit for bit. The capture (cudaStreamCaptureModeGlobal) fails on any host
/// synchronization or allocation inside the step, so success also shows there are none. The step keeps
/// its NaN/Inf check, in the backend's flag_on_device mode. `detail` says what differed, or why the check
/// could not run (the host emulation has no graphs).
bool graph_replay_matches(std::string& detail);

/// The same for a whole optimizer step (Muon, AdaMuon and AdamW groups, a stacked parameter, the
/// optimizer's own checks in flag_on_device mode). Then a NaN written into the gradient memory the
/// graph reads, and the graph replayed again: the device status record must count the bad gradient.
bool optimizer_graph_replay_matches(std::string& detail);

}  // namespace gpu_driver
