// SPDX-License-Identifier: Apache-2.0
//
// orthopt inside a libtorch training loop. A torch::nn model computes its loss and gradients as usual;
// orthopt's optimizer steps the model's own parameter tensors, reading the gradients from .grad(), both
// through the tensor concept (torch_matrix.hpp): no parameter or gradient is copied.
//
//   hidden.weight (256x256)                       -> AdaMuon (the authors' code form)
//   input.weight, head.weight and every bias      -> AdamW   (as the papers route them)
//
// The program also checks what an adopter would want to know before trusting it, and exits non-zero
// if any check fails (it runs as the ctest example.libtorch_adamuon):
//   1. the views orthopt steps are the tensors' own memory, and they keep their addresses;
//   2. orthopt's AdamW and torch::optim::AdamW, given the same model, data and hyper-parameters, end
//      a few steps apart only by float rounding (the adapter hands over the right memory and strides);
//   3. an AdaMuon step moves hidden.weight by an update of RMS 0.2·lr (AdaMuon's AdamW-matched scale);
//   4. a NaN in one gradient makes orthopt throw, naming the parameter, and leaves every torch
//      parameter bit-for-bit as it was;
//   5. training lowers the loss.
// It then reports the loss and test accuracy of AdaMuon+AdamW against torch's AdamW on every parameter,
// from the same initial weights, batches and schedule.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "orthopt/eigen.hpp"
#if defined(EXAMPLE_USE_BLAS)
#include "orthopt/blas.hpp"
#endif
#include "torch_matrix.hpp"

namespace {

// ---- the model and the data -------------------------------------------------------------------------
struct NetImpl : torch::nn::Module {
  NetImpl(std::int64_t in, std::int64_t width, std::int64_t classes)
      : input(register_module("input", torch::nn::Linear(in, width))),
        hidden(register_module("hidden", torch::nn::Linear(width, width))),
        head(register_module("head", torch::nn::Linear(width, classes))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::gelu(input(x));
    x = torch::gelu(hidden(x));
    return head(x);
  }
  torch::nn::Linear input, hidden, head;
};
TORCH_MODULE(Net);

constexpr std::int64_t in_features = 64, width = 256, classes = 10;

Net make_net() {
  torch::manual_seed(1234);  // every run starts from the same weights
  return Net(in_features, width, classes);
}

/// A teacher-student task: labels are the arg-max of a fixed random two-layer network.
struct task {
  torch::Tensor x_train, y_train, x_test, y_test;
};
task make_task() {
  torch::manual_seed(7);
  const auto t1 = torch::randn({in_features, 96});
  const auto t2 = torch::randn({96, classes});
  const auto label = [&](const torch::Tensor& x) { return torch::tanh(x.matmul(t1) / 8.0).matmul(t2).argmax(1); };
  task t;
  t.x_train = torch::randn({16384, in_features});
  t.y_train = label(t.x_train);
  t.x_test = torch::randn({4096, in_features});
  t.y_test = label(t.x_test);
  return t;
}

struct settings {
  int steps = 600;
  std::int64_t batch = 128;
  double lr = 2e-3;  // AdamW's; AdaMuon's update has AdamW's RMS, so one lr serves both
  double weight_decay = 0.1;
};

/// The batch order, the same for every run.
std::vector<torch::Tensor> make_batches(const settings& s, std::int64_t n) {
  torch::manual_seed(99);
  std::vector<torch::Tensor> batches;
  torch::Tensor order = torch::randperm(n, torch::kLong);
  std::int64_t at = 0;
  for (int i = 0; i < s.steps; ++i) {
    if (at + s.batch > n) {
      order = torch::randperm(n, torch::kLong);
      at = 0;
    }
    batches.push_back(order.slice(0, at, at + s.batch));
    at += s.batch;
  }
  return batches;
}

double loss_on(Net& net, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  return torch::nn::functional::cross_entropy(net->forward(x), y).item<double>();
}
double accuracy_on(Net& net, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  return net->forward(x).argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
}

/// Forward and backward on one batch; leaves the gradients in each parameter's .grad().
double forward_backward(Net& net, const task& t, const torch::Tensor& idx) {
  net->zero_grad();  // set_to_none = false in libtorch 1.13: .grad() keeps its memory
  const auto loss = torch::nn::functional::cross_entropy(net->forward(t.x_train.index_select(0, idx)),
                                                         t.y_train.index_select(0, idx));
  loss.backward();
  return loss.item<double>();
}

int failures = 0;
void check(bool ok, const std::string& what) {
  std::printf("  [%s] %s\n", ok ? "ok" : "FAILED", what.c_str());
  if (!ok) ++failures;
}

// ---- orthopt on a torch model ---------------------------------------------------------------------
#if defined(EXAMPLE_USE_BLAS)
using backend = orthopt::blas_backend;  // gemm/syrk on the system BLAS (the one libtorch uses too)
constexpr const char* backend_name = "blas_backend";
#else
using backend = orthopt::eigen_backend;
constexpr const char* backend_name = "eigen_backend";
#endif
using optimizer = orthopt::optimizer<float, backend>;

/// An orthopt optimizer over a torch model's parameters, and the per-step gradient views.
struct orthopt_trainer {
  optimizer opt;
  std::vector<torch::Tensor> params;         // the model's own tensors (handles, not copies)
  std::vector<optimizer::gradient_view> grads;  // refilled from .grad() before each step

