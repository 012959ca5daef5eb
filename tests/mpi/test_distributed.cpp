// The distributed optimizer under MPI (ctest label `mpi`; tests/CMakeLists.txt runs this binary with
// mpirun at 1, 2, 3 and 4 ranks). Every rank runs every case in the same order; cases run their
// collectives first and CHECK afterwards (a REQUIRE that failed on one rank only would leave the others
// waiting in a collective). The reference everywhere is orthopt::optimizer in the same process, on the
// same backend and thread count (OMP_NUM_THREADS=1 from ctest).
#include <catch2/catch.hpp>

#include <orthopt/checkpoint.hpp>
#include <orthopt/eigen.hpp>
#include <orthopt/mpi.hpp>
#include <orthopt/lr_schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../support/optimizer_test_util.hpp"
#include "mpi_test_support.hpp"

namespace {

using backend = orthopt::eigen_backend;
using orthopt::index_t;

/// splitmix64: the gradient of (step, tensor, element, rank) as a value in [-1, 1), the same on every
/// rank and in every run.
double hashed_unit(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
  std::uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
                    (c + 1) * 0x94D049BB133111EBull ^ (d + 7) * 0xD6E8FEB86659FD93ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0;
}

/// One tensor of the test model: its registration and its host memory.
struct tensor_spec {
  std::string name;
  index_t count, rows, cols;
  bool column_major = false;
};

/// Shapes of every kind: wide, tall, square, column-major, a batch (stacked experts), an N-D filter as
/// a matrix, vectors, an embedding and a head (routed to AdamW), and a tiny matrix.
std::vector<tensor_spec> model_specs() {
  return {{"blocks.0.attn.qkv.weight", 1, 48, 16},   {"blocks.0.mlp.fc.weight", 1, 64, 16},
          {"blocks.0.mlp.proj.weight", 1, 16, 64},   {"blocks.1.mlp.fc.weight", 1, 40, 24, true},
          {"experts.w1", 3, 16, 24},                 {"conv1.weight", 1, 8, 27},
          {"blocks.0.norm.gain", 1, 1, 16},          {"embed_tokens.weight", 1, 40, 16},
          {"lm_head.weight", 1, 40, 16},             {"tiny", 1, 4, 4},
          {"blocks.1.attn.out.weight", 1, 24, 24}};
}

/// A model's memory: parameters (initial values from a seed) and one gradient buffer per tensor.
template <class T>
struct model {
  std::vector<tensor_spec> specs = model_specs();
  std::vector<std::vector<T>> values, grads;
  explicit model(std::uint64_t seed = 1) {
    for (std::size_t t = 0; t < specs.size(); ++t) {
      const auto n = static_cast<std::size_t>(specs[t].count * specs[t].rows * specs[t].cols);
      values.emplace_back(n);
      grads.emplace_back(n);
      for (std::size_t i = 0; i < n; ++i) values[t][i] = static_cast<T>(0.2 * hashed_unit(seed, t, i, 99));
    }
  }
  orthopt::batch_view<T> view(std::size_t t, T* data) const {
    const tensor_spec& s = specs[t];
    if (s.count > 1) return orthopt::row_major_batch(data, s.count, s.rows, s.cols);
    if (s.column_major) return orthopt::as_batch(orthopt::matrix_view<T>(data, s.rows, s.cols, 1, s.rows));
    return orthopt::as_batch(orthopt::row_major_view(data, s.rows, s.cols));
  }
  orthopt::batch_view<T> param(std::size_t t) { return view(t, values[t].data()); }
  orthopt::batch_view<const T> grad(std::size_t t) { return view(t, grads[t].data()).as_const_batch(); }
  /// The gradients of step s (as rank r's local contribution when r >= 0, else the shared value).
  void fill_gradients(std::int64_t s, int r = -1) {
    for (std::size_t t = 0; t < grads.size(); ++t)
      for (std::size_t i = 0; i < grads[t].size(); ++i)
        grads[t][i] = static_cast<T>(hashed_unit(static_cast<std::uint64_t>(s), t, i, static_cast<std::uint64_t>(r + 1)));
  }
  std::vector<orthopt::batch_view<const T>> gradient_list() {
    std::vector<orthopt::batch_view<const T>> g;
    for (std::size_t t = 0; t < specs.size(); ++t) g.push_back(grad(t));
    return g;
  }
};

/// A rule configuration under test: the matrix group's rule (the router sends vectors, the embedding
/// and the head to an AdamW group).
struct rule_case {
  std::string label;
  std::function<orthopt::any_rule<float, backend>()> make_float;
  std::function<orthopt::any_rule<double, backend>()> make_double;
};

template <template <class, class> class Rule, class Options>
rule_case make_case(std::string label, Options o) {
  return {std::move(label), [o] { return orthopt::any_rule<float, backend>(Rule<float, backend>(o)); },
          [o] { return orthopt::any_rule<double, backend>(Rule<double, backend>(o)); }};
}

std::vector<rule_case> rule_cases() {
  using namespace orthopt;
  auto exact = muon_presets::moonlight();
  exact.ortho.exact = true;
  auto gram = adamuon_presets::code();
  gram.ortho.ns.algorithm = ns_algorithm::gram;
  return {make_case<muon>("muon keller", muon_presets::keller()),
          make_case<muon>("muon moonlight", muon_presets::moonlight()),
          make_case<muon>("muon moonlight, exact polar", exact),
          make_case<adamuon>("adamuon paper", adamuon_presets::paper()),
          make_case<adamuon>("adamuon code, Gram NS", gram),
          make_case<namo>("namo code", namo_presets::code()),
          make_case<namo>("namo paper", namo_presets::paper()),
          make_case<namo_d>("namo_d code", namo_d_presets::code()),
          make_case<namo_d>("namo_d gpt2_small", namo_d_presets::gpt2_small())};
}

template <class T>
orthopt::any_rule<T, backend> matrix_rule(const rule_case& c) {
  if constexpr (std::is_same_v<T, float>) return c.make_float();
  else return c.make_double();
}

/// Registers the model with a matrix group and an AdamW group on any optimizer type.
template <class T, class Opt>
void register_model(Opt& opt, model<T>& m, const rule_case& c) {
  const auto hidden = opt.add_group("hidden", matrix_rule<T>(c), orthopt::warmup_stable_decay(3, 40, 0.3));
  const auto rest = opt.add_group("adamw", orthopt::adamw<T, backend>(orthopt::adamw_presets::torch()));
  const orthopt::param_router router(hidden, rest);
  for (std::size_t t = 0; t < m.specs.size(); ++t) opt.add_param(m.specs[t].name, m.param(t), router);
}

template <class T>
std::vector<unsigned char> bytes_of(const model<T>& m) {
  std::vector<unsigned char> out;
  for (const auto& v : m.values) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    out.insert(out.end(), p, p + v.size() * sizeof(T));
  }
  return out;
}

