// SPDX-License-Identifier: Apache-2.0
//
// Data-parallel training with orthopt's distributed optimizer: a byte-level MLP language model (Bengio
// et al. 2003's shape: embeddings of the last 4 bytes → two tanh layers → a softmax over 256 bytes) on
// Debian's `fortunes` corpus, Muon on the hidden matrices and AdamW on the embeddings, head and biases.
//
//   mpirun -np 2 ./orthopt_data_parallel_lm [--steps N] [--data DIR]
//
// Each step's batch is 4 micro-batches of 32 examples. Rank r of P (P divides 4) computes the mean
// gradient of micro-batches r·4/P … (r+1)·4/P − 1, averaging them as a pairwise tree; the distributed
// optimizer (averaging = average) averages the ranks' gradients onto each matrix's owner as the same
// pairwise tree in rank order, the owner steps it, and every rank receives the updated parameters.
// Because every micro-batch gradient is computed by the same code, the trees line up, and the divisions
// are by powers of two (exact), the parameters after every step are the same bits on 1, 2 and 4 ranks:
// the program prints their FNV-1a hash, and the ctest example.mpi_data_parallel compares the runs.
//
// Gradients by hand (no autograd): with e the concatenated embeddings, h1 = tanh(W1·e + b1),
// h2 = tanh(W2·h1 + b2), z = Wo·h2 + bo and the mean cross-entropy L over n examples,
// dz = (softmax(z) − onehot(y))/n, dWo = dz·h2ᵀ, dh2 = (Woᵀ·dz) ⊙ (1 − h2²), dW2 = dh2·h1ᵀ,
// dh1 = (W2ᵀ·dh2) ⊙ (1 − h1²), dW1 = dh1·eᵀ, de = W1ᵀ·dh1 scattered into the embedding rows.
#include <orthopt/eigen.hpp>
#include <orthopt/mpi.hpp>  // MPI itself, through its C interface

#include <Eigen/Dense>
#include <orthopt/lr_schedule.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
using backend = orthopt::eigen_backend;

constexpr int context = 4, embed = 16, hidden = 128, vocab = 256;
constexpr int micro_batches = 4, micro_batch = 32;

/// The model's tensors; the gradients have the same shapes.
struct tensors {
  matrix E{vocab, embed}, W1{hidden, context * embed}, b1{hidden, 1}, W2{hidden, hidden}, b2{hidden, 1},
      Wo{vocab, hidden}, bo{vocab, 1};
  template <class F>
  void for_each(F f) {
    f("embed.weight", E);
    f("layers.0.weight", W1);
    f("layers.0.bias", b1);
    f("layers.1.weight", W2);
    f("layers.1.bias", b2);
    f("lm_head.weight", Wo);
    f("lm_head.bias", bo);
  }
  void set_zero() {
    for_each([](const char*, matrix& m) { m.setZero(); });
  }
};

/// Deterministic initialization (the same on every rank): uniform in ±1/√fan_in from a fixed LCG.
void initialize(tensors& t) {
  std::uint64_t state = 0x2545F4914F6CDD1Dull;
  const auto uniform = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<double>(state >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  };
  t.for_each([&](const char*, matrix& m) {
    const float scale = m.cols() == 1 ? 0.0f : 1.0f / std::sqrt(static_cast<float>(m.cols()));
    for (Eigen::Index j = 0; j < m.cols(); ++j)
      for (Eigen::Index i = 0; i < m.rows(); ++i) m(i, j) = scale * uniform();
  });
  t.E *= 2.0f;
}