  /// Register every parameter under its torch name; `router` picks each one's group.
  void add_model(Net& net, const orthopt::param_router& router) {
    for (const auto& item : net->named_parameters()) {
      const auto view = orthopt::make_view(torch_matrix<float>(item.value()));
      check(view.data == item.value().data_ptr<float>(), "orthopt views " + item.key() + " in place");
      opt.add_param(item.key(), view, router);
      params.push_back(item.value());
    }
    opt.check_overrides_used(router);
    grads.resize(params.size());
  }

  /// One optimizer step from the gradients torch left in .grad(). Allocates nothing in orthopt.
  void step() {
    for (std::size_t i = 0; i < params.size(); ++i) {
      grads[i] = orthopt::as_batch(orthopt::make_const_view(torch_matrix<float>(params[i].grad())));
    }
    opt.step(grads);
  }
};

orthopt::adamw_options adamw_options(const settings& s) {
  auto o = orthopt::adamw_presets::torch();  // β = (0.9, 0.95), ε = 1e-8, decoupled decay
  o.lr = s.lr;
  o.weight_decay = s.weight_decay;
  return o;
}

torch::optim::AdamW torch_adamw(Net& net, const settings& s) {
  return torch::optim::AdamW(net->parameters(), torch::optim::AdamWOptions(s.lr)
                                                    .betas({0.9, 0.95})
                                                    .eps(1e-8)
                                                    .weight_decay(s.weight_decay));
}

double max_abs_difference(Net& a, Net& b) {
  double worst = 0.0;
  const auto pa = a->parameters(), pb = b->parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    worst = std::max(worst, (pa[i] - pb[i]).abs().max().item<double>());
  }
  return worst;
}

// ---- 2. orthopt's AdamW against torch's ------------------------------------------------------------
void compare_adamw_with_torch(const task& t, const settings& s, const std::vector<torch::Tensor>& batches) {
  std::printf("orthopt AdamW vs torch::optim::AdamW on the same model, data and hyper-parameters:\n");
  Net ours = make_net(), theirs = make_net();
  orthopt_trainer trainer;
  const auto all = trainer.opt.add_group("adamw", orthopt::adamw<float, backend>(adamw_options(s)));
  trainer.add_model(ours, orthopt::param_router(all, all));
  auto reference = torch_adamw(theirs, s);
  check(max_abs_difference(ours, theirs) == 0.0, "both models start from the same weights");

  constexpr int compared_steps = 20;
  double moved = 0.0;
  const auto start = ours->parameters()[2].clone();  // hidden.weight
  for (int k = 0; k < compared_steps; ++k) {
    forward_backward(ours, t, batches[static_cast<std::size_t>(k)]);
    trainer.step();
    forward_backward(theirs, t, batches[static_cast<std::size_t>(k)]);
    reference.step();
  }
  moved = (ours->parameters()[2] - start).abs().max().item<double>();
  const double gap = max_abs_difference(ours, theirs);
  std::printf("  after %d steps: parameters moved up to %.3g, the two optimizers differ by at most %.3g\n",
              compared_steps, moved, gap);
  // Each Adam step moves an element by at most about lr; float rounding of the gradients (two different
  // GEMM orders) perturbs the ratio m/sqrt(v) only slightly, so the paths agree to a small fraction of
  // one step. A wrong stride or a copy that is not written back would differ by whole steps.
  check(gap < 2e-3 * s.lr, "max |orthopt - torch| < 0.002·lr after " + std::to_string(compared_steps) + " steps");
}