/// The tree average of the ranks' local gradients, as the distributed optimizer forms it: each divided
/// by P in the element type, then summed pairwise in rank order (stride 1, 2, 4, …).
template <class T>
void tree_average(model<T>& into, std::int64_t step, int ranks) {
  std::vector<model<T>> parts;
  for (int r = 0; r < ranks; ++r) {
    parts.emplace_back();
    parts.back().fill_gradients(step, r);
    for (auto& g : parts.back().grads)
      for (T& x : g) x /= static_cast<T>(ranks);
  }
  for (int stride = 1; stride < ranks; stride *= 2)
    for (int q = 0; q + stride < ranks; q += 2 * stride)
      for (std::size_t t = 0; t < into.grads.size(); ++t)
        for (std::size_t i = 0; i < into.grads[t].size(); ++i) parts[q].grads[t][i] += parts[q + stride].grads[t][i];
  for (std::size_t t = 0; t < into.grads.size(); ++t)
    for (std::size_t i = 0; i < into.grads[t].size(); ++i) into.grads[t][i] = parts[0].grads[t][i];
}

/// `steps` steps of the distributed optimizer and of the reference, each on its own copy of the model:
/// the same gradients, or with averaging this rank's local ones for `dist` and their rank-order tree
/// average for `ref`.
template <class T>
void step_both(orthopt::distributed_optimizer<T, backend>& dist, model<T>& dm, orthopt::optimizer<T, backend>& ref,
               model<T>& rm, orthopt::gradient_averaging averaging, int steps) {
  auto& comm = testing::world();
  for (std::int64_t s = 0; s < steps; ++s) {
    if (averaging == orthopt::gradient_averaging::average) {
      dm.fill_gradients(s, comm.rank());
      tree_average(rm, s, comm.size());
    } else {
      dm.fill_gradients(s);
      rm.fill_gradients(s);
    }
    const auto dg = dm.gradient_list();
    const auto rg = rm.gradient_list();
    dist.step(dg);
    ref.step(rg);
  }
}

/// The parameters (on this rank), owned states and step counts in which the two differ in any bit.
template <class T>
int count_differences(const orthopt::distributed_optimizer<T, backend>& dist, const model<T>& dm,
                      const orthopt::optimizer<T, backend>& ref, const model<T>& rm) {
  int differences = 0;
  for (std::size_t t = 0; t < dm.values.size(); ++t) {
    if (std::memcmp(dm.values[t].data(), rm.values[t].data(), dm.values[t].size() * sizeof(T)) != 0) ++differences;
  }
  for (std::size_t i = 0; i < dist.param_count(); ++i) {
    if (dist.has_state(orthopt::param_id{i}) && testing::state_bytes(dist, i) != testing::state_bytes(ref, i)) ++differences;
  }
  if (dist.steps_taken() != ref.steps_taken()) ++differences;
  return differences;
}

/// Runs `steps` steps of the distributed optimizer and of the reference on the same model; returns
/// count_differences.
template <class T>
int compare_trajectories(const rule_case& c, orthopt::gradient_averaging averaging, int steps) {
  model<T> dm, rm;
  orthopt::distributed_optimizer<T, backend> dist(testing::world(), {averaging, std::size_t{4096}});
  orthopt::optimizer<T, backend> ref;
  register_model(dist, dm, c);
  register_model(ref, rm, c);
  step_both(dist, dm, ref, rm, averaging, steps);
  return count_differences(dist, dm, ref, rm);
}

std::uint64_t text_hash(const std::string& s) {
  orthopt::fnv1a64 h;
  h.update(s.data(), s.size());
  return h.value();
}

}  // namespace