/// Mean cross-entropy of examples [first, first + n) of `starts` (positions in text); when `grad` is
/// given, adds the mean gradient into it (which the caller zeroed).
double loss_and_gradient(const tensors& t, const std::string& text, const std::vector<std::size_t>& starts,
                         std::size_t first, int n, tensors* grad) {
  matrix e(context * embed, n);
  std::vector<int> target(static_cast<std::size_t>(n));
  for (int k = 0; k < n; ++k) {
    const std::size_t at = starts[first + static_cast<std::size_t>(k)];
    for (int c = 0; c < context; ++c) {
      e.block(c * embed, k, embed, 1) = t.E.row(static_cast<unsigned char>(text[at + static_cast<std::size_t>(c)])).transpose();
    }
    target[static_cast<std::size_t>(k)] = static_cast<unsigned char>(text[at + context]);
  }
  const matrix h1 = ((t.W1 * e).colwise() + t.b1.col(0)).array().tanh().matrix();
  const matrix h2 = ((t.W2 * h1).colwise() + t.b2.col(0)).array().tanh().matrix();
  matrix z = (t.Wo * h2).colwise() + t.bo.col(0);
  double loss = 0.0;
  for (int k = 0; k < n; ++k) {
    const float top = z.col(k).maxCoeff();
    z.col(k) = (z.col(k).array() - top).exp().matrix();
    const float sum = z.col(k).sum();
    loss -= std::log(static_cast<double>(z(target[static_cast<std::size_t>(k)], k)) / sum);
    z.col(k) /= sum;  // softmax
  }
  if (grad != nullptr) {
    for (int k = 0; k < n; ++k) z(target[static_cast<std::size_t>(k)], k) -= 1.0f;
    const matrix dz = z / static_cast<float>(n);
    grad->Wo.noalias() += dz * h2.transpose();
    grad->bo += dz.rowwise().sum();
    const matrix dh2 = ((t.Wo.transpose() * dz).array() * (1.0f - h2.array().square())).matrix();
    grad->W2.noalias() += dh2 * h1.transpose();
    grad->b2 += dh2.rowwise().sum();
    const matrix dh1 = ((t.W2.transpose() * dh2).array() * (1.0f - h1.array().square())).matrix();
    grad->W1.noalias() += dh1 * e.transpose();
    grad->b1 += dh1.rowwise().sum();
    const matrix de = t.W1.transpose() * dh1;
    for (int k = 0; k < n; ++k) {
      const std::size_t at = starts[first + static_cast<std::size_t>(k)];
      for (int c = 0; c < context; ++c) {
        grad->E.row(static_cast<unsigned char>(text[at + static_cast<std::size_t>(c)])) +=
            de.block(c * embed, k, embed, 1).transpose();
      }
    }
  }
  return loss / n;
}

/// a ← (a + b) for every tensor (one level of the pairwise tree).
void add_into(tensors& a, tensors& b) {
  std::vector<matrix*> left, right;
  a.for_each([&](const char*, matrix& m) { left.push_back(&m); });
  b.for_each([&](const char*, matrix& m) { right.push_back(&m); });
  for (std::size_t i = 0; i < left.size(); ++i) *left[i] += *right[i];
}

std::string load_text(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    throw std::runtime_error("no corpus directory " + dir + " (Debian: apt install fortunes; or pass --data DIR)");
  }
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(dir)) {
    if (f.is_regular_file() && !f.is_symlink() && !f.path().has_extension()) files.push_back(f.path());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  if (text.size() < 100000) throw std::runtime_error("the corpus in " + dir + " is too small");
  return text;
}