// ---- training runs -----------------------------------------------------------------------------------
struct run_result {
  std::string name;
  double first_loss = 0, train_loss = 0, test_loss = 0, test_accuracy = 0, seconds = 0;
};

void report_progress(const run_result& r, int step, int steps, double loss, double seconds) {
  if (step % 100 == 0 || step == steps) {
    std::printf("  %-16s step %4d/%d  batch loss %.4f  %6.1f steps/s\n", r.name.c_str(), step, steps, loss,
                step / seconds);
    std::fflush(stdout);
  }
}

run_result train_with_torch_adamw(const task& t, const settings& s, const std::vector<torch::Tensor>& batches) {
  Net net = make_net();
  auto opt = torch_adamw(net, s);
  const orthopt::warmup_stable_decay schedule(s.steps / 20, s.steps, 0.2);
  run_result r{"torch AdamW"};
  r.first_loss = loss_on(net, t.x_train, t.y_train);
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 1; step <= s.steps; ++step) {
    for (auto& group : opt.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(s.lr * schedule(step - 1));
    }
    const double loss = forward_backward(net, t, batches[static_cast<std::size_t>(step - 1)]);
    opt.step();
    report_progress(r, step, s.steps, loss,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.train_loss = loss_on(net, t.x_train, t.y_train);
  r.test_loss = loss_on(net, t.x_test, t.y_test);
  r.test_accuracy = accuracy_on(net, t.x_test, t.y_test);
  return r;
}

run_result train_with_adamuon(const task& t, const settings& s, const std::vector<torch::Tensor>& batches) {
  Net net = make_net();
  orthopt_trainer trainer;
  const orthopt::warmup_stable_decay schedule(s.steps / 20, s.steps, 0.2);
  auto adamuon_opts = orthopt::adamuon_presets::code();
  adamuon_opts.lr = s.lr;
  adamuon_opts.weight_decay = s.weight_decay;
  const auto hidden = trainer.opt.add_group("adamuon", orthopt::adamuon<float, backend>(adamuon_opts), schedule);
  const auto rest = trainer.opt.add_group("adamw", orthopt::adamw<float, backend>(adamw_options(s)), schedule);
  // The router sends vectors (biases) and the parameter named "head" to AdamW by default; the first
  // layer, a matrix like any other to the router, is sent there by name, as the papers do.
  orthopt::param_router router(hidden, rest);
  router.override_param("input.weight", rest);
  trainer.add_model(net, router);
  std::printf("%s", trainer.opt.routing_table().c_str());

  run_result r{"orthopt AdaMuon"};
  r.first_loss = loss_on(net, t.x_train, t.y_train);
  torch::Tensor& w_hidden = trainer.params[2];
  check(trainer.opt.routing()[2].name == "hidden.weight" && trainer.opt.routing()[2].group == "adamuon",
        "hidden.weight is stepped by AdaMuon");
  const void* const hidden_address = w_hidden.data_ptr();

  const int rms_check_step = s.steps / 2;  // in the schedule's stable phase
  const int nan_check_step = s.steps / 2 + 1;
  const auto t0 = std::chrono::steady_clock::now();
  double trained = 0.0;  // seconds spent in forward, backward and step, without the checks
  for (int step = 1; step <= s.steps; ++step) {
    const auto s0 = std::chrono::steady_clock::now();
    const double loss = forward_backward(net, t, batches[static_cast<std::size_t>(step - 1)]);
    if (step == nan_check_step) {
      // 4. A NaN in one gradient: the step throws before writing anything.
      std::vector<torch::Tensor> before;
      for (const auto& p : trainer.params) before.push_back(p.clone());
      const std::int64_t steps_before = trainer.opt.steps_taken();
      const float saved = trainer.params[4].grad()[7][3].item<float>();  // head.weight's gradient
      trainer.params[4].grad()[7][3] = std::nanf("");
      std::string message;
      try {
        trainer.step();
      } catch (const orthopt::value_error& e) {
        message = e.what();
      }
      std::printf("  a NaN gradient is refused: %s\n", message.c_str());
      check(message.find("head.weight") != std::string::npos, "the error names the parameter (head.weight)");
      bool untouched = trainer.opt.steps_taken() == steps_before;
      for (std::size_t i = 0; i < before.size(); ++i) untouched = untouched && torch::equal(before[i], trainer.params[i]);
      check(untouched, "after the refused step every torch parameter is bit-for-bit unchanged");
      trainer.params[4].grad()[7][3] = saved;
    }
    if (step == rms_check_step) {
      // 3. AdaMuon's update has RMS 0.2·lr: W_new = W(1 − lr·wd) − lr·γÔ with ‖γÔ‖_RMS = 0.2.
      const double lr = trainer.opt.next_lr(hidden);
      const auto before = w_hidden.to(torch::kDouble);
      trainer.step();
      const auto update = (before * (1.0 - lr * s.weight_decay) - w_hidden.to(torch::kDouble)) / lr;
      const double rms = update.pow(2).mean().sqrt().item<double>();
      std::printf("  step %d: hidden.weight moved by an update of RMS %.5f·lr\n", step, rms);
      check(std::abs(rms - 0.2) < 2e-3, "AdaMuon's update RMS is 0.2·lr (within 1%)");
    } else {
      trainer.step();
    }
    trained += std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    report_progress(r, step, s.steps, loss, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  r.seconds = trained;
  r.train_loss = loss_on(net, t.x_train, t.y_train);
  r.test_loss = loss_on(net, t.x_test, t.y_test);
  r.test_accuracy = accuracy_on(net, t.x_test, t.y_test);
  check(w_hidden.data_ptr() == hidden_address && w_hidden.data_ptr() == net->hidden->weight.data_ptr(),
        "the model's hidden.weight kept its memory: orthopt wrote into it");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--steps" && i + 1 < argc) {
      s.steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--steps N]   (N >= 100, default 600)\n", argv[0]);
      return 2;
    }
  }
  if (s.steps < 100) {
    std::fprintf(stderr, "--steps must be at least 100\n");
    return 2;
  }
  // The same thread count for torch's kernels as for orthopt's products, so the timings compare.
  const int threads = backend{}.threads();
  torch::set_num_threads(threads);
  std::printf("libtorch %s, %d torch threads; orthopt::%s, %d threads\n", TORCH_VERSION, torch::get_num_threads(),
              backend_name, threads);

  const task t = make_task();
  const auto batches = make_batches(s, t.x_train.size(0));

  compare_adamw_with_torch(t, s, batches);

  std::printf("\nTraining %lld-%lld-%lld-%lld (GELU) on a teacher-student task, %d steps of %lld, "
              "WSD schedule, lr %g, wd %g:\n",
              static_cast<long long>(in_features), static_cast<long long>(width), static_cast<long long>(width),
              static_cast<long long>(classes), s.steps, static_cast<long long>(s.batch), s.lr, s.weight_decay);
  const run_result baseline = train_with_torch_adamw(t, s, batches);
  const run_result ours = train_with_adamuon(t, s, batches);

  // 5. Training works.
  check(ours.train_loss < 0.5 * ours.first_loss, "AdaMuon training halves the training loss");

  std::printf("\n  %-16s %12s %12s %10s %9s\n", "optimizer", "train loss", "test loss", "test acc", "time [s]");
  for (const auto& r : {baseline, ours}) {
    std::printf("  %-16s %12.4f %12.4f %9.2f%% %9.2f\n", r.name.c_str(), r.train_loss, r.test_loss,
                100.0 * r.test_accuracy, r.seconds);
  }
  if (failures != 0) {
    std::printf("\n%d check(s) FAILED\n", failures);
    return 1;
  }
  std::printf("\nall checks passed\n");
  return 0;
}