TEST_CASE("distributed steps equal the single-process optimizer's, bit for bit, for every rule", "[mpi]") {
  // The owner runs each matrix's rule with the same code and arithmetic as one process, and the
  // gathered parameters are copies: every bit agrees, on every rank count.
  for (const rule_case& c : rule_cases()) {
    INFO(c.label << " on " << testing::world().size() << " ranks");
    const int f = compare_trajectories<float>(c, orthopt::gradient_averaging::none, 20);
    const int d = compare_trajectories<double>(c, orthopt::gradient_averaging::none, 20);
    CHECK(testing::all_ranks_max(f) == 0);
    CHECK(testing::all_ranks_max(d) == 0);
  }
}

TEST_CASE("with averaging, steps equal one process given the rank-order tree average", "[mpi]") {
  // Each rank hands its own gradients; the reference gets their pairwise tree sum in rank order over P.
  const auto cases = rule_cases();
  for (const rule_case& c : {cases[1], cases[3], cases[5], cases[7]}) {
    INFO(c.label << " on " << testing::world().size() << " ranks");
    CHECK(testing::all_ranks_max(compare_trajectories<float>(c, orthopt::gradient_averaging::average, 20)) == 0);
    CHECK(testing::all_ranks_max(compare_trajectories<double>(c, orthopt::gradient_averaging::average, 8)) == 0);
  }
}

TEST_CASE("ownership is balanced, identical on every rank, and state lives on the owner only", "[mpi]") {
  auto& comm = testing::world();
  const int P = comm.size();
  model<float> m;
  orthopt::distributed_optimizer<float, backend> dist(comm);
  orthopt::optimizer<float, backend> ref;
  register_model(dist, m, rule_cases()[0]);
  model<float> rm;
  register_model(ref, rm, rule_cases()[0]);
  dist.finalize();
  const auto owners = dist.ownership();

  // Identical everywhere: the owners' fingerprint is the same on every rank.
  std::string text;
  for (const auto& o : owners) text += o.name + ":" + std::to_string(o.owner) + ";";
  const auto h = static_cast<std::int64_t>(text_hash(text) >> 1);
  CHECK(testing::all_ranks_max(h) == testing::all_ranks_min(h));

  // Balance (largest first onto the least loaded): the loads differ by at most the largest cost, and
  // the most loaded rank carries no more than the largest cost above the mean.
  std::vector<double> load(static_cast<std::size_t>(P), 0.0);
  double largest = 0.0, total = 0.0;
  for (const auto& o : owners) {
    CHECK(o.owner >= 0);
    CHECK(o.owner < P);
    load[static_cast<std::size_t>(o.owner)] += o.cost;
    largest = std::max(largest, o.cost);
    total += o.cost;
  }
  const double most = *std::max_element(load.begin(), load.end());
  const double least = *std::min_element(load.begin(), load.end());
  CHECK(most - least <= largest * (1 + 1e-12));
  CHECK(most <= total / P + largest);
  const auto mem = dist.memory();
  CHECK(mem.cost_owned == Approx(load[static_cast<std::size_t>(comm.rank())]));
  CHECK(mem.cost_total == Approx(total));

  // State: the ranks' state bytes add up to the single-process optimizer's exactly; each rank holds its
  // owned parameters' states only.
  std::uint64_t single = 0, largest_state = 0;
  for (std::size_t i = 0; i < ref.param_count(); ++i) {
    std::uint64_t b = 0;
    for (const auto& s : ref.state(orthopt::param_id{i}).slots()) b += s.element_bytes * s.elements;
    single += b;
    largest_state = std::max(largest_state, b);
  }
  const auto mine = static_cast<std::int64_t>(mem.state_bytes);
  CHECK(testing::all_ranks_sum(mine) == static_cast<std::int64_t>(single));
  CHECK(testing::all_ranks_sum(static_cast<std::int64_t>(mem.params_owned)) == static_cast<std::int64_t>(ref.param_count()));
  std::size_t owned_here = 0;
  std::size_t states_here = 0;
  for (std::size_t i = 0; i < dist.param_count(); ++i) {
    owned_here += dist.owns(orthopt::param_id{i}) ? 1 : 0;
    states_here += dist.has_state(orthopt::param_id{i}) ? 1 : 0;
  }
  CHECK(owned_here == states_here);
  CHECK(owned_here == mem.params_owned);
  if (P == 1) CHECK(mem.state_bytes == single);
  std::printf("rank %d of %d: %zu parameters, state %llu bytes of %llu (%.1f%%), staging %llu bytes\n", comm.rank(), P,
              mem.params_owned, static_cast<unsigned long long>(mem.state_bytes), static_cast<unsigned long long>(single),
              100.0 * static_cast<double>(mem.state_bytes) / static_cast<double>(single),
              static_cast<unsigned long long>(mem.staging_bytes));
}