int run(int argc, char** argv) {
  int steps = 300;
  std::string data = "/usr/share/games/fortunes";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--data" && i + 1 < argc) data = argv[++i];
    else throw std::runtime_error("unknown argument " + a + " (usage: [--steps N] [--data DIR])");
  }
  orthopt::mpi_communicator comm(MPI_COMM_WORLD);
  const int P = comm.size(), rank = comm.rank();
  if (micro_batches % P != 0) {
    throw std::runtime_error("this example splits each batch into " + std::to_string(micro_batches) +
                             " micro-batches: run it on 1, 2 or 4 ranks, not " + std::to_string(P));
  }
  // One thread: Eigen's products then compute every micro-batch the same way on every rank count.
  Eigen::setNbThreads(1);

  const std::string text = load_text(data);
  const std::size_t held_out = text.size() / 20;  // the last 5 % is validation text
  const std::string train = text.substr(0, text.size() - held_out), valid = text.substr(text.size() - held_out);
  std::vector<std::size_t> valid_starts;
  for (std::size_t i = 0; i + context < valid.size() && valid_starts.size() < 4096; i += 7) valid_starts.push_back(i);

  tensors model, grad;
  initialize(model);
  std::vector<tensors> parts(static_cast<std::size_t>(micro_batches / P));

  orthopt::distributed_optimizer<float, backend> opt(comm, {orthopt::gradient_averaging::average});
  auto muon = orthopt::muon_presets::moonlight();
  muon.lr = 0.02;
  auto adamw = orthopt::adamw_presets::torch();
  adamw.lr = 3e-3;
  adamw.weight_decay = 0.0;
  const auto hidden_group = opt.add_group("hidden", orthopt::muon<float, backend>(muon),
                                          orthopt::warmup_stable_decay(steps / 20, steps, 0.3));
  const auto rest = opt.add_group("adamw", orthopt::adamw<float, backend>(adamw),
                                  orthopt::warmup_stable_decay(steps / 20, steps, 0.3));
  const orthopt::param_router router(hidden_group, rest);
  model.for_each([&](const char* name, matrix& m) { opt.add_param(name, orthopt::make_view(m), router); });
  std::vector<orthopt::batch_view<const float>> grads;
  {
    std::size_t i = 0;
    grad.for_each([&](const char*, matrix& m) { grads.push_back(opt.gradient_like(orthopt::param_id{i++}, m.data())); });
  }
  opt.finalize();
  if (rank == 0) {
    std::printf("data-parallel byte-level MLP language model on %d rank%s; corpus %zu bytes; batch %d x %d\n", P,
                P == 1 ? "" : "s", text.size(), micro_batches, micro_batch);
    std::printf("%s", opt.routing().size() > 0 ? "owners:" : "");
    for (const auto& o : opt.ownership()) std::printf(" %s->%d", o.name.c_str(), o.owner);
    const auto t = opt.step_traffic();
    std::printf("\nper step and rank 0: %lld collectives, %llu bytes sent, %llu received\n",
                static_cast<long long>(t.collectives), static_cast<unsigned long long>(t.bytes_sent),
                static_cast<unsigned long long>(t.bytes_received));
  }

  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t span = train.size() - context - 1;
  for (int s = 0; s < steps; ++s) {
    // The batch of step s (the same on every rank count): example k of micro-batch b starts at a hashed
    // position.
    std::vector<std::size_t> starts(micro_batches * micro_batch);
    for (std::size_t k = 0; k < starts.size(); ++k) {
      std::uint64_t h = (static_cast<std::uint64_t>(s) << 32 | k) * 0x9E3779B97F4A7C15ull;
      h ^= h >> 29;
      starts[k] = static_cast<std::size_t>(h % span);
    }
    // This rank's micro-batches, averaged as a pairwise tree.
    const int local = micro_batches / P;
    for (int b = 0; b < local; ++b) {
      parts[static_cast<std::size_t>(b)].set_zero();
      const int global_b = rank * local + b;
      loss_and_gradient(model, train, starts, static_cast<std::size_t>(global_b * micro_batch), micro_batch,
                        &parts[static_cast<std::size_t>(b)]);
    }
    for (int stride = 1; stride < local; stride *= 2)
      for (int b = 0; b + stride < local; b += 2 * stride) add_into(parts[static_cast<std::size_t>(b)], parts[static_cast<std::size_t>(b + stride)]);
    std::vector<matrix*> dst, src;
    grad.for_each([&](const char*, matrix& m) { dst.push_back(&m); });
    parts[0].for_each([&](const char*, matrix& m) { src.push_back(&m); });
    for (std::size_t i = 0; i < dst.size(); ++i) *dst[i] = *src[i] / static_cast<float>(local);

    opt.step(grads);

    if (rank == 0 && (s % 50 == 0 || s == steps - 1)) {
      const double v = loss_and_gradient(model, valid, valid_starts, 0, static_cast<int>(valid_starts.size()), nullptr);
      std::printf("step %4d  validation loss %.4f  (%.2f bits/byte)\n", s + 1, v, v / std::log(2.0));
      std::fflush(stdout);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The parameters' hash: the same on every rank (they are gathered) and on every rank count.
  orthopt::fnv1a64 h;
  model.for_each([&](const char*, matrix& m) { h.update(m.data(), static_cast<std::size_t>(m.size()) * sizeof(float)); });
  std::uint64_t mine = h.value(), most = mine, least = ~mine;
  comm.allreduce(&most, 1, orthopt::element_kind::uint64, orthopt::reduce_op::max);
  comm.allreduce(&least, 1, orthopt::element_kind::uint64, orthopt::reduce_op::max);
  if (most != ~least) throw std::runtime_error("the ranks' parameters differ");
  const auto mem = opt.memory();
  std::printf("rank %d: owns %zu parameters, state %llu bytes, staging %llu bytes\n", rank, mem.params_owned,
              static_cast<unsigned long long>(mem.state_bytes), static_cast<unsigned long long>(mem.staging_bytes));
  if (rank == 0) {
    std::printf("%d steps in %.1f s\nparameters fnv1a64: %016llx\n", steps, seconds, static_cast<unsigned long long>(mine));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int status = 0;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "orthopt_data_parallel_lm: %s\n", e.what());
    status = 1;
  }
  MPI_Finalize();
  return status;
}
