// SPDX-License-Identifier: Apache-2.0
//
// orthopt's communicator interface (orthopt/distributed/communicator.hpp) on an MPI communicator.
//
//   MPI_Init(&argc, &argv);
//   orthopt::mpi_communicator comm(MPI_COMM_WORLD);   // borrowed: orthopt never frees it
//
// The MPI_Comm is the host's: it must stay valid while orthopt uses it, and MPI must be initialized
// (MPI_Init or MPI_Init_thread) before the first call. Collectives are the blocking MPI ones
// (MPI_Allreduce, MPI_Bcast, MPI_Allgatherv, MPI_Alltoallv, MPI_Send/MPI_Recv). Buffers are host
// memory; device pointers work only with a CUDA-aware MPI (not tested by orthopt's CI).
//
// Errors: the calls run with the communicator's error handler set to MPI_ERRORS_RETURN for their
// duration, and a failing call throws orthopt::communication_error with MPI's error string. (With the
// default MPI_ERRORS_ARE_FATAL MPI would abort the job before orthopt could say what failed.)
//
// Threads: one thread at a time may call into a communicator (MPI_THREAD_FUNNELED is enough when that
// is the thread that initialized MPI).
#pragma once

// orthopt uses MPI's C interface only; the deprecated C++ bindings some MPI headers pull in are skipped.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "orthopt/distributed/communicator.hpp"

namespace orthopt {

class mpi_communicator final : public communicator {
 public:
  /// Borrows `comm`. Throws communication_error if MPI is not initialized or the communicator is invalid.
  explicit mpi_communicator(MPI_Comm comm) : comm_(comm) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      throw communication_error("orthopt::mpi_communicator: MPI is not initialized (call MPI_Init first)");
    }
    if (comm == MPI_COMM_NULL) throw communication_error("orthopt::mpi_communicator: the communicator is MPI_COMM_NULL");
    guarded("MPI_Comm_rank", [&] { return MPI_Comm_rank(comm_, &rank_); });
    guarded("MPI_Comm_size", [&] { return MPI_Comm_size(comm_, &size_); });
    // Count and displacement arrays for the v-collectives, made once so that no call allocates.
    send_counts_.resize(static_cast<std::size_t>(size_));
    send_displs_.resize(static_cast<std::size_t>(size_));
    recv_counts_.resize(static_cast<std::size_t>(size_));
    recv_displs_.resize(static_cast<std::size_t>(size_));
  }

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }
  /// The MPI communicator (still the host's).
  [[nodiscard]] MPI_Comm handle() const noexcept { return comm_; }

  void allreduce(void* buffer, std::size_t count, element_kind kind, reduce_op op) override {
    const int n = checked_count(count, "allreduce");
    guarded("MPI_Allreduce", [&] { return MPI_Allreduce(MPI_IN_PLACE, buffer, n, type_of(kind), op_of(op), comm_); });
  }
  void broadcast(void* buffer, std::size_t count, element_kind kind, int root) override {
    const int n = checked_count(count, "broadcast");
    check_rank(root, "broadcast");
    guarded("MPI_Bcast", [&] { return MPI_Bcast(buffer, n, type_of(kind), root, comm_); });
  }
  void allgatherv(const void* send, void* recv, std::span<const std::size_t> counts, element_kind kind) override {
    fill(counts, recv_counts_, recv_displs_, "allgatherv");
    const int mine = recv_counts_[static_cast<std::size_t>(rank_)];
    guarded("MPI_Allgatherv", [&] {
      return MPI_Allgatherv(send, mine, type_of(kind), recv, recv_counts_.data(), recv_displs_.data(), type_of(kind),
                            comm_);
    });
  }
  void alltoallv(const void* send, std::span<const std::size_t> send_counts, void* recv,
                 std::span<const std::size_t> recv_counts, element_kind kind) override {
    fill(send_counts, send_counts_, send_displs_, "alltoallv");
    fill(recv_counts, recv_counts_, recv_displs_, "alltoallv");
    guarded("MPI_Alltoallv", [&] {
      return MPI_Alltoallv(send, send_counts_.data(), send_displs_.data(), type_of(kind), recv, recv_counts_.data(),
                           recv_displs_.data(), type_of(kind), comm_);
    });
  }
  void send(const void* buffer, std::size_t count, element_kind kind, int dest) override {
    const int n = checked_count(count, "send");
    check_rank(dest, "send");
    guarded("MPI_Send", [&] { return MPI_Send(buffer, n, type_of(kind), dest, tag, comm_); });
  }
  void recv(void* buffer, std::size_t count, element_kind kind, int source) override {
    const int n = checked_count(count, "recv");
    check_rank(source, "recv");
    guarded("MPI_Recv", [&] { return MPI_Recv(buffer, n, type_of(kind), source, tag, comm_, MPI_STATUS_IGNORE); });
  }

 private:
  static constexpr int tag = 0x4f50;  // "OP": the point-to-point messages of orthopt's checkpoint gathering

  static MPI_Datatype type_of(element_kind k) {
    switch (k) {
      case element_kind::float32: return MPI_FLOAT;
      case element_kind::float64: return MPI_DOUBLE;
      case element_kind::int64: return MPI_INT64_T;
      case element_kind::uint64: return MPI_UINT64_T;
      case element_kind::byte: return MPI_BYTE;
    }
    return MPI_BYTE;
  }
  static MPI_Op op_of(reduce_op op) {
    switch (op) {
      case reduce_op::sum: return MPI_SUM;
      case reduce_op::min: return MPI_MIN;
      case reduce_op::max: return MPI_MAX;
    }
    return MPI_SUM;
  }
  static int checked_count(std::size_t count, const char* who) {
    if (count > static_cast<std::size_t>(INT_MAX)) {
      throw communication_error(std::string("orthopt::mpi_communicator::") + who + ": " + std::to_string(count) +
                                " elements exceed MPI's int count; split the transfer");
    }
    return static_cast<int>(count);
  }
  void check_rank(int r, const char* who) const {
    if (r < 0 || r >= size_) {
      throw communication_error(std::string("orthopt::mpi_communicator::") + who + ": rank " + std::to_string(r) +
                                " in a group of " + std::to_string(size_));
    }
  }
  void fill(std::span<const std::size_t> counts, std::vector<int>& c, std::vector<int>& d, const char* who) const {
    if (counts.size() != static_cast<std::size_t>(size_)) {
      throw communication_error(std::string("orthopt::mpi_communicator::") + who + ": " + std::to_string(counts.size()) +
                                " counts for a group of " + std::to_string(size_));
    }
    std::size_t offset = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      c[r] = checked_count(counts[r], who);
      d[r] = checked_count(offset, who);
      offset += counts[r];
    }
    checked_count(offset, who);
  }
  /// Runs an MPI call with MPI_ERRORS_RETURN and turns a failure into communication_error.
  template <class Call>
  void guarded(const char* name, Call call) const {
    MPI_Errhandler previous;
    MPI_Comm_get_errhandler(comm_, &previous);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    const int rc = call();
    MPI_Comm_set_errhandler(comm_, previous);
    MPI_Errhandler_free(&previous);
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int length = 0;
      MPI_Error_string(rc, text, &length);
      throw communication_error(std::string("orthopt::mpi_communicator: ") + name + " failed on rank " +
                                std::to_string(rank_) + ": " + std::string(text, static_cast<std::size_t>(length)));
    }
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  mutable std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_;
};

}  // namespace orthopt