TEST_CASE("equal costs are spread evenly, and the assignment is the documented rule", "[mpi]") {
  const std::vector<double> equal(10, 5.0);
  for (int P = 1; P <= 4; ++P) {
    const auto owners = orthopt::detail::assign_owners(equal, P);
    std::vector<int> n(static_cast<std::size_t>(P), 0);
    for (int o : owners) ++n[static_cast<std::size_t>(o)];
    CHECK(*std::max_element(n.begin(), n.end()) - *std::min_element(n.begin(), n.end()) <= 1);
  }
  // Largest first: 9 → rank 0, 7 → rank 1, 5 → rank 1 (7 < 9), 4 → rank 0 (9 < 12), 1 → rank 1 (12 < 13).
  const std::vector<double> costs{4, 9, 1, 7, 5};
  CHECK(orthopt::detail::assign_owners(costs, 2) == std::vector<int>{0, 0, 1, 1, 1});
}

TEST_CASE("the traffic of a step is what the collectives carry", "[mpi]") {
  auto& comm = testing::world();
  const int P = comm.size();
  for (const auto averaging : {orthopt::gradient_averaging::none, orthopt::gradient_averaging::average}) {
    model<float> m;
    orthopt::distributed_optimizer<float, backend> dist(comm, {averaging, std::size_t{2048}});
    register_model(dist, m, rule_cases()[0]);
    dist.finalize();
    const auto t = dist.step_traffic();
    // Conservation: what all ranks send is what all ranks receive.
    CHECK(testing::all_ranks_sum(static_cast<std::int64_t>(t.bytes_sent)) ==
          testing::all_ranks_sum(static_cast<std::int64_t>(t.bytes_received)));
    // Every parameter crosses to the P − 1 other ranks once (gather), and with averaging each rank's
    // gradients of the others' parameters cross once more.
    std::int64_t elements = 0;
    for (const auto& v : m.values) elements += static_cast<std::int64_t>(v.size());
    // (On one rank the average is the gradient itself: no second agreement, no staging.)
    const bool averages = averaging == orthopt::gradient_averaging::average && P > 1;
    const std::int64_t agreements = averages ? 2 : 1;
    const std::int64_t gathered = static_cast<std::int64_t>(sizeof(float)) * elements * (P - 1);
    const std::int64_t averaged = averages ? gathered : 0;
    CHECK(testing::all_ranks_sum(static_cast<std::int64_t>(t.bytes_received)) ==
          gathered + averaged + 56 * agreements * P);  // an agreement: 7 int64
    CHECK(t.collectives >= agreements + (P > 1 ? 1 : 0));
    if (P == 1) CHECK(dist.memory().staging_bytes == 0);
    CHECK(testing::all_ranks_max(t.collectives) == testing::all_ranks_min(t.collectives));
  }
}

