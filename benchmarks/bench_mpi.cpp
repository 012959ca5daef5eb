// SPDX-License-Identifier: Apache-2.0
//
// The distributed optimizer's step under MPI (Google Benchmark; run it under mpirun, e.g.
// benchmarks/run_mpi.sh for 1 to 4 ranks):
//
//   DIST/gpt_d512_l4/<rule>/f32/<averaging>    one distributed_optimizer::step over a GPT-style
//                                              transformer's parameters (d_model 512, 4 layers, MLP 4×,
//                                              vocabulary 8192, context 256; the shapes of bench_cpu's OPT
//                                              family), averaging = none (the host averaged) or average
//
// Every rank runs the same fixed number of iterations (collectives must match); each iteration's time
// is the slowest rank's (manual time: a barrier, the step, an allreduce(max) of the elapsed time). Rank
// 0 reports. Counters, for rank 0 and as the maximum over ranks:
//   ranks, collectives          per step
//   sent_bytes, sent_bytes_max  payload bytes a rank sends per step (distributed_traffic)
//   state_fraction_max          the largest rank's optimizer state over the single-process optimizer's
//   work_fraction_max           the largest rank's share of the ownership cost model's work
//   staging_bytes_max           the collectives' buffers on the largest rank
// On a machine with fewer cores than ranks (CI: 2), ranks share cores and the times say little; the
// bytes, the state and the work per rank are the point (docs/distributed.md).
#include <benchmark/benchmark.h>

#include <orthopt/eigen.hpp>
#include <orthopt/mpi.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using backend = orthopt::eigen_backend;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

orthopt::mpi_communicator& world() {
  static orthopt::mpi_communicator comm(MPI_COMM_WORLD);
  return comm;
}

matrix gaussian(Eigen::Index r, Eigen::Index c, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  matrix m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

/// The GPT-style model of bench_common.hpp and its registration (the router sends embeddings, head and
/// vectors to AdamW, the hidden matrices to the rule; the fused QKV as three 512×512 blocks).
struct gpt_model {
  struct tensor {
    std::string name;
    Eigen::Index blocks;
    matrix value, grad;
  };
  std::vector<tensor> tensors;
  gpt_model() {
    for (const bench::gpt_tensor& spec : bench::gpt_tensors()) {
      const auto seed = static_cast<unsigned>(tensors.size());
      tensors.push_back({spec.name, spec.blocks, gaussian(spec.rows, spec.cols, seed, 0.02f),
                         gaussian(spec.rows, spec.cols, 1000u + seed, 1.0f)});
    }
  }
  template <class Opt, class Rule>
  std::vector<orthopt::batch_view<const float>> register_with(Opt& opt, Rule rule) {
    const auto hidden = opt.add_group("hidden", std::move(rule));
    const auto adamw = opt.add_group("adamw", orthopt::adamw<float, backend>(orthopt::adamw_presets::torch()));
    const orthopt::param_router router(hidden, adamw);
    std::vector<orthopt::batch_view<const float>> grads;
    for (auto& t : tensors) {
      opt.add_param(t.name, orthopt::split_rows(orthopt::make_view(t.value), t.blocks), router);
      grads.push_back(orthopt::split_rows(orthopt::make_view(t.grad).as_const(), t.blocks));
    }
    return grads;
  }
};

double max_over_ranks(double v) {
  world().allreduce(&v, 1, orthopt::element_kind::float64, orthopt::reduce_op::max);
  return v;
}

template <class Rule>
void distributed_step(benchmark::State& state, Rule rule, orthopt::gradient_averaging averaging) {
  auto& comm = world();
  gpt_model model;
  orthopt::distributed_optimizer<float, backend> opt(comm, {averaging});
  const auto grads = model.register_with(opt, rule);
  opt.step(grads);  // finalize, first touch of every buffer

  // The single-process optimizer's state, for the fraction each rank holds.
  double single_state = 0.0;
  {
    gpt_model copy;
    orthopt::optimizer<float, backend> single;
    copy.register_with(single, rule);
    for (std::size_t i = 0; i < single.param_count(); ++i)
      for (const auto& s : single.state(orthopt::param_id{i}).slots())
        single_state += static_cast<double>(s.element_bytes * s.elements);
  }

  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    opt.step(grads);
    state.SetIterationTime(max_over_ranks(MPI_Wtime() - t0));
  }
  const auto traffic = opt.step_traffic();
  const auto mem = opt.memory();
  state.counters["ranks"] = comm.size();
  state.counters["collectives"] = static_cast<double>(traffic.collectives);
  state.counters["sent_bytes"] = static_cast<double>(traffic.bytes_sent);
  state.counters["sent_bytes_max"] = max_over_ranks(static_cast<double>(traffic.bytes_sent));
  state.counters["state_fraction_max"] = max_over_ranks(static_cast<double>(mem.state_bytes)) / single_state;
  state.counters["work_fraction_max"] = max_over_ranks(mem.cost_owned) / mem.cost_total;
  state.counters["staging_bytes_max"] = max_over_ranks(static_cast<double>(mem.staging_bytes));
}

/// Reports nothing (the ranks other than 0).
class silent_reporter final : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    // One fixed iteration count on every rank (ORTHOPT_BENCH_MPI_ITERATIONS, default 10).
    const char* env = std::getenv("ORTHOPT_BENCH_MPI_ITERATIONS");
    const int iterations = env != nullptr ? std::max(1, std::atoi(env)) : 10;
    for (const auto averaging : {orthopt::gradient_averaging::none, orthopt::gradient_averaging::average}) {
      const std::string mode = averaging == orthopt::gradient_averaging::none ? "none" : "average";
      benchmark::RegisterBenchmark(("DIST/gpt_d512_l4/muon/f32/" + mode).c_str(), [averaging](benchmark::State& s) {
        distributed_step(s, orthopt::muon<float, backend>(orthopt::muon_presets::moonlight()), averaging);
      })->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("DIST/gpt_d512_l4/adamuon/f32/" + mode).c_str(), [averaging](benchmark::State& s) {
        distributed_step(s, orthopt::adamuon<float, backend>(orthopt::adamuon_presets::code()), averaging);
      })->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);
    }
    // Only rank 0 reports, to the console and to --benchmark_out; the others drop those flags.
    std::vector<char*> args(argv, argv + argc);
    if (world().rank() != 0) {
      std::erase_if(args, [](const char* a) { return std::strncmp(a, "--benchmark_out", 15) == 0; });
    }
    int count = static_cast<int>(args.size());
    benchmark::Initialize(&count, args.data());
    if (world().rank() == 0) {
      benchmark::AddCustomContext("mpi_ranks", std::to_string(world().size()));
      benchmark::RunSpecifiedBenchmarks();
    } else {
      silent_reporter silent;
      benchmark::RunSpecifiedBenchmarks(&silent);
    }
    benchmark::Shutdown();
  }
  MPI_Finalize();
  return 0;
}
