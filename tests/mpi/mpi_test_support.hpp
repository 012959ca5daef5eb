// Helpers for tests that run under mpirun: the world communicator, reductions of a rank's result over
// all ranks (so every rank CHECKs the same value), sub-communicators of the first k ranks, and a file
// path every rank agrees on.
#pragma once

#include <orthopt/mpi.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

namespace testing {

/// MPI_COMM_WORLD as orthopt's communicator (made on first use, after mpi_catch_main's MPI_Init).
inline orthopt::mpi_communicator& world() {
  static orthopt::mpi_communicator comm(MPI_COMM_WORLD);
  return comm;
}

template <class Int>
std::int64_t all_ranks(Int value, orthopt::reduce_op op) {
  auto v = static_cast<std::int64_t>(value);
  world().allreduce(&v, 1, orthopt::element_kind::int64, op);
  return v;
}
template <class Int>
std::int64_t all_ranks_max(Int value) { return all_ranks(value, orthopt::reduce_op::max); }
template <class Int>
std::int64_t all_ranks_min(Int value) { return all_ranks(value, orthopt::reduce_op::min); }
template <class Int>
std::int64_t all_ranks_sum(Int value) { return all_ranks(value, orthopt::reduce_op::sum); }

/// A path in the temporary directory, chosen by rank 0 and known to every rank.
inline std::filesystem::path shared_temp_path(const std::string& name) {
  std::int64_t id = static_cast<std::int64_t>(::getpid());
  world().broadcast(&id, 1, orthopt::element_kind::int64, 0);
  return std::filesystem::temp_directory_path() / ("orthopt-" + name + "-" + std::to_string(id) + ".bin");
}

/// The first `ranks` ranks of the world as a communicator of their own (collective over the world).
class sub_communicator {
 public:
  explicit sub_communicator(int ranks) {
    const int color = world().rank() < ranks ? 0 : MPI_UNDEFINED;
    MPI_Comm_split(MPI_COMM_WORLD, color, world().rank(), &comm_);
    if (comm_ != MPI_COMM_NULL) wrapper_ = std::make_unique<orthopt::mpi_communicator>(comm_);
  }
  ~sub_communicator() {
    wrapper_.reset();
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  sub_communicator(const sub_communicator&) = delete;
  sub_communicator& operator=(const sub_communicator&) = delete;
  [[nodiscard]] bool member() const noexcept { return wrapper_ != nullptr; }
  orthopt::mpi_communicator& operator*() { return *wrapper_; }
  orthopt::mpi_communicator* operator->() { return wrapper_.get(); }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::unique_ptr<orthopt::mpi_communicator> wrapper_;
};

}  // namespace testing

inline void comm_barrier() { MPI_Barrier(MPI_COMM_WORLD); }