TEST_CASE("a refused step throws the same exception on every rank and changes nothing anywhere", "[mpi]") {
  auto& comm = testing::world();
  const int P = comm.size();
  const int last = P - 1;
  for (const auto averaging : {orthopt::gradient_averaging::none, orthopt::gradient_averaging::average}) {
    model<float> m;
    orthopt::distributed_optimizer<float, backend> dist(comm, {averaging, std::size_t{4096}});
    register_model(dist, m, rule_cases()[3]);
    m.fill_gradients(0, comm.rank());
    auto grads = m.gradient_list();
    dist.step(grads);  // one good step first, so there is state to protect
    const auto before = testing::snapshot(dist);

    // The exception types a refusal here arrives as.
    enum refusal : int { shape = 1, value = 2, out_of_range = 3 };
    const auto expect_same_everywhere = [&](auto&& run, refusal expected) {
      std::string message;
      int kind = 0;
      try {
        run();
      } catch (const orthopt::shape_error& e) {
        kind = shape;
        message = e.what();
      } catch (const orthopt::value_error& e) {
        kind = value;
        message = e.what();
      } catch (const std::out_of_range& e) {
        kind = out_of_range;
        message = e.what();
      }
      INFO(message);
      CHECK(kind == expected);
      CHECK(testing::all_ranks_min(kind) == testing::all_ranks_max(kind));
      const auto h = static_cast<std::int64_t>(text_hash(message) >> 1);
      CHECK(testing::all_ranks_min(h) == testing::all_ranks_max(h));
      CHECK(testing::snapshot(dist) == before);
      return message;
    };

    // A NaN in one gradient. Without averaging every rank holds the same gradients, so it is there on
    // every rank and the owner finds it; with averaging it is on the last rank only and reaches the
    // owner through the average.
    m.fill_gradients(1, comm.rank());
    if (averaging == orthopt::gradient_averaging::none || comm.rank() == last) m.grads[2][5] = std::nanf("");
    const std::string nan_message = expect_same_everywhere([&] { dist.step(grads); }, value);
    CHECK(nan_message.find("blocks.0.mlp.proj.weight") != std::string::npos);
    // With averaging the owner sees the average; the message also names the rank the NaN came from.
    const bool names_contributor = nan_message.find("rank " + std::to_string(last) +
                                                    "'s own gradient of 'blocks.0.mlp.proj.weight' has nan at (0, 5)") !=
                                   std::string::npos;
    CHECK(names_contributor == (averaging == orthopt::gradient_averaging::average && P > 1));

    // A wrong shape on the last rank only.
    m.fill_gradients(1, comm.rank());
    auto bad = grads;
    if (comm.rank() == last) bad[1] = m.grad(0);
    const std::string shape_message = expect_same_everywhere([&] { dist.step(bad); }, shape);
    CHECK(shape_message.find("refused on rank " + std::to_string(last)) != std::string::npos);

    // A gradient lying in its parameter's own state, on the owning rank only, stepped in place (without
    // averaging; an average reads every gradient into its buffers before anything is written): refused
    // in the check phase, on every rank's agreement (it was refused by the rule inside the owner's
    // updates, with parameters partly written and the other ranks blocked in the gather).
    if (averaging == orthopt::gradient_averaging::none) {
      m.fill_gradients(1, comm.rank());
      auto in_state = grads;
      const orthopt::param_id owned{2};
      if (dist.has_state(owned)) in_state[2] = dist.gradient_like(owned, dist.state(owned).momentum(0).data);
      const std::string state_message = expect_same_everywhere([&] { dist.step(in_state); }, shape);
      CHECK(state_message.find("lies in the momentum of the state of 'blocks.0.mlp.proj.weight'") != std::string::npos);
    }

    // A gradient list of the wrong length on rank 0 only.
    auto shorter = grads;
    if (comm.rank() == 0) shorter.pop_back();
    expect_same_everywhere([&] { dist.step(shorter); }, value);

    // A schedule of the host's that throws a standard exception on the last rank only: every rank
    // throws that type (every rank threw std::runtime_error), with the same message.
    {
      auto& group = dist.group(orthopt::group_id{0});
      const auto saved = group.schedule;
      if (comm.rank() == last) group.schedule = [](std::int64_t) -> double { throw std::out_of_range("no lr past the end"); };
      const std::string message = expect_same_everywhere([&] { dist.step(grads); }, out_of_range);
      CHECK(message.find("no lr past the end [refused on rank " + std::to_string(last)) != std::string::npos);
      group.schedule = saved;
    }

    // Settings that differ between ranks (set on the last rank only) are refused on every rank, naming
    // the first differing one with each value's lowest rank; before, the owners' options were silently
    // applied.
    if (P > 1) {
      auto& hidden = dist.group(orthopt::group_id{0}).options<orthopt::adamuon_options>();
      const auto expect_named = [&](auto&& change, auto&& restore, const std::string& setting) {
        if (comm.rank() == last) change();
        const std::string message = expect_same_everywhere([&] { dist.step(grads); }, value);
        CHECK(message.find("the ranks' settings differ: " + setting) != std::string::npos);
        if (comm.rank() == last) restore();
      };
      expect_named([&] { hidden.beta = 0.5; }, [&] { hidden.beta = 0.95; },
                   "group 'hidden' has beta = 0.5 on rank " + std::to_string(last) + " but 0.95 on rank 0");
      expect_named([&] { hidden.ortho.ns.steps = 6; }, [&] { hidden.ortho.ns.steps = 5; },
                   "group 'hidden' has ortho.ns.steps = 5 on rank 0 but 6 on rank " + std::to_string(last));
      expect_named([&] { hidden.ortho.ns.table.push_back({3.0, -4.0, 2.0}); }, [&] { hidden.ortho.ns.table.pop_back(); },
                   "group 'hidden' has ortho.ns.table rows = 1 on rank 0 but 2 on rank " + std::to_string(last));
      expect_named([&] { hidden.ortho.ns.table[0].b = -4.0; },
                   [&] { hidden.ortho.ns.table[0].b = orthopt::ns_presets::keller().table[0].b; },
                   "group 'hidden' has ortho.ns.table[0].b = -4.775 on rank 0 but -4 on rank " + std::to_string(last));
      expect_named([&] { hidden.sign = false; }, [&] { hidden.sign = true; },
                   "group 'hidden' has sign = 0 on rank " + std::to_string(last) + " but 1 on rank 0");
      // The learning rate a step uses (base lr × schedule), and a parameter's own Newton–Schulz count.
      auto& adamw = dist.group(orthopt::group_id{1});
      expect_named([&] { adamw.lr = 2e-3; }, [&] { adamw.lr = 1e-3; }, "group 'adamw' has lr = ");
      expect_named([&] { dist.set_ns_steps(orthopt::param_id{2}, 7); }, [] {},
                   "parameter 'blocks.0.mlp.proj.weight' has set_ns_steps = 0 on rank 0 but 7 on rank " +
                       std::to_string(last));
      dist.set_ns_steps(orthopt::param_id{2}, 5);  // the same everywhere again (the rule's count)
    }

    // An lr schedule that fails on every rank (every rank's groups are the same).
    dist.group(orthopt::group_id{0}).lr = -1.0;
    expect_same_everywhere([&] { dist.step(grads); }, value);
    dist.group(orthopt::group_id{0}).lr = 0.02;

    // Rank 0 steps while the others save a checkpoint: every rank throws instead of pairing the two
    // operations' collectives and blocking.
    if (P > 1) {
      std::ostringstream sink;
      std::string message;
      try {
        if (comm.rank() == 0) dist.step(grads);
        else orthopt::save_checkpoint(dist, comm.rank() == 1 ? &sink : nullptr, 1);
      } catch (const orthopt::value_error& e) {
        message = e.what();
      }
      INFO(message);
      CHECK(message.find("the ranks called different collective operations (orthopt::save_checkpoint and "
                         "orthopt::distributed_optimizer::step at once)") != std::string::npos);
      CHECK(testing::snapshot(dist) == before);
    }

    // Afterwards a good step still runs, on every rank.
    m.fill_gradients(2, comm.rank());
    dist.step(grads);
    CHECK(dist.steps_taken() == 2);
  }
}

