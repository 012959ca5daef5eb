// SPDX-License-Identifier: Apache-2.0
//
// A data-parallel optimizer over many processes: the same parameters and groups as orthopt::optimizer,
// registered identically on every rank; each matrix owned by one rank, which alone keeps its state and
// runs its rule; the updated parameters sent to every rank with bucketed collectives. The scheme of
// KellerJordan/Muon's distributed step and of ZeRO-1 optimizer sharding, with a balanced assignment.
//
//   MPI_Init(&argc, &argv);
//   orthopt::mpi_communicator comm(MPI_COMM_WORLD);            // orthopt/mpi.hpp; borrowed, never freed
//   orthopt::distributed_optimizer<float, orthopt::eigen_backend> opt(comm);
//   auto hidden = opt.add_group("hidden", orthopt::muon<float, orthopt::eigen_backend>(...));
//   auto rest = opt.add_group("adamw", orthopt::adamw<float, orthopt::eigen_backend>(...));
//   orthopt::param_router router(hidden, rest);
//   opt.add_param("blocks.0.mlp.fc.weight", orthopt::make_view(W_fc), router);   // on every rank
//   ...
//   opt.step(gradients);   // every rank, the same averaged gradients (or options.averaging = average)
//
// The contract, in short (docs/distributed.md is the master of the long form: the protocol of a step
// collective by collective, the ownership rule, averaging, checkpoints and the measurements):
// - Every member marked "collective" is called by every rank together, and every rank registers the same
//   groups and parameters in the same order (finalize() checks a fingerprint of the registration) and
//   makes the same settings (finalize() and every step compare a hash of the rule options, scheduled
//   learning rates and Newton–Schulz settings, and name the first that differs).
// - A step is all-or-nothing across ranks: a refusal on any rank (bad shape, NaN/Inf, a bad learning
//   rate, a setting that differs) throws the same exception on every rank, with no parameter and no
//   state changed anywhere.
// - The parameters after a step are bit-identical to optimizer::step's on the same gradients (with
//   averaging: on the pairwise-tree average in rank order), on every rank count.
// - A rank keeps the state of the parameters it owns only; a step allocates nothing in orthopt after the
//   first (the communicator may).
// - Limits: host memory for MPI (a GPU backend needs a device communicator, not provided); float or
//   double; a batch parameter is owned whole; no adaptive Newton–Schulz budget (its commit is global).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <istream>
#include <limits>
#include <numeric>
#include <ostream>
#include <span>
#include <new>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "orthopt/checkpoint.hpp"
#include "orthopt/distributed/communicator.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/optimizer.hpp"

