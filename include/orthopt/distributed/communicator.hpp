// SPDX-License-Identifier: Apache-2.0
//
// The communicator interface orthopt's distributed algorithms are written against: the handful of
// collectives a data-parallel optimizer step and a tensor-parallel Newton–Schulz iteration need, over
// raw buffers. orthopt/mpi.hpp implements it on an MPI communicator (mpi_communicator); a host with
// another transport (NCCL on a GPU, a framework's process group) implements these eight members.
//
// Contract for an implementation:
// - Every rank of the group calls a collective with the same operation, element kind and counts (as
//   the members below say), in the same order. orthopt's algorithms guarantee this: every branch that
//   decides whether a collective runs depends only on data all ranks agreed on.
// - Buffers hold `count` elements of `kind` in the memory space the implementation accepts (host
//   memory for mpi_communicator over an MPI without GPU support). Send and receive buffers never
//   overlap, except where a member says "in place".
// - Counts are element counts (never bytes) and fit in the int of an MPI count: orthopt splits longer
//   transfers into buckets (distributed_options::bucket_bytes).
// - A failure of the transport is reported by throwing (mpi_communicator turns MPI errors into
//   orthopt::communication_error); orthopt cannot restore consistency across ranks after a transport
//   failure, so the host should then abort the job.
// - The members must not allocate per call after construction if the optimizer step is to allocate
//   nothing (mpi_communicator keeps its count and displacement arrays from construction).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "orthopt/errors.hpp"

namespace orthopt {

/// The transport under a distributed algorithm failed (an MPI error, a lost peer). The ranks' states
/// may disagree afterwards: abort the job, reload a checkpoint.
class communication_error : public std::runtime_error, public error {
 public:
  explicit communication_error(const std::string& message) : std::runtime_error(message) {}
  [[nodiscard]] const char* what() const noexcept override { return std::runtime_error::what(); }
};

/// The element types the collectives carry.
enum class element_kind : unsigned char { float32, float64, int64, uint64, byte };

inline std::size_t element_size(element_kind k) noexcept {
  switch (k) {
    case element_kind::float32: return 4;
    case element_kind::float64:
    case element_kind::int64:
    case element_kind::uint64: return 8;
    case element_kind::byte: return 1;
  }
  return 1;
}

/// The element kind of a C++ type (float, double, std::int64_t, std::uint64_t, unsigned char).
template <class T>
constexpr element_kind element_kind_of() {
  if constexpr (std::is_same_v<T, float>) return element_kind::float32;
  else if constexpr (std::is_same_v<T, double>) return element_kind::float64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return element_kind::int64;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return element_kind::uint64;
  else {
    static_assert(std::is_same_v<T, unsigned char> || std::is_same_v<T, std::byte>,
                  "orthopt collectives carry float, double, int64, uint64 or bytes");
    return element_kind::byte;
  }
}

/// The reductions of allreduce.
enum class reduce_op : unsigned char { sum, min, max };

/// A group of ranks and its collectives. Not owned by orthopt: the host makes it, keeps it alive while
/// orthopt uses it, and frees it.
class communicator {
 public:
  virtual ~communicator() = default;

  /// This process's rank, 0 ≤ rank() < size().
  [[nodiscard]] virtual int rank() const = 0;
  /// The number of ranks.
  [[nodiscard]] virtual int size() const = 0;

  /// In place: buffer[i] ← op over ranks of buffer[i], for i < count (the same count on every rank).
  virtual void allreduce(void* buffer, std::size_t count, element_kind kind, reduce_op op) = 0;
  /// buffer (count elements, the same count on every rank) ← root's buffer.
  virtual void broadcast(void* buffer, std::size_t count, element_kind kind, int root) = 0;
  /// recv ← the concatenation, in rank order, of every rank's send; rank r sends counts[r] elements
  /// (counts is the same on every rank; recv holds their sum).
  virtual void allgatherv(const void* send, void* recv, std::span<const std::size_t> counts, element_kind kind) = 0;
  /// Rank r sends send_counts[q] elements to rank q, taken consecutively from send in rank order; it
  /// receives recv_counts[q] elements from rank q, stored consecutively in recv in rank order. The
  /// counts must agree pairwise (what q sends r is what r expects from q).
  virtual void alltoallv(const void* send, std::span<const std::size_t> send_counts, void* recv,
                         std::span<const std::size_t> recv_counts, element_kind kind) = 0;
  /// Point to point (checkpoint gathering): a blocking send of count elements to rank dest, matched by
  /// a recv of the same count on dest.
  virtual void send(const void* buffer, std::size_t count, element_kind kind, int dest) = 0;
  virtual void recv(void* buffer, std::size_t count, element_kind kind, int source) = 0;
};

/// The communicator of one process alone: size 1, every collective a copy. For single-process use of
/// the distributed classes and for tests.
class self_communicator final : public communicator {
 public:
  [[nodiscard]] int rank() const override { return 0; }
  [[nodiscard]] int size() const override { return 1; }
  void allreduce(void*, std::size_t, element_kind, reduce_op) override {}
  void broadcast(void*, std::size_t, element_kind, int root) override { check_rank(root, "broadcast"); }
  void allgatherv(const void* send, void* recv, std::span<const std::size_t> counts, element_kind kind) override {
    check_counts(counts, "allgatherv");
    copy(send, recv, counts[0] * element_size(kind));
  }
  void alltoallv(const void* send, std::span<const std::size_t> send_counts, void* recv,
                 std::span<const std::size_t> recv_counts, element_kind kind) override {
    check_counts(send_counts, "alltoallv");
    check_counts(recv_counts, "alltoallv");
    if (send_counts[0] != recv_counts[0]) {
      throw communication_error("orthopt::self_communicator::alltoallv: sends " + std::to_string(send_counts[0]) +
                                " elements to itself but expects " + std::to_string(recv_counts[0]));
    }
    copy(send, recv, send_counts[0] * element_size(kind));
  }
  void send(const void*, std::size_t, element_kind, int) override {
    throw communication_error("orthopt::self_communicator::send: a single process has no one to send to");
  }
  void recv(void*, std::size_t, element_kind, int) override {
    throw communication_error("orthopt::self_communicator::recv: a single process has no one to receive from");
  }

 private:
  static void copy(const void* from, void* to, std::size_t bytes) {
    auto* d = static_cast<unsigned char*>(to);
    const auto* s = static_cast<const unsigned char*>(from);
    if (d != s)
      for (std::size_t i = 0; i < bytes; ++i) d[i] = s[i];
  }
  static void check_rank(int r, const char* who) {
    if (r != 0) {
      throw communication_error(std::string("orthopt::self_communicator::") + who + ": rank " + std::to_string(r) +
                                " in a group of 1");
    }
  }
  static void check_counts(std::span<const std::size_t> counts, const char* who) {
    if (counts.size() != 1) {
      throw communication_error(std::string("orthopt::self_communicator::") + who + ": " + std::to_string(counts.size()) +
                                " counts for a group of 1");
    }
  }
};

}  // namespace orthopt