TEST_CASE("a registration that differs between ranks is refused on every rank", "[mpi]") {
  auto& comm = testing::world();
  model<float> m;
  orthopt::distributed_optimizer<float, backend> dist(comm);
  const auto g = dist.add_group("hidden", orthopt::muon<float, backend>());
  dist.add_param("a", g, m.param(1));
  if (comm.rank() == comm.size() - 1) dist.add_param("b", g, m.param(2));
  else dist.add_param("b", g, m.param(3));
  int refused = 0;
  try {
    dist.finalize();
  } catch (const orthopt::value_error& e) {
    refused = std::string(e.what()).find("different groups or parameters") != std::string::npos ? 1 : 2;
  }
  if (comm.size() > 1) CHECK(refused == 1);
  else CHECK(refused == 0);
  CHECK(testing::all_ranks_min(refused) == testing::all_ranks_max(refused));
  CHECK(dist.finalized() == (comm.size() == 1));
}

TEST_CASE("rule options that differ between ranks are refused by finalize on every rank", "[mpi]") {
  auto& comm = testing::world();
  model<float> m;
  orthopt::distributed_optimizer<float, backend> dist(comm);
  auto options = orthopt::muon_presets::keller();
  if (comm.rank() == comm.size() - 1) options.nesterov = false;
  const auto g = dist.add_group("hidden", orthopt::muon<float, backend>(options));
  dist.add_param("a", g, m.param(1));
  std::string message;
  try {
    dist.finalize();
  } catch (const orthopt::value_error& e) {
    message = e.what();
  }
  INFO(message);
  if (comm.size() > 1) {
    CHECK(message.find("the ranks' settings differ: group 'hidden' has nesterov = 0 on rank " +
                       std::to_string(comm.size() - 1) + " but 1 on rank 0") != std::string::npos);
  } else {
    CHECK(message.empty());
  }
  const auto refused = static_cast<int>(!message.empty());
  CHECK(testing::all_ranks_min(refused) == testing::all_ranks_max(refused));
  CHECK(dist.finalized() == (comm.size() == 1));
  CHECK((comm.size() == 1 || !dist.has_state(orthopt::param_id{0})));
}

TEST_CASE("bound gradients step like gradients passed in", "[mpi]") {
  auto& comm = testing::world();
  model<float> a, b;
  orthopt::distributed_optimizer<float, backend> da(comm), db(comm);
  register_model(da, a, rule_cases()[5]);
  register_model(db, b, rule_cases()[5]);
  for (std::size_t t = 0; t < b.specs.size(); ++t) db.bind_gradient(orthopt::param_id{t}, b.grad(t));
  for (std::int64_t s = 0; s < 5; ++s) {
    a.fill_gradients(s);
    b.fill_gradients(s);
    const auto g = a.gradient_list();
    da.step(g);
    db.step();
  }
  CHECK(bytes_of(a) == bytes_of(b));
}

