// An installed orthopt's MPI component: a two-parameter distributed Muon step. Built by
// package.find_package_consumer; run it with `mpirun -np 2 ./find_package_consumer_mpi`.
#include <orthopt/eigen.hpp>
#include <orthopt/mpi.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int status = 0;
  {
    using backend = orthopt::eigen_backend;
    orthopt::mpi_communicator comm(MPI_COMM_WORLD);
    orthopt::distributed_optimizer<float, backend> opt(comm);
    const auto hidden = opt.add_group("hidden", orthopt::muon<float, backend>());
    std::vector<float> a(32 * 16, 0.25f), b(16 * 16, -0.5f), ga(a.size()), gb(b.size());
    for (std::size_t i = 0; i < ga.size(); ++i) ga[i] = static_cast<float>((i * 7919) % 13) - 6.0f;
    for (std::size_t i = 0; i < gb.size(); ++i) gb[i] = static_cast<float>((i * 104729) % 11) - 5.0f;
    const auto pa = opt.add_param("a", hidden, orthopt::row_major_view(a.data(), 32, 16));
    const auto pb = opt.add_param("b", hidden, orthopt::row_major_view(b.data(), 16, 16));
    const std::vector<orthopt::batch_view<const float>> grads{opt.gradient_like(pa, ga.data()),
                                                               opt.gradient_like(pb, gb.data())};
    opt.step(grads);
    std::printf("rank %d of %d: a[0] = %g, b[0] = %g, %lld collectives per step\n", comm.rank(), comm.size(),
                static_cast<double>(a[0]), static_cast<double>(b[0]),
                static_cast<long long>(opt.step_traffic().collectives));
    status = (a[0] != 0.25f && b[0] != -0.5f) ? 0 : 1;
  }
  MPI_Finalize();
  return status;
}