namespace orthopt {

/// How gradients reach the owners.
enum class gradient_averaging : unsigned char {
  none,     ///< the host hands every rank the same, already averaged gradients (its own all-reduce)
  average,  ///< each rank hands its local gradients; orthopt averages them onto the owners (see above)
};

struct distributed_options {
  gradient_averaging averaging = gradient_averaging::none;
  /// The most bytes of one rank's parameters a collective carries (a single larger parameter is sent
  /// alone). Larger buckets mean fewer collectives; the staging memory is a few buckets.
  std::size_t bucket_bytes = std::size_t{16} << 20;
};

/// Which rank owns a parameter, and the cost the assignment balanced.
struct ownership_record {
  std::string name;
  int owner;
  double cost;  ///< the model below, in multiply-adds per step
  index_t rows, cols, count;
};

/// The collectives of one step as seen from this rank. Bytes are payload: what this rank sends to and
/// receives from the other ranks, counted as if point to point (an MPI library may route them through
/// trees or rings; the totals over ranks are what crosses the network in a direct exchange).
struct distributed_traffic {
  std::int64_t collectives = 0;
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
};

/// This rank's share of the memory and the work.
struct distributed_memory {
  std::uint64_t state_bytes = 0;    ///< persistent optimizer state of the owned parameters (checkpoint slots)
  std::uint64_t staging_bytes = 0;  ///< the collectives' buffers and, with averaging, the averaged gradients
  std::size_t params_owned = 0;
  index_t matrices_owned = 0;
  double cost_owned = 0.0;  ///< the ownership cost model's multiply-adds per step on this rank
  double cost_total = 0.0;  ///< the same over all ranks
};

namespace detail {

/// Largest cost first onto the least-loaded rank (ties: the earlier parameter, the lower rank): the
/// longest-processing-time rule, within 4/3 of the best possible maximum load.
inline std::vector<int> assign_owners(std::span<const double> costs, int ranks) {
  std::vector<std::size_t> order(costs.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (std::size_t i : order) {
    const auto least = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(least);
    load[least] += costs[i];
  }
  return owner;
}

/// An output stream buffer appending to a byte vector (a rank's checkpoint records).
class byte_vector_streambuf final : public std::streambuf {
 public:
  explicit byte_vector_streambuf(std::vector<unsigned char>& bytes) : bytes_(bytes) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    bytes_.insert(bytes_.end(), reinterpret_cast<const unsigned char*>(s), reinterpret_cast<const unsigned char*>(s) + n);
    return n;
  }
  int_type overflow(int_type c) override {
    if (!traits_type::eq_int_type(c, traits_type::eof())) bytes_.push_back(static_cast<unsigned char>(c));
    return traits_type::not_eof(c);
  }

 private:
  std::vector<unsigned char>& bytes_;
};

/// z = x + y, in the element type (the averaging tree).
struct add_elements {
  template <class U>
  ORTHOPT_HD U operator()(U x, U y) const noexcept {
    return x + y;
  }
};
/// y = x / d, correctly rounded in the element type (the average's division by the rank count).
struct divide_elements {
  double divisor;
  template <class U>
  ORTHOPT_HD U operator()(U x) const noexcept {
    return x / static_cast<U>(divisor);
  }
};

/// Chunks of at most 2^30 elements for collectives over arbitrarily long byte ranges.
inline constexpr std::size_t collective_chunk = std::size_t{1} << 30;

}  // namespace detail

template <class T, class Backend>
class distributed_optimizer;
template <class T, class Backend>
void save_checkpoint(distributed_optimizer<T, Backend>& opt, std::ostream* out, int root = 0);
template <class T, class Backend>
void load_checkpoint(distributed_optimizer<T, Backend>& opt, std::istream* in, int root = 0);

/// The data-parallel optimizer: the parameter registry (orthopt/param_registry.hpp) — the same groups,
/// parameters, routing and Newton–Schulz settings as orthopt::optimizer, with the same members — whose
/// states live on the owning ranks, a collective step, and collective checkpoints.
template <class T, class Backend>
class distributed_optimizer : public param_registry<T, Backend> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "orthopt::distributed_optimizer: the collectives carry float or double parameters");
  using registry = param_registry<T, Backend>;

 public:
  using typename registry::gradient_view;
  using typename registry::group_type;
  using typename registry::rule_type;
  using typename registry::state_type;

  /// `comm` is borrowed: it must outlive the optimizer. `be` holds the staging buffers and runs the
  /// packing copies (each rule keeps its own backend handle).
  explicit distributed_optimizer(communicator& comm, distributed_options options = {}, const Backend& be = Backend{})
      : registry("orthopt::distributed_optimizer", /*states_at_registration=*/false),
        comm_(&comm),
        options_(options),
        be_(be),
        rank_(comm.rank()),
        ranks_(comm.size()) {
    if (ranks_ < 1 || rank_ < 0 || rank_ >= ranks_) {
      throw value_error("orthopt::distributed_optimizer: the communicator reports rank " + std::to_string(rank_) +
                        " of " + std::to_string(ranks_));
    }
    if (options_.bucket_bytes < sizeof(T)) {
      throw value_error("orthopt::distributed_optimizer: bucket_bytes = " + std::to_string(options_.bucket_bytes) +
                        " holds no element");
    }
  }
  distributed_optimizer(const distributed_optimizer&) = delete;
  distributed_optimizer& operator=(const distributed_optimizer&) = delete;
  distributed_optimizer(distributed_optimizer&&) noexcept = default;
  distributed_optimizer& operator=(distributed_optimizer&&) noexcept = default;

  // Setup is the registry's (add_group, add_param, bind_gradient, set_ns_steps, …): local calls that
  // every rank makes alike, in the same order, before finalize(). Newton–Schulz settings made before
  // finalize() are part of the ownership costs and take effect on the owners' states.

  /// Collective. Verifies that every rank registered the same groups and parameters (a fingerprint),
  /// assigns owners, makes the owned parameters' states and the staging buffers. The first step(),
  /// save or load calls it. All-or-nothing across ranks; later calls do nothing. add_group and
  /// add_param are refused after it.
  void finalize() {
    if (finalized_) return;
    const char* who = "orthopt::distributed_optimizer::finalize";
    const std::size_t n = this->params_.size();
    std::vector<double> costs(n);
    for (std::size_t i = 0; i < n; ++i) costs[i] = cost_of(i);
    const std::vector<int> owners = detail::assign_owners(costs, ranks_);

    // 0. Every rank is finalizing (not, say, stepping an optimizer it finalized before).
    agree(nullptr, who);
    // 1. The same registration everywhere: one allreduce(max) of the fingerprint and its complement
    //    gives every rank both the largest and the smallest fingerprint.
    std::uint64_t print[2];
    print[0] = fingerprint(owners);
    print[1] = ~print[0];
    comm_->allreduce(print, 2, element_kind::uint64, reduce_op::max);
    if (print[0] != ~print[1]) {
      throw value_error(std::string(who) + ": the ranks registered different groups or parameters (names, order, "
                        "shapes or rule kinds differ; fingerprint " + detail::hex64(fingerprint(owners)) +
                        " on rank " + std::to_string(rank_) + "); every rank must register the same model");
    }

    // 2. The owned parameters' states, the buckets and the staging buffers. On failure the states are
    //    dropped again, so the optimizer is as it was.
    std::exception_ptr failure;
    std::vector<placement> where(n);
    layout plan;
    try {
      for (std::size_t i = 0; i < n; ++i) {
        if (owners[i] == rank_) this->make_state(i);
      }
      plan = make_layout(owners, costs, where);
    } catch (...) {
      failure = std::current_exception();
    }
    try {
      agree(failure, who, settings::compared);  // the registration matched, so the settings line up
    } catch (...) {
      this->drop_states();
      throw;
    }
    layout_ = std::move(plan);
    placement_ = std::move(where);
    finalized_ = true;
    this->groups_closed_ =
        "the optimizer is finalized (by finalize(), a step, save or load); register every group and parameter before";
    this->params_closed_ =
        "comes after finalize(): the optimizer is finalized (by finalize(), a step, save or load); register every "
        "group and parameter before";
  }
  [[nodiscard]] bool finalized() const noexcept { return finalized_; }

  // ---- Stepping (collective; allocates nothing after the first) -----------------------------------

  /// One step of every parameter, gradients[i] for the i-th registered parameter (this rank's own
  /// gradients with averaging, else the averaged ones, the same on every rank).
  void step(std::span<const gradient_view> gradients) {
    finalize();
    std::exception_ptr failure;
    if (gradients.size() != this->params_.size()) {
      failure = std::make_exception_ptr(value_error("orthopt::distributed_optimizer::step: " +
                                                    std::to_string(gradients.size()) + " gradients for " +
                                                    std::to_string(this->params_.size()) + " parameters; nothing was changed"));
      step_impl(failure, [](std::size_t) { return gradient_view{}; });
      return;
    }
    step_impl(failure, [gradients](std::size_t i) { return gradients[i]; });
  }
  /// One step with the gradients bound by bind_gradient.
  void step() {
    finalize();
    std::exception_ptr failure;
    for (const auto& e : this->params_) {
      if (e.bound_gradient.count == 0) {
        failure = std::make_exception_ptr(value_error("orthopt::distributed_optimizer::step: parameter '" + e.name +
                                                      "' has no bound gradient; nothing was changed"));
        break;
      }
    }
    step_impl(failure, [this](std::size_t i) { return this->params_[i].bound_gradient; });
  }

  // ---- Inspection ------------------------------------------------------------------------------

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] const distributed_options& options() const noexcept { return options_; }

  /// The rank that owns p (finalize() first). Its state lives there only (has_state, state).
  [[nodiscard]] int owner(param_id p) const {
    this->check_param(p, "owner");
    require_finalized("owner");
    return placement_[p.index].owner;
  }
  [[nodiscard]] bool owns(param_id p) const { return owner(p) == rank_; }
  /// Every parameter's owner and cost, in registration order (finalize() first).
  [[nodiscard]] std::vector<ownership_record> ownership() const {
    require_finalized("ownership");
    std::vector<ownership_record> out;
    out.reserve(this->params_.size());
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      const auto& e = this->params_[i];
      out.push_back({e.name, placement_[i].owner, placement_[i].cost, e.param.rows(), e.param.cols(), e.param.count});
    }
    return out;
  }
  /// This rank's memory and work (finalize() first).
  [[nodiscard]] distributed_memory memory() const {
    require_finalized("memory");
    distributed_memory m;
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      m.cost_total += placement_[i].cost;
      const auto& e = this->params_[i];
      if (!e.state) continue;
      for (const auto& s : e.state->slots()) m.state_bytes += s.element_bytes * s.elements;
      m.matrices_owned += e.state->count();
      m.params_owned += 1;
      m.cost_owned += placement_[i].cost;
    }
    m.staging_bytes = (averaged_.size() + send_.size() + recv_.size()) * sizeof(T);
    return m;
  }
  /// The collectives a step runs and the bytes this rank exchanges (the same every step; finalize() first).
  [[nodiscard]] distributed_traffic step_traffic() const {
    require_finalized("step_traffic");
    return layout_.traffic;
  }

 private:
  friend void save_checkpoint<T, Backend>(distributed_optimizer<T, Backend>&, std::ostream*, int);
  friend void load_checkpoint<T, Backend>(distributed_optimizer<T, Backend>&, std::istream*, int);

  /// Where a parameter lives in the collectives (made at finalize()).
  struct placement {
    int owner = 0;
    double cost = 0.0;
    std::size_t bucket = 0;         // of the owner's buckets
    std::size_t offset = 0;         // elements into that bucket
    std::size_t elements = 0;       // rows·cols·count
    std::size_t stream_offset = 0;  // elements into the owner's stream (all its buckets in order)
  };
  /// Buckets and collective counts, identical on every rank (made at finalize()).
  struct layout {
    std::vector<std::vector<std::size_t>> owned;          // per rank: its parameters, registration order
    std::vector<std::vector<std::size_t>> round_counts;   // per round: each rank's bucket size (elements)
    std::vector<std::vector<std::size_t>> round_mine;     // per round: P copies of this rank's bucket size
    std::vector<std::size_t> bucket_start;                // per round: this rank's bucket offset in its stream
    std::size_t owned_elements = 0;
    std::size_t send_elements = 0, recv_elements = 0;
    distributed_traffic traffic;
  };

  /// Whether steps average: on one rank the average of one gradient is that gradient (x / 1 is exact),
  /// so the host's views go to the rule directly, without staging or collectives.
  [[nodiscard]] bool averages() const noexcept { return options_.averaging == gradient_averaging::average && ranks_ > 1; }

  /// Parameter i's ownership cost: what its rule says a step costs (rule_base::step_cost) with the
  /// parameter's Newton–Schulz count.
  double cost_of(std::size_t i) const {
    const auto& e = this->params_[i];
    const int ns_steps = this->current_ns_steps(i);
    return std::visit([&](const auto& r) { return r.step_cost(e.param.rows(), e.param.cols(), e.param.count, ns_steps); },
                      this->groups_[e.group.index].rule);
  }

  /// FNV-1a over what every rank must agree on: the options, the groups' names and rules, every
  /// parameter's name, group, shape and owner.
  std::uint64_t fingerprint(const std::vector<int>& owners) const {
    fnv1a64 h;
    const auto add_u64 = [&](std::uint64_t v) { h.update(&v, sizeof v); };
    const auto add_text = [&](const std::string& s) {
      add_u64(s.size());
      h.update(s.data(), s.size());
    };
    add_u64(static_cast<std::uint64_t>(ranks_));
    add_u64(static_cast<std::uint64_t>(options_.averaging));
    add_u64(options_.bucket_bytes);
    add_u64(this->groups_.size());
    for (const auto& g : this->groups_) {
      add_text(g.name);
      add_u64(static_cast<std::uint64_t>(g.kind()));
    }
    add_u64(this->params_.size());
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      const auto& e = this->params_[i];
      add_text(e.name);
      add_u64(e.group.index);
      add_u64(static_cast<std::uint64_t>(e.param.rows()));
      add_u64(static_cast<std::uint64_t>(e.param.cols()));
      add_u64(static_cast<std::uint64_t>(e.param.count));
      add_u64(static_cast<std::uint64_t>(owners[i]));
    }
    return h.value();
  }

  /// Buckets, rounds, staging sizes and the traffic of a step, from the owners; fills `where`.
  /// Allocates the staging.
  layout make_layout(const std::vector<int>& owners, const std::vector<double>& costs, std::vector<placement>& where) {
    layout L;
    const auto P = static_cast<std::size_t>(ranks_);
    const auto me = static_cast<std::size_t>(rank_);
    const std::size_t bucket_elements = std::max<std::size_t>(1, options_.bucket_bytes / sizeof(T));
    L.owned.assign(P, {});
    std::vector<std::vector<std::size_t>> bucket_sizes(P);
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      const auto r = static_cast<std::size_t>(owners[i]);
      const auto& param = this->params_[i].param;
      placement& e = where[i];
      e.owner = owners[i];
      e.cost = costs[i];
      e.elements = static_cast<std::size_t>(param.rows() * param.cols() * param.count);
      L.owned[r].push_back(i);
      auto& buckets = bucket_sizes[r];
      if (buckets.empty() || (buckets.back() > 0 && buckets.back() + e.elements > bucket_elements)) buckets.push_back(0);
      e.bucket = buckets.size() - 1;
      e.offset = buckets.back();
      buckets.back() += e.elements;
    }
    std::size_t rounds = 0;
    for (const auto& b : bucket_sizes) rounds = std::max(rounds, b.size());
    L.round_counts.assign(rounds, std::vector<std::size_t>(P, 0));
    L.round_mine.assign(rounds, std::vector<std::size_t>(P, 0));
    L.bucket_start.assign(rounds, 0);
    for (std::size_t r = 0; r < P; ++r) {
      std::size_t start = 0;
      for (std::size_t k = 0; k < bucket_sizes[r].size(); ++k) {
        L.round_counts[k][r] = bucket_sizes[r][k];
        if (r == me) L.bucket_start[k] = start;
        start += bucket_sizes[r][k];
      }
      if (r == me) L.owned_elements = start;
    }
    for (std::size_t i = 0; i < where.size(); ++i) {
      placement& e = where[i];
      e.stream_offset = e.offset;
      if (static_cast<std::size_t>(owners[i]) == me) e.stream_offset += L.bucket_start[e.bucket];
    }
    const bool averaging = averages();
    const bool gathering = P > 1;
    distributed_traffic& t = L.traffic;
    t.collectives = averaging ? 2 : 1;
    t.bytes_sent = t.bytes_received = static_cast<std::uint64_t>(t.collectives) * agreement_bytes;
    for (std::size_t k = 0; k < rounds; ++k) {
      const auto& c = L.round_counts[k];
      const std::size_t all = std::accumulate(c.begin(), c.end(), std::size_t{0});
      std::fill(L.round_mine[k].begin(), L.round_mine[k].end(), c[me]);
      if (averaging) {
        L.send_elements = std::max(L.send_elements, all);
        L.recv_elements = std::max(L.recv_elements, P * c[me]);
        t.collectives += 1;
        t.bytes_sent += (all - c[me]) * sizeof(T);
        t.bytes_received += (P - 1) * c[me] * sizeof(T);
      }
      if (gathering) {
        L.send_elements = std::max(L.send_elements, c[me]);
        L.recv_elements = std::max(L.recv_elements, all);
        t.collectives += 1;
        t.bytes_sent += (P - 1) * c[me] * sizeof(T);
        t.bytes_received += (all - c[me]) * sizeof(T);
      }
    }
    averaged_ = be_.template allocate<T>(static_cast<index_t>(averaging ? std::max<std::size_t>(1, L.owned_elements) : 0));
    send_ = be_.template allocate<T>(static_cast<index_t>(L.send_elements));
    recv_ = be_.template allocate<T>(static_cast<index_t>(L.recv_elements));
    return L;
  }


  /// save_checkpoint: writes one checkpoint of the whole optimizer to `out`, which only rank `root` uses (the others may
  /// pass nullptr). The file is exactly what optimizer's save_checkpoint writes for the same parameters
  /// (orthopt/checkpoint.hpp), so it loads into a distributed_optimizer on any number of ranks or into a
  /// single-process optimizer. Each rank serializes its own parameters; the root receives them rank by
  /// rank and writes them in registration order. Memory on the root: the whole checkpoint for the
  /// duration of the call; elsewhere, the rank's own records. A failure anywhere (a failing stream on
  /// the root) throws the same exception on every rank.
  void save_to(std::ostream* out, int root) {
    finalize();
    const char* who = "orthopt::save_checkpoint";
    check_root(root, who);
    std::exception_ptr failure;
    std::vector<unsigned char> mine;
    const std::vector<std::size_t>& owned_here = layout_.owned[static_cast<std::size_t>(rank_)];
    std::vector<std::uint64_t> record_sizes(owned_here.size());
    try {
      if (rank_ == root && out == nullptr) throw value_error(std::string(who) + ": the root rank has no stream (nullptr)");
      detail::byte_vector_streambuf sink(mine);
      std::ostream records(&sink);
      detail::checkpoint_writer w(records);
      std::vector<unsigned char> staging;
      for (std::size_t k = 0; k < owned_here.size(); ++k) {
        const std::size_t before = mine.size();
        const param_id p{owned_here[k]};
        detail::write_param_record(w, this->param_name(p), this->state(p), staging);
        record_sizes[k] = mine.size() - before;
      }
    } catch (...) {
      failure = std::current_exception();
    }
    agree(failure, who);

    // The root receives every other rank's record sizes and bytes, rank by rank.
    std::vector<std::vector<unsigned char>> records(rank_ == root ? static_cast<std::size_t>(ranks_) : 0);
    std::vector<std::vector<std::uint64_t>> sizes(records.size());
    for (int r = 0; r < ranks_; ++r) {
      if (r == root) continue;
      const std::size_t owned = layout_.owned[static_cast<std::size_t>(r)].size();
      if (rank_ == r) {
        std::uint64_t total = mine.size();
        comm_->send(&total, 1, element_kind::uint64, root);
        if (owned > 0) comm_->send(record_sizes.data(), owned, element_kind::uint64, root);
        send_bytes(mine.data(), mine.size(), root);
      } else if (rank_ == root) {
        std::uint64_t total = 0;
        comm_->recv(&total, 1, element_kind::uint64, r);
        sizes[static_cast<std::size_t>(r)].resize(owned);
        if (owned > 0) comm_->recv(sizes[static_cast<std::size_t>(r)].data(), owned, element_kind::uint64, r);
        records[static_cast<std::size_t>(r)].resize(static_cast<std::size_t>(total));
        recv_bytes(records[static_cast<std::size_t>(r)].data(), static_cast<std::size_t>(total), r);
      }
    }
    failure = nullptr;
    if (rank_ == root) {
      records[static_cast<std::size_t>(root)] = std::move(mine);
      sizes[static_cast<std::size_t>(root)] = std::move(record_sizes);
      try {
        write_gathered(*out, records, sizes);
      } catch (const std::ios_base::failure& e) {
        failure = std::make_exception_ptr(value_error(std::string(who) + ": writing to the stream failed (" + e.what() + ")"));
      } catch (...) {
        failure = std::current_exception();
      }
    }
    agree(failure, who);
  }

  /// load_checkpoint: replaces the state with a checkpoint read from `in` by rank `root` (the others may pass nullptr):
  /// one written by save_checkpoint on any number of ranks, or by a single-process optimizer with the
  /// same parameters. The root reads and verifies it (orthopt/checkpoint.hpp), broadcasts the bytes,
  /// and every rank checks the whole checkpoint against the registration and takes the states of the
  /// parameters it owns: loading on another rank count reshards. All-or-nothing across ranks. Memory:
  /// every rank holds the checkpoint's bytes for the duration of the call.
  void load_from(std::istream* in, int root) {
    finalize();
    const char* who = "orthopt::load_checkpoint";
    check_root(root, who);
    agree(nullptr, who);  // every rank is loading
    // The length this registration's checkpoint has: the sum of the owners' record lengths.
    std::uint64_t expected = detail::payload_bytes_of(*this) - detail::payload_fixed_bytes;
    comm_->allreduce(&expected, 1, element_kind::uint64, reduce_op::sum);
    expected += detail::payload_fixed_bytes;

    std::exception_ptr failure;
    detail::checkpoint_image image;
    if (rank_ == root) {
      try {
        if (in == nullptr) throw value_error(std::string(who) + ": the root rank has no stream (nullptr)");
        image = detail::read_checkpoint_image<T>(*in, expected);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    agree(failure, who);
    std::uint64_t header[2] = {image.version, image.payload.size()};
    comm_->broadcast(header, 2, element_kind::uint64, root);
    if (rank_ != root) {
      image.version = static_cast<std::uint32_t>(header[0]);
      image.payload.resize(static_cast<std::size_t>(header[1]));
    }
    for (std::size_t done = 0; done < image.payload.size(); done += detail::collective_chunk) {
      comm_->broadcast(image.payload.data() + done, std::min(detail::collective_chunk, image.payload.size() - done),
                       element_kind::byte, root);
    }

    failure = nullptr;
    detail::parsed_checkpoint parsed;
    detail::checkpoint_load_plan<T, Backend> plan;
    try {
      parsed = detail::parse_checkpoint(image);
      plan = detail::plan_checkpoint_load(*this, image, parsed, false);
    } catch (...) {
      failure = std::current_exception();
    }
    agree(failure, who);
    detail::commit_checkpoint_load(*this, image, parsed, plan);
  }

  /// Checks, agreement, averaging, updates, gathering: see the file comment. `failure`: a refusal
  /// found before (a wrong gradient count), which this rank contributes to the agreement.
  template <class GradientAt>
  void step_impl(std::exception_ptr failure, GradientAt gradient_at) {
    const char* who = "orthopt::distributed_optimizer::step";
    if (averages()) {
      // What every rank can check of its own gradients without reading values, agreed on before any
      // is sent; the owners check the values of the averages.
      if (!failure) {
        try {
          this->check_gradient_views(gradient_at);
        } catch (...) {
          failure = std::current_exception();
        }
      }
      agree(failure, who);
      average_gradients(gradient_at);
      // The owners check the averages, which do not say whose gradient a NaN or Inf came from: after
      // a value refusal (on every rank alike) the ranks look in their own gradients and name it.
      run_checked_step(
          [&](std::size_t i) {
            return placement_[i].owner == rank_ ? packed(i, averaged_.data() + placement_[i].stream_offset).as_const_batch()
                                                : gradient_at(i);
          },
          who, nullptr, [&] { return nonfinite_contribution(gradient_at); });
    } else {
      run_checked_step(gradient_at, who, failure, [] { return std::string(); });
    }
    if (ranks_ > 1) gather_parameters();
  }

  /// The registry's step transaction with an agreement between the check and the updates: every rank
  /// checks the learning rates and the gradients' views, the owners the values; then all apply or none.
  /// `explain_value_refusal` (collective: every rank calls it, after a value_error of the agreement)
  /// returns text to append to that error's message.
  template <class GradientAt, class Explain>
  void run_checked_step(GradientAt gradient_at, const char* who, std::exception_ptr failure, Explain explain_value_refusal) {
    bool checked = false;
    if (!failure) {
      try {
        this->check_step(gradient_at);
        checked = true;
      } catch (...) {
        failure = std::current_exception();
      }
    }
    try {
      // With the settings: check_step has set every group's rule lr to this step's scheduled value.
      agree(failure, who, settings::compared);
    } catch (const value_error& e) {
      if (checked) this->abandon_checked_step();
      const std::string more = explain_value_refusal();
      if (more.empty()) throw;
      throw value_error(e.what() + more);
    } catch (...) {
      if (checked) this->abandon_checked_step();
      throw;
    }
    this->apply_checked_step(gradient_at);
  }

  /// Collective. The first NaN or Inf in the ranks' own gradients (before averaging), of parameters whose
  /// rule checks values: the lowest rank holding one, its parameter and entry, as a sentence to append
  /// to a refusal; "" when there is none (the average overflowed, or the refusal had another cause).
  template <class GradientAt>
  std::string nonfinite_contribution(GradientAt gradient_at) {
    const auto n = static_cast<std::int64_t>(this->params_.size());
    std::int64_t found[4] = {n, 0, 0, 0};  // parameter, batch item, row, column
    double value = 0.0;
    for (std::int64_t i = 0; i < n && found[0] == n; ++i) {
      const auto& e = this->params_[static_cast<std::size_t>(i)];
      const bool checks = std::visit([](const auto& r) { return r.options().check_finite; }, this->groups_[e.group.index].rule);
      if (!checks) continue;
      const gradient_view g = gradient_at(static_cast<std::size_t>(i));
      for (index_t k = 0; k < g.count; ++k) {
        if (const auto bad = find_nonfinite(be_, g[k])) {
          found[0] = i, found[1] = k, found[2] = bad->row, found[3] = bad->col;
          value = bad->value;
          break;
        }
      }
    }
    // The lowest rank with one, then that rank's finding (the others contribute the largest values).
    std::int64_t holder[1] = {found[0] < n ? rank_ : ranks_};
    comm_->allreduce(holder, 1, element_kind::int64, reduce_op::min);
    if (holder[0] == ranks_) return {};
    const bool mine = holder[0] == rank_;
    constexpr std::int64_t most = std::numeric_limits<std::int64_t>::max();
    std::int64_t what[5] = {mine ? found[0] : most, mine ? found[1] : most, mine ? found[2] : most, mine ? found[3] : most,
                            mine ? (std::isnan(value) ? 0 : value > 0 ? 1 : 2) : most};
    comm_->allreduce(what, 5, element_kind::int64, reduce_op::min);
    const auto& e = this->params_[static_cast<std::size_t>(what[0])];
    static constexpr const char* values[] = {"nan", "inf", "-inf"};
    return " (the gradients are averaged over the ranks; rank " + std::to_string(holder[0]) + "'s own gradient of '" + e.name +
           "' has " + values[what[4]] + " at (" + std::to_string(what[2]) + ", " + std::to_string(what[3]) + ")" +
           (e.param.count > 1 ? " of batch item " + std::to_string(what[1]) : std::string()) + ")";
  }

  /// Round by round: every rank packs, for each owner, its gradients of the owner's bucket; one
  /// alltoallv; the owner divides each of the P contributions by P and sums them as a pairwise tree in
  /// rank order.
  template <class GradientAt>
  void average_gradients(GradientAt gradient_at) {
    const auto P = static_cast<std::size_t>(ranks_);
    const auto me = static_cast<std::size_t>(rank_);
    T* send = send_.data();
    T* recv = recv_.data();
    for (std::size_t k = 0; k < layout_.round_counts.size(); ++k) {
      const auto& counts = layout_.round_counts[k];
      const std::size_t mine = counts[me];
      std::size_t base = 0;
      for (std::size_t q = 0; q < P; ++q) {
        for (std::size_t i : layout_.owned[q]) {
          const placement& e = placement_[i];
          if (e.bucket == k) copy_batch(gradient_at(i), packed(i, send + base + e.offset));
        }
        base += counts[q];
      }
      comm_->alltoallv(send, counts, recv, layout_.round_mine[k], element_kind_of<T>());
      if (mine == 0) continue;
      const auto slice = [&](std::size_t q) { return row_major_view(recv + q * mine, 1, static_cast<index_t>(mine)); };
      // Each contribution divided by P first, then summed: no partial sum exceeds the largest
      // contribution's magnitude, so every gradient within the rules' limits averages without
      // overflow at any rank count (summing first overflowed float at 5 ranks of 8e37 each).
      for (std::size_t q = 0; q < P; ++q) transform(be_, slice(q).as_const(), slice(q), detail::divide_elements{static_cast<double>(P)});
      for (std::size_t stride = 1; stride < P; stride *= 2) {
        for (std::size_t q = 0; q + stride < P; q += 2 * stride) {
          transform(be_, slice(q).as_const(), slice(q + stride).as_const(), slice(q), detail::add_elements{});
        }
      }
      const matrix_view<T> out = row_major_view(averaged_.data() + layout_.bucket_start[k], 1, static_cast<index_t>(mine));
      transform(be_, slice(0).as_const(), out, functors::identity{});
    }
  }

  /// Round by round: every rank packs its bucket of updated parameters; one allgatherv; every rank
  /// copies the other ranks' parameters out.
  void gather_parameters() {
    const auto P = static_cast<std::size_t>(ranks_);
    const auto me = static_cast<std::size_t>(rank_);
    T* send = send_.data();
    T* recv = recv_.data();
    for (std::size_t k = 0; k < layout_.round_counts.size(); ++k) {
      const auto& counts = layout_.round_counts[k];
      for (std::size_t i : layout_.owned[me]) {
        const placement& e = placement_[i];
        if (e.bucket == k) copy_batch(this->params_[i].param.as_const_batch(), packed(i, send + e.offset));
      }
      comm_->allgatherv(send, recv, counts, element_kind_of<T>());
      std::size_t base = 0;
      for (std::size_t q = 0; q < P; ++q) {
        if (q != me) {
          for (std::size_t i : layout_.owned[q]) {
            const placement& e = placement_[i];
            if (e.bucket != k) continue;
            const batch_view<T> src = packed(i, recv + base + e.offset);
            const batch_view<T>& param = this->params_[i].param;
            for (index_t b = 0; b < param.count; ++b) transform(be_, src[b].as_const(), param[b], functors::identity{});
          }
        }
        base += counts[q];
      }
    }
  }

  /// A parameter's matrices packed densely from `at`, in the parameter's own storage order (column-major
  /// when its row stride is the smaller, else row-major), one after another. The averaged gradients
  /// are handed to the rules in this layout: reductions over a matrix (NAMO's norms, the Frobenius
  /// normalization) then visit the elements in the order the host's dense gradients would, so the
  /// results are the bits one process gets.
  batch_view<T> packed(std::size_t i, T* at) const {
    const batch_view<T>& param = this->params_[i].param;
    const index_t rows = param.rows(), cols = param.cols();
    const bool column_major = rows > 1 && cols > 1 && param.first.col_stride > param.first.row_stride;
    const matrix_view<T> first = column_major ? matrix_view<T>(at, rows, cols, 1, rows) : row_major_view(at, rows, cols);
    return {first, param.count, rows * cols};
  }
  void copy_batch(const gradient_view& src, const batch_view<T>& dst) {
    for (index_t b = 0; b < src.count; ++b) transform(be_, src[b], dst[b], functors::identity{});
  }

  enum class settings { ignored, compared };
  /// What an agreement's allreduce carries: 7 int64 (the verdict, the operation, the settings hash).
  static constexpr std::uint64_t agreement_bytes = 7 * sizeof(std::int64_t);

  /// The agreement: one allreduce(min) of (failed ? rank : P), the operation's code and, with
  /// settings::compared, a hash of the settings every rank must share (shared_settings_hash). When
  /// some rank failed, the lowest such rank broadcasts its exception's kind and message, and every rank
  /// throws it; else, when the settings differ, every rank throws a value_error naming the first
  /// differing one (name_differing_setting).
  void agree(std::exception_ptr failure, const char* who, settings compare = settings::ignored) {
    // Tagged with the operation: ranks that called different collective operations (one steps while
    // another saves) meet here first, whatever they called, and all throw instead of pairing the
    // collectives that follow and blocking. The operation code and the settings hash (put_hash) travel
    // beside their negations, so the minimum also gives the maximum: equal everywhere when they match.
    const std::int64_t op = operation_code(who);
    std::int64_t v[7] = {failure ? rank_ : ranks_, op, -op};
    put_hash(compare == settings::compared ? shared_settings_hash() : 0, v + 3);
    comm_->allreduce(v, 7, element_kind::int64, reduce_op::min);
    if (v[1] != -v[2]) {
      throw value_error(std::string(who) + ": the ranks called different collective operations (" +
                        operation_name(v[1]) + " and " + operation_name(-v[2]) +
                        " at once); every rank must make the same calls in the same order; nothing was changed");
    }
    const std::int64_t first = v[0];
    if (first == ranks_) {
      if (!hash_agreed(v + 3)) throw value_error(std::string(who) + ": " + name_differing_setting() + "; nothing was changed");
      return;
    }
    // The failing rank's exception type travels as a code: orthopt's own, and the standard library's
    // (a schedule or callback of the host's may throw any of them; another type arrives as its nearest
    // standard base, std::runtime_error when it has none).
    enum : std::uint64_t {
      kind_shape = 1, kind_value, kind_communication, kind_other, kind_out_of_range, kind_invalid_argument,
      kind_domain_error, kind_length_error, kind_logic_error, kind_range_error, kind_overflow_error,
      kind_underflow_error, kind_bad_alloc
    };
    std::uint64_t header[2] = {kind_other, 0};
    std::string message;
    if (first == rank_) {
      const auto from_host = [&](std::uint64_t kind, const std::exception& e) {
        header[0] = kind;
        message = std::string(who) + ": " + e.what();
      };
      try {
        std::rethrow_exception(failure);
      } catch (const shape_error& e) {
        header[0] = kind_shape;
        message = e.what();
      } catch (const value_error& e) {
        header[0] = kind_value;
        message = e.what();
      } catch (const communication_error& e) {
        header[0] = kind_communication;
        message = e.what();
      } catch (const std::out_of_range& e) {
        from_host(kind_out_of_range, e);
      } catch (const std::invalid_argument& e) {
        from_host(kind_invalid_argument, e);
      } catch (const std::domain_error& e) {
        from_host(kind_domain_error, e);
      } catch (const std::length_error& e) {
        from_host(kind_length_error, e);
      } catch (const std::logic_error& e) {
        from_host(kind_logic_error, e);
      } catch (const std::range_error& e) {
        from_host(kind_range_error, e);
      } catch (const std::overflow_error& e) {
        from_host(kind_overflow_error, e);
      } catch (const std::underflow_error& e) {
        from_host(kind_underflow_error, e);
      } catch (const std::bad_alloc& e) {
        from_host(kind_bad_alloc, e);
      } catch (const std::exception& e) {
        from_host(kind_other, e);
      } catch (...) {
        message = std::string(who) + ": an exception of unknown type";
      }
      header[1] = message.size();
    }
    const int from = static_cast<int>(first);
    comm_->broadcast(header, 2, element_kind::uint64, from);
    message.resize(static_cast<std::size_t>(header[1]));
    if (!message.empty()) comm_->broadcast(message.data(), message.size(), element_kind::byte, from);
    message += " [refused on rank " + std::to_string(first) + " of " + std::to_string(ranks_) +
               "; every rank threw this and changed nothing]";
    switch (header[0]) {
      case kind_shape: throw shape_error(message);
      case kind_value: throw value_error(message);
      case kind_communication: throw communication_error(message);
      case kind_out_of_range: throw std::out_of_range(message);
      case kind_invalid_argument: throw std::invalid_argument(message);
      case kind_domain_error: throw std::domain_error(message);
      case kind_length_error: throw std::length_error(message);
      case kind_logic_error: throw std::logic_error(message);
      case kind_range_error: throw std::range_error(message);
      case kind_overflow_error: throw std::overflow_error(message);
      case kind_underflow_error: throw std::underflow_error(message);
      case kind_bad_alloc: throw std::bad_alloc();  // carries no message; the kind is what a host catches
      default: throw std::runtime_error(message);
    }
  }

  /// Calls f(unit, path prefix, name, value) for every setting the ranks must share, in an order every
  /// rank follows: each group's rule options (for_each_setting; in a step, with the learning rate
  /// check_step scheduled), unit = the group's index; then each parameter's own Newton–Schulz
  /// settings, unit = number of groups + the parameter's index. Allocates nothing.
  template <class F>
  void for_each_shared_setting(F&& f) const {
    for (std::size_t g = 0; g < this->groups_.size(); ++g) {
      std::visit([&](const auto& r) { for_each_setting(r.options(), [&](const char* p, const char* n, double v) { f(g, p, n, v); }); },
                 this->groups_[g].rule);
    }
    const std::size_t G = this->groups_.size();
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      const auto& ns = this->params_[i].ns;
      f(G + i, "", "set_ns_steps", static_cast<double>(ns.steps));
      f(G + i, "", "set_ns_stop_tolerance", ns.stop_tolerance);
      f(G + i, "", "record_ns_residuals", ns.record_residuals ? 1.0 : 0.0);
    }
  }
  /// A 64-bit hash h as four int64 for an allreduce(min): its two 32-bit halves, each beside its
  /// negation, so that the minimum gives both ends; hash_agreed reads the result (min = max everywhere).
  static void put_hash(std::uint64_t h, std::int64_t* at) noexcept {
    const auto hi = static_cast<std::int64_t>(h >> 32), lo = static_cast<std::int64_t>(h & 0xffffffffu);
    at[0] = hi, at[1] = -hi, at[2] = lo, at[3] = -lo;
  }
  static bool hash_agreed(const std::int64_t* at) noexcept { return at[0] == -at[1] && at[2] == -at[3]; }
  /// One shared setting into a hash: its unit and its bits (−0 counted as +0).
  static void hash_setting(fnv1a64& h, std::size_t unit, double v) noexcept {
    const std::uint64_t at = unit;
    v += 0.0;
    h.update(&at, sizeof at);
    h.update(&v, sizeof v);
  }
  /// FNV-1a over every shared setting.
  std::uint64_t shared_settings_hash() const {
    fnv1a64 h;
    for_each_shared_setting([&](std::size_t u, const char*, const char*, double v) { hash_setting(h, u, v); });
    return h.value();
  }
  /// Collective, on the ranks' shared path after an agreement found the settings' hashes different:
  /// finds the first unit (group or parameter) whose settings differ, then its first differing field,
  /// and says which value which rank has. Allocates (a refusal).
  std::string name_differing_setting() {
    const std::size_t G = this->groups_.size(), units = G + this->params_.size();
    std::vector<fnv1a64> per_unit(units);
    for_each_shared_setting([&](std::size_t u, const char*, const char*, double v) { hash_setting(per_unit[u], u, v); });
    std::vector<std::int64_t> hashes(4 * units);
    for (std::size_t u = 0; u < units; ++u) put_hash(per_unit[u].value(), hashes.data() + 4 * u);
    comm_->allreduce(hashes.data(), hashes.size(), element_kind::int64, reduce_op::min);
    std::size_t unit = 0;
    while (unit < units && hash_agreed(hashes.data() + 4 * unit)) ++unit;
    const std::string generic = "the ranks' settings differ (rule options, learning rates or Newton–Schulz settings); "
                                "every rank must make the same settings";
    if (unit == units) return generic;
    const std::string owner = unit < G ? "group '" + this->groups_[unit].name + "'" : "parameter '" + this->params_[unit - G].name + "'";
    // The unit's fields, compared over the length every rank has (a longer coefficient table shows up
    // first as a different "table rows").
    std::vector<std::string> names;
    std::vector<double> values;
    std::size_t coefficients = 0;  // a, b, c of the table's rows, in row order
    for_each_shared_setting([&](std::size_t u, const char* prefix, const char* name, double v) {
      if (u != unit) return;
      std::string path = std::string(prefix) + name;
      if (std::string_view(name).starts_with("table ") && std::string_view(name) != "table rows") {
        path = std::string(prefix) + "table[" + std::to_string(coefficients++ / 3) + "]." + (name + 6);
      }
      names.push_back(std::move(path));
      values.push_back(v + 0.0);
    });
    std::int64_t length[1] = {static_cast<std::int64_t>(values.size())};
    comm_->allreduce(length, 1, element_kind::int64, reduce_op::min);
    const auto common = static_cast<std::size_t>(length[0]);
    std::vector<double> bounds(2 * common);
    for (std::size_t k = 0; k < common; ++k) bounds[2 * k] = values[k], bounds[2 * k + 1] = -values[k];
    comm_->allreduce(bounds.data(), bounds.size(), element_kind::float64, reduce_op::min);
    std::size_t field = 0;
    while (field < common && bounds[2 * field] == -bounds[2 * field + 1]) ++field;
    if (field == common) return generic + " (" + owner + ")";
    const double low = bounds[2 * field], high = -bounds[2 * field + 1];
    std::int64_t ranks_with[2] = {values[field] == low ? rank_ : ranks_, values[field] == high ? rank_ : ranks_};
    comm_->allreduce(ranks_with, 2, element_kind::int64, reduce_op::min);
    const auto shown = [](double v) {  // counts, enumerators and flags as integers
      return v == std::trunc(v) && std::abs(v) < 1e15 ? std::to_string(static_cast<long long>(v)) : detail::value_text(v);
    };
    return "the ranks' settings differ: " + owner + " has " + names[field] + " = " + shown(low) + " on rank " +
           std::to_string(ranks_with[0]) + " but " + shown(high) + " on rank " + std::to_string(ranks_with[1]) +
           " (enumerators by value, flags as 0 or 1); every rank must make the same settings (rule options, learning "
           "rates and schedules, Newton–Schulz settings)";
  }

  /// The collective operations an agreement can be part of, by the `who` each passes.
  static constexpr const char* operation_names[] = {"orthopt::distributed_optimizer::finalize", "orthopt::save_checkpoint",
                                                    "orthopt::load_checkpoint", "orthopt::distributed_optimizer::step"};
  static std::int64_t operation_code(const char* who) noexcept {
    for (std::int64_t k = 0; k < 4; ++k)
      if (std::string_view(who) == operation_names[k]) return k + 1;
    return 5;
  }
  static std::string operation_name(std::int64_t code) {
    return code >= 1 && code <= 4 ? operation_names[code - 1] : "another collective call";
  }

  /// The root writes the checkpoint from every rank's records, in registration order.
  void write_gathered(std::ostream& out, const std::vector<std::vector<unsigned char>>& records,
                      const std::vector<std::vector<std::uint64_t>>& sizes) const {
    const std::size_t n = this->params_.size();
    std::vector<std::vector<std::uint64_t>> offsets(sizes.size());
    std::uint64_t payload = detail::payload_fixed_bytes;
    for (std::size_t r = 0; r < sizes.size(); ++r) {
      std::uint64_t at = 0;
      for (std::uint64_t s : sizes[r]) {
        offsets[r].push_back(at);
        at += s;
      }
      payload += at;
    }
    const auto write_records = [&](detail::checkpoint_writer& w) {
      std::vector<std::size_t> next(records.size(), 0);  // per rank: its next record, in registration order
      for (std::size_t i = 0; i < n; ++i) {
        const auto r = static_cast<std::size_t>(placement_[i].owner);
        const std::size_t k = next[r]++;
        w.bytes(records[r].data() + offsets[r][k], static_cast<std::size_t>(sizes[r][k]));
      }
    };
    detail::write_checkpoint<T>(out, payload, this->steps_taken(), n, write_records, ns_budget_phase::none, 0);
    if (!out) throw value_error("orthopt::save_checkpoint: writing to the stream failed");
  }

  void send_bytes(const unsigned char* data, std::size_t n, int dest) {
    for (std::size_t done = 0; done < n; done += detail::collective_chunk) {
      comm_->send(data + done, std::min(detail::collective_chunk, n - done), element_kind::byte, dest);
    }
  }
  void recv_bytes(unsigned char* data, std::size_t n, int source) {
    for (std::size_t done = 0; done < n; done += detail::collective_chunk) {
      comm_->recv(data + done, std::min(detail::collective_chunk, n - done), element_kind::byte, source);
    }
  }

  void check_root(int root, const char* who) const {
    if (root < 0 || root >= ranks_) {
      throw value_error(std::string(who) + ": root rank " + std::to_string(root) + " in a group of " + std::to_string(ranks_));
    }
  }
  void refuse_after_finalize(const char* what) const {
    if (finalized_) {
      throw value_error(std::string("orthopt::distributed_optimizer::") + what +
                        ": the optimizer is finalized (by finalize(), a step, save or load); register every group and "
                        "parameter before");
    }
  }
  void require_finalized(const char* what) const {
    if (!finalized_) {
      throw value_error(std::string("orthopt::distributed_optimizer::") + what +
                        ": owners are assigned by finalize() (collective), or by the first step, save or load");
    }
  }
  communicator* comm_;
  distributed_options options_;
  Backend be_;
  int rank_;
  int ranks_;
  std::vector<placement> placement_;
  layout layout_;
  bool finalized_ = false;
  typename Backend::template buffer<T> averaged_, send_, recv_;
};