TEST_CASE("checkpoints: saved on every rank count, resumed on fewer ranks and in one process", "[mpi]") {
  // Save after 7 steps on all P ranks; resume on P, 2 and 1 of them (sub-communicators), and in a plain
  // single-process optimizer; each must reach the uninterrupted run's parameters after 20 steps, bit
  // for bit. A single-process checkpoint loads on all P ranks as well.
  auto& comm = testing::world();
  const int P = comm.size();
  const rule_case c = rule_cases()[4];  // AdaMuon: momentum, second moment and a Newton–Schulz count
  const std::int64_t k = 7, N = 20;

  model<float> full;
  orthopt::optimizer<float, backend> uninterrupted;
  register_model(uninterrupted, full, c);
  uninterrupted.set_ns_steps(orthopt::group_id{0}, 6);
  model<float> at_k;
  for (std::int64_t s = 0; s < N; ++s) {
    if (s == k) at_k.values = full.values;
    full.fill_gradients(s);
    const auto g = full.gradient_list();
    uninterrupted.step(g);
  }

  const std::filesystem::path path = testing::shared_temp_path("distributed-checkpoint");
  {
    model<float> m;
    orthopt::distributed_optimizer<float, backend> dist(comm);
    register_model(dist, m, c);
    dist.finalize();
    dist.set_ns_steps(orthopt::group_id{0}, 6);
    for (std::int64_t s = 0; s < k; ++s) {
      m.fill_gradients(s);
      const auto g = m.gradient_list();
      dist.step(g);
    }
    CHECK(bytes_of(m) == bytes_of(at_k));
    std::ofstream out;
    if (comm.rank() == 0) out.open(path, std::ios::binary);
    orthopt::save_checkpoint(dist, comm.rank() == 0 ? &out : nullptr);
  }

  // Resume on sub-groups of 1, 2 and P ranks.
  for (const int ranks : {1, 2, P}) {
    if (ranks > P) continue;
    INFO("resumed on " << ranks << " of " << P << " ranks");
    testing::sub_communicator sub(ranks);
    int differs = 0;
    if (sub.member()) {
      model<float> m;
      m.values = at_k.values;
      orthopt::distributed_optimizer<float, backend> dist(*sub);
      register_model(dist, m, c);
      std::ifstream in;
      if (sub->rank() == 0) in.open(path, std::ios::binary);
      orthopt::load_checkpoint(dist, sub->rank() == 0 ? &in : nullptr);
      for (std::int64_t s = k; s < N; ++s) {
        m.fill_gradients(s);
        const auto g = m.gradient_list();
        dist.step(g);
      }
      differs = bytes_of(m) == bytes_of(full) ? 0 : 1;
      if (dist.steps_taken() != N) differs = 1;
    }
    CHECK(testing::all_ranks_max(differs) == 0);
  }

  // A single-process optimizer loads the distributed checkpoint...
  int differs = 0;
  {
    model<float> m;
    m.values = at_k.values;
    orthopt::optimizer<float, backend> single;
    register_model(single, m, c);
    std::ifstream in(path, std::ios::binary);
    orthopt::load_checkpoint(single, in);
    for (std::int64_t s = k; s < N; ++s) {
      m.fill_gradients(s);
      const auto g = m.gradient_list();
      single.step(g);
    }
    differs = bytes_of(m) == bytes_of(full) ? 0 : 1;
    // ... and its own checkpoint loads on all P ranks (resharding from one to P).
    std::ostringstream saved;
    model<float> again;
    again.values = at_k.values;
    orthopt::optimizer<float, backend> fresh;
    register_model(fresh, again, c);
    std::ifstream in2(path, std::ios::binary);
    orthopt::load_checkpoint(fresh, in2);
    orthopt::save_checkpoint(fresh, saved);
    const std::string bytes = saved.str();
    std::ifstream original(path, std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(original)), std::istreambuf_iterator<char>());
    CHECK(bytes == file);  // the distributed checkpoint is byte for byte the single-process one
    model<float> m2;
    m2.values = at_k.values;
    orthopt::distributed_optimizer<float, backend> dist(comm);
    register_model(dist, m2, c);
    std::istringstream in3(bytes);
    orthopt::load_checkpoint(dist, comm.rank() == 0 ? &in3 : nullptr);
    for (std::int64_t s = k; s < N; ++s) {
      m2.fill_gradients(s);
      const auto g = m2.gradient_list();
      dist.step(g);
    }
    if (bytes_of(m2) != bytes_of(full)) differs += 2;
  }
  CHECK(testing::all_ranks_max(differs) == 0);

  // A damaged checkpoint is refused on every rank, with nothing changed.
  {
    model<float> m;
    m.values = at_k.values;
    orthopt::distributed_optimizer<float, backend> dist(comm);
    register_model(dist, m, c);
    dist.finalize();
    const auto before = testing::snapshot(dist);
    std::ifstream in(path, std::ios::binary);
    std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    file[file.size() / 2] = static_cast<char>(file[file.size() / 2] ^ 0x10);
    std::istringstream damaged(file);
    int refused = 0;
    try {
      orthopt::load_checkpoint(dist, comm.rank() == 0 ? &damaged : nullptr);
    } catch (const orthopt::value_error& e) {
      refused = std::string(e.what()).find("checksum") != std::string::npos ? 1 : 2;
    }
    CHECK(refused == 1);
    CHECK(testing::all_ranks_min(refused) == 1);
    CHECK(testing::snapshot(dist) == before);

    // A checkpoint of another model (one parameter fewer) is refused by name.
    model<float> other;
    orthopt::optimizer<float, backend> smaller;
    const auto g = smaller.add_group("hidden", matrix_rule<float>(c));
    smaller.add_group("adamw", orthopt::adamw<float, backend>(orthopt::adamw_presets::torch()));
    smaller.add_param(other.specs[0].name, g, other.param(0));
    std::ostringstream out;
    orthopt::save_checkpoint(smaller, out);
    std::istringstream wrong(out.str());
    refused = 0;
    try {
      orthopt::load_checkpoint(dist, comm.rank() == 0 ? &wrong : nullptr);
    } catch (const orthopt::value_error& e) {
      refused = 1;
    }
    CHECK(testing::all_ranks_min(refused) == 1);
    CHECK(testing::snapshot(dist) == before);
  }
  comm_barrier();
  if (comm.rank() == 0) std::filesystem::remove(path);
}

TEST_CASE("registration errors name the offending values and leave the optimizer unchanged", "[mpi]") {
  auto& comm = testing::world();
  model<float> m;
  orthopt::distributed_optimizer<float, backend> dist(comm);
  const auto g = dist.add_group("hidden", orthopt::muon<float, backend>());
  dist.add_param("a", g, m.param(1));
  CHECK_THROWS_WITH(dist.add_param("a", g, m.param(2)), Catch::Contains("exists already"));
  CHECK_THROWS_WITH(dist.add_param("alias", g, m.param(1)), Catch::Contains("shares memory with parameter 'a'"));
  CHECK_THROWS_WITH(dist.add_param("x", orthopt::group_id{5}, m.param(2)), Catch::Contains("group index 5"));
  CHECK_THROWS_WITH(dist.owner(orthopt::param_id{0}), Catch::Contains("finalize"));
  CHECK(dist.param_count() == 1);
  dist.finalize();
  CHECK_THROWS_WITH(dist.add_param("late", g, m.param(2)), Catch::Contains("finalized"));
  CHECK_THROWS_WITH(dist.set_ns_steps(g, 0), Catch::Contains("at least 1"));
  // Gradients that share memory with a parameter are refused on every rank.
  std::vector<orthopt::batch_view<const float>> aliased{m.param(1).as_const_batch()};
  CHECK_THROWS_WITH(dist.step(aliased), Catch::Contains("shares memory with parameter 'a'"));
  CHECK(dist.steps_taken() == 0);
}

TEST_CASE("the per-parameter API is the single-process optimizer's, before and after finalize", "[mpi]") {
  // Both optimizers are the same parameter registry: Newton–Schulz counts per parameter and per group,
  // in-call stopping and residual recording are set before finalize() and reach the owners' states;
  // the trajectory then equals the single-process optimizer's with the same settings, bit for bit.
  auto& comm = testing::world();
  const rule_case c = make_case<orthopt::muon>("muon keller", orthopt::muon_presets::keller());
  model<double> dm, rm;
  orthopt::distributed_optimizer<double, backend> dist(comm, {orthopt::gradient_averaging::none, std::size_t{4096}});
  orthopt::optimizer<double, backend> ref;
  register_model(dist, dm, c);
  register_model(ref, rm, c);
  const auto hidden = *dist.find_group("hidden");
  const auto fc = *dist.find_param("blocks.0.mlp.fc.weight");
  const auto head = *dist.find_param("lm_head.weight");
  for (auto* opt : std::initializer_list<orthopt::param_registry<double, backend>*>{&dist, &ref}) {
    opt->set_ns_steps(hidden, 4);
    opt->set_ns_steps(fc, 7);
    opt->set_ns_stop_tolerance(hidden, 1e-3);
    opt->record_ns_residuals(hidden, true);
  }
  const int fc_steps_before = dist.ns_steps(fc);
  const int qkv_steps_before = dist.ns_steps(*dist.find_param("blocks.0.attn.qkv.weight"));
  std::string head_refusal;
  try {
    (void)dist.ns_steps(head);
  } catch (const orthopt::value_error& e) {
    head_refusal = e.what();
  }
  const bool routing_same = dist.routing_table() == ref.routing_table();
  const bool state_before = dist.has_state(fc);
  step_both(dist, dm, ref, rm, orthopt::gradient_averaging::none, 3);
  int differences = count_differences(dist, dm, ref, rm);
  int owned_checked = 0, residuals_recorded = 0;
  std::string foreign_refusal;
  bool saw_foreign = false;
  for (std::size_t i = 0; i < dist.param_count(); ++i) {
    const orthopt::param_id p{i};
    if (!dist.owns(p)) {
      saw_foreign = true;
      try {
        (void)dist.state(p);
      } catch (const orthopt::value_error& e) {
        foreign_refusal = e.what();
      }
      continue;
    }
    ++owned_checked;
    if (dist.group_of(p) == hidden) {
      if (dist.state(p).ns_plan()->steps() != ref.state(p).ns_plan()->steps()) ++differences;
      if (dist.ns_residuals(p) != ref.ns_residuals(p)) ++differences;
      residuals_recorded += dist.ns_residuals(p).empty() ? 0 : 1;
    }
  }
  CHECK(differences == 0);
  CHECK(fc_steps_before == 7);
  CHECK(qkv_steps_before == 4);
  CHECK_THAT(head_refusal, Catch::Contains("lm_head.weight") && Catch::Contains("without a Newton–Schulz plan"));
  CHECK(routing_same);
  CHECK_FALSE(state_before);
  CHECK(testing::all_ranks_sum(owned_checked) == static_cast<std::int64_t>(dist.param_count()));
  CHECK(testing::all_ranks_sum(residuals_recorded) >= 1);
  if (saw_foreign) CHECK_THAT(foreign_refusal, Catch::Contains("does not live here"));
}

TEST_CASE("averaging gradients at the rules' limit does not overflow at any rank count", "[mpi][overflow]") {
  // Every rank passes 8e37 in float, below the 8.5e37 a Muon step takes: the average is 8e37. Summing
  // before dividing overflowed at 5 ranks (registered below at 5 ranks too) and refused the step,
  // naming an Inf nobody passed.
  auto& comm = testing::world();
  orthopt::distributed_optimizer<float, backend> dist(comm, {orthopt::gradient_averaging::average, std::size_t{4096}});
  const auto g = dist.add_group("hidden", orthopt::muon<float, backend>());
  std::vector<float> w(8 * 12, 0.5f), grad(8 * 12, 8e37f);
  dist.add_param("w", g, orthopt::row_major_view(w.data(), 8, 12));
  const std::vector<orthopt::batch_view<const float>> grads = {
      orthopt::batch_view<const float>{orthopt::row_major_view<const float>(grad.data(), 8, 12), 1, 0}};
  std::string refusal;
  try {
    dist.step(grads);
  } catch (const orthopt::error& e) {
    refusal = e.what();
  }
  INFO(refusal);
  CHECK(refusal.empty());
  CHECK(dist.steps_taken() == 1);
  for (const float x : w) CHECK(std::isfinite(x));
}