/// Collective. Writes one checkpoint of the whole optimizer to `out`, which only rank `root` uses (the
/// others may pass nullptr). The file is exactly what an optimizer's save_checkpoint writes for the same
/// parameters (orthopt/checkpoint.hpp), so it loads into a distributed_optimizer on any number of ranks
/// or into a single-process optimizer. Each rank serializes its own parameters; the root receives them
/// rank by rank and writes them in registration order. Memory on the root: the whole checkpoint for the
/// duration of the call; elsewhere, the rank's own records. A failure anywhere (a failing stream on the
/// root) throws the same exception on every rank.
template <class T, class Backend>
void save_checkpoint(distributed_optimizer<T, Backend>& opt, std::ostream* out, int root) {
  opt.save_to(out, root);
}
/// The same, with a stream on every rank (only the root's is written).
template <class T, class Backend>
void save_checkpoint(distributed_optimizer<T, Backend>& opt, std::ostream& out, int root = 0) {
  save_checkpoint(opt, &out, root);
}
/// Collective. Replaces the state with a checkpoint read from `in` by rank `root` (the others may pass
/// nullptr): one written on any number of ranks, or by a single-process optimizer with the same
/// parameters. The root reads and verifies it, broadcasts the bytes, and every rank checks the whole
/// checkpoint against the registration and takes the states of the parameters it owns: loading on
/// another rank count reshards. All-or-nothing across ranks. Memory: every rank holds the checkpoint's
/// bytes for the duration of the call.
template <class T, class Backend>
void load_checkpoint(distributed_optimizer<T, Backend>& opt, std::istream* in, int root) {
  opt.load_from(in, root);
}
/// The same, with a stream on every rank (only the root's is read).
template <class T, class Backend>
void load_checkpoint(distributed_optimizer<T, Backend>& opt, std::istream& in, int root = 0) {
  load_checkpoint(opt, &in, root);
}

}  // namespace orthopt
