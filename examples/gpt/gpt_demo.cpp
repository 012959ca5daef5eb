// SPDX-License-Identifier: Apache-2.0
//
// The orthopt demo: a byte-level GPT trained on real English text (Debian's `fortunes` corpus) through
// libtorch, with AdamW, Muon, AdaMuon, NAMO and NAMO-D, compared as the AdaMuon paper's Table 1 does.
//
// torch computes the loss and the gradients; orthopt's optimizer steps the model's own tensors, reading
// .grad(), through the tensor adapter of examples/libtorch/torch_matrix.hpp (no copies). The optimizer
// side (routing, groups, schedule, budget) is examples/gpt/trainer.hpp, written once over the backend:
// the Eigen or BLAS backend for a model on the CPU, and, in orthopt_gpt_demo_cuda (a CUDA libtorch and
// nvcc), the CUDA backend for `--device cuda`, stepping the model's CUDA tensors in place.
//
// A fair comparison: one warmup-stable-decay schedule, one initialization and one batch order per seed
// for every optimizer; each optimizer at the learning rate the same sweep chose for it (`--sweep` reruns
// the sweep; its committed results are in examples/gpt/sweep.md). `--full` (the study the README's table
// comes from): every optimizer, 800 steps, two seeds, reported as mean and range; by default a first run
// a newcomer waits for: the five rules, 400 steps, seed 0.
//
// Output: live progress; the Table 1 shape (fraction of steps and of wall time saved to reach AdamW's
// final training and validation loss, final losses, time per step split into forward/backward and
// optimizer); <out>/curves.csv, <out>/mean_curves.csv, <out>/results.md, <out>/loss.png (gnuplot), and
// text sampled from each trained model in <out>/samples.txt.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "orthopt/eigen.hpp"
#if defined(ORTHOPT_DEMO_USE_BLAS)
#include "orthopt/blas.hpp"
#endif
#include "torch_matrix.hpp"
#include "trainer.hpp"

namespace {

using gpt_demo::make_cuda_trainer;
using gpt_demo::parameter;
using gpt_demo::rule_choice;
using gpt_demo::trainer;
using gpt_demo::trainer_interface;
using gpt_demo::trainer_settings;
using gpt_demo::budget_options;

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

#if defined(ORTHOPT_DEMO_USE_BLAS)
using backend = orthopt::blas_backend;  // products on the system BLAS (OpenBLAS picks kernels at run time)
constexpr const char* backend_name = "blas_backend";
#else
using backend = orthopt::eigen_backend;
constexpr const char* backend_name = "eigen_backend";
#endif

// ---------------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------------
enum class method { adamw, muon, adamuon, namo, namo_d, muon_budget, adamuon_budget };
/// The default run: the five optimizers, then Muon and AdaMuon with the adaptive Newton–Schulz budget.
constexpr std::array<method, 7> all_methods{method::adamw,  method::muon,        method::adamuon,       method::namo,
                                            method::namo_d, method::muon_budget, method::adamuon_budget};
/// The optimizers the lr sweep covers (a budget variant runs at its base optimizer's lr).
constexpr std::array<method, 5> swept_methods{method::adamw, method::muon, method::adamuon, method::namo, method::namo_d};

/// The optimizer a variant is built on.
method base_of(method m) {
  if (m == method::muon_budget) return method::muon;
  if (m == method::adamuon_budget) return method::adamuon;
  return m;
}
bool uses_budget(method m) { return base_of(m) != m; }

const char* method_name(method m) {
  switch (m) {
    case method::adamw: return "AdamW";
    case method::muon: return "Muon";
    case method::adamuon: return "AdaMuon";
    case method::namo: return "NAMO";
    case method::namo_d: return "NAMO-D";
    case method::muon_budget: return "Muon+budget";
    case method::adamuon_budget: return "AdaMuon+budget";
  }
  return "?";
}

/// The learning rates the committed sweep chose (examples/gpt/sweep.md; `--sweep` reruns it): the lowest
/// final validation loss of each optimizer over the grid below, seed 0.
double chosen_lr(method m) {
  switch (base_of(m)) {
    case method::adamw: return 2e-3;
    case method::muon: return 8e-3;
    case method::adamuon: return 4e-3;
    case method::namo: return 1.6e-2;
    case method::namo_d: return 1.6e-2;
    default: break;
  }
  return 0.0;
}

/// The sweep's grid, the same for every optimizer: every rule runs with an AdamW-matched update size
/// (Muon `moonlight`, AdaMuon `code`, NAMO and NAMO-D `code`), so one grid covers all five.
const std::vector<double> sweep_grid{1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2};

struct settings {
  // The model: byte-level, d_model × layers, heads, context.
  std::int64_t d_model = 128, layers = 4, heads = 4, context = 64;
  // Training.
  std::int64_t batch = 32;
  int steps = 800;
  int seeds = 2;
  double weight_decay = 0.1;
  int eval_every = 20;
  std::int64_t val_sequences = 128;  // fixed validation windows, evaluated every eval_every steps
  // Modes and paths.
  bool quick = false, sweep = false, full = false;
  bool first_run = false;  // none of --full, --quick, --sweep: the short default run (set by parse)
  std::string data = "/usr/share/games/fortunes";
  std::string out = "gpt-output";
  std::map<method, double> lr_override;
  std::vector<double> sweep_lrs = sweep_grid;  // --sweep-lrs: a part of the grid (to extend or resume a sweep)
  int threads = 0;  // 0: the backend's default (OpenMP's thread count)
  torch::Device device = torch::kCPU;  // --device cuda: the model on the GPU, orthopt on its CUDA backend
  bool gpu_checks_on_device = true;    // --gpu-checks host: each value check waits for the GPU
  std::vector<method> methods{all_methods.begin(), all_methods.end()};  // --methods: a subset
};

// ---------------------------------------------------------------------------------------------------
// The corpus: Debian's `fortunes` (real English text, 2.4 MB), one fortune in 20 held out
// ---------------------------------------------------------------------------------------------------
struct corpus {
  torch::Tensor train, val;  // bytes as int64 token ids
  std::size_t files = 0, fortunes = 0;
};

corpus load_corpus(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string how = " (Debian: `apt install fortunes`, which installs it in /usr/share/games/fortunes; "
                          "or pass --data DIR, a directory of fortune files)";
  if (!fs::is_directory(dir)) throw std::runtime_error("no corpus directory " + dir + how);
  // The fortune text files: regular files without an extension (*.dat are indices, *.u8 symlinks).
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && !e.is_symlink() && !e.path().has_extension()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string train_text, val_text;
  corpus c;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    // Fortunes are separated by lines holding a single '%'. Every 20th fortune (counted over the whole
    // corpus in file-name order) is validation text: a fixed split spread over every topic.
    std::string text = ss.str(), line, current;
    std::istringstream lines(text);
    const auto flush = [&] {
      if (current.empty()) return;
      (c.fortunes % 20 == 19 ? val_text : train_text) += current + "\n";
      ++c.fortunes;
      current.clear();
    };
    while (std::getline(lines, line)) {
      if (line == "%") flush();
      else current += line + "\n";
    }
    flush();
    ++c.files;
  }
  if (train_text.size() < 1000000) {
    throw std::runtime_error("the corpus in " + dir + " has " + std::to_string(train_text.size()) +
                             " bytes of training text, expected over 1 MB" + how);
  }
  const auto to_tensor = [](const std::string& s) {
    auto t = torch::empty({static_cast<std::int64_t>(s.size())}, torch::kLong);
    auto* p = t.data_ptr<std::int64_t>();
    for (std::size_t i = 0; i < s.size(); ++i) p[i] = static_cast<unsigned char>(s[i]);
    return t;
  };
  c.train = to_tensor(train_text);
  c.val = to_tensor(val_text);
  return c;
}

/// Batches of `rows` windows of context+1 bytes starting at the given offsets: inputs and targets.
std::pair<torch::Tensor, torch::Tensor> windows(const torch::Tensor& text, const torch::Tensor& starts, std::int64_t context) {
  const auto idx = starts.unsqueeze(1) + torch::arange(context + 1, starts.options()).unsqueeze(0);
  const auto w = text.index({idx});
  return {w.slice(1, 0, context), w.slice(1, 1, context + 1)};
}

/// The batch order of one seed, the same for every optimizer: random window offsets.
torch::Tensor batch_offsets(std::uint64_t seed, int steps, std::int64_t batch, std::int64_t limit) {
  std::mt19937_64 rng(seed * 7919 + 17);
  std::uniform_int_distribution<std::int64_t> pick(0, limit - 1);
  auto t = torch::empty({steps, batch}, torch::kLong);
  auto* p = t.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = pick(rng);
  return t;
}

// ---------------------------------------------------------------------------------------------------
// The model: a pre-norm GPT (token and position embeddings, causal self-attention, GELU MLP, untied head)
// ---------------------------------------------------------------------------------------------------
struct BlockImpl : torch::nn::Module {
  BlockImpl(std::int64_t d, std::int64_t heads, std::int64_t context)
      : ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        qkv(register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(d, 3 * d).bias(false)))),
        proj(register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        fc(register_module("fc", torch::nn::Linear(torch::nn::LinearOptions(d, 4 * d).bias(false)))),
        out(register_module("out", torch::nn::Linear(torch::nn::LinearOptions(4 * d, d).bias(false)))),
        n_heads(heads),
        causal_mask(register_buffer("causal_mask", torch::ones({context, context}, torch::kBool).triu(1))) {}

  torch::Tensor attention(const torch::Tensor& x) {
    const auto B = x.size(0), T = x.size(1), C = x.size(2), hd = C / n_heads;
    const auto parts = qkv(x).view({B, T, 3, n_heads, hd}).permute({2, 0, 3, 1, 4});  // 3, B, H, T, hd
    const auto q = parts[0], k = parts[1], v = parts[2];
    auto att = q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(hd)));
    att = att.masked_fill(causal_mask.slice(0, 0, T).slice(1, 0, T), -std::numeric_limits<float>::infinity());
    const auto y = torch::softmax(att, -1).matmul(v).transpose(1, 2).reshape({B, T, C});
    return proj(y);
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x + attention(ln1(x));
    return x + out(torch::gelu(fc(ln2(x))));
  }

  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, out;
  std::int64_t n_heads;
  torch::Tensor causal_mask;
};
TORCH_MODULE(Block);

struct GPTImpl : torch::nn::Module {
  explicit GPTImpl(const settings& s)
      : wte(register_module("wte", torch::nn::Embedding(256, s.d_model))),
        wpe(register_module("wpe", torch::nn::Embedding(s.context, s.d_model))),
        blocks(register_module("blocks", torch::nn::ModuleList())),
        ln_f(register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.d_model})))),
        head(register_module("head", torch::nn::Linear(torch::nn::LinearOptions(s.d_model, 256).bias(false)))) {
    for (std::int64_t l = 0; l < s.layers; ++l) {
      blocks->push_back(Block(s.d_model, s.heads, s.context));  // parameters named blocks.<l>.…
    }
    // GPT-2's initialization: N(0, 0.02) for every matrix, the residual projections scaled by 1/√(2L).
    torch::NoGradGuard no_grad;
    for (auto& item : named_parameters()) {
      if (item.value().dim() != 2) continue;
      const bool residual = item.key().find(".proj.") != std::string::npos || item.key().find(".out.") != std::string::npos;
      item.value().normal_(0.0, residual ? 0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)) : 0.02);
    }
  }

  torch::Tensor forward(const torch::Tensor& tokens) {
    const auto T = tokens.size(1);
    auto x = wte(tokens) + wpe(torch::arange(T, tokens.options()));
    for (const auto& b : *blocks) x = b->as<BlockImpl>()->forward(x);
    return head(ln_f(x));
  }

  torch::nn::Embedding wte, wpe;
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln_f;
  torch::nn::Linear head;
};
TORCH_MODULE(GPT);

torch::Tensor loss_of(GPT& model, const torch::Tensor& x, const torch::Tensor& y) {
  const auto logits = model->forward(x);
  return torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), y.reshape({-1}));
}

double validation_loss(GPT& model, const torch::Tensor& vx, const torch::Tensor& vy) {
  torch::NoGradGuard no_grad;
  double sum = 0.0;
  const std::int64_t chunk = 64, n = vx.size(0);
  for (std::int64_t i = 0; i < n; i += chunk) {
    const auto e = std::min(n, i + chunk);
    sum += loss_of(model, vx.slice(0, i, e), vy.slice(0, i, e)).item<double>() * static_cast<double>(e - i);
  }
  return sum / static_cast<double>(n);
}

/// `length` bytes sampled from the model after `prompt`, at temperature 0.8, from a fixed seed.
std::string sample(GPT& model, const settings& s, const std::string& prompt, int length) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(2024);
  std::vector<std::int64_t> ids;
  for (const char ch : prompt) ids.push_back(static_cast<unsigned char>(ch));
  std::string text = prompt;
  for (int i = 0; i < length; ++i) {
    const auto from = ids.size() > static_cast<std::size_t>(s.context) ? ids.size() - static_cast<std::size_t>(s.context) : 0;
    const auto window = torch::tensor(std::vector<std::int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.end()),
                                      torch::kLong).unsqueeze(0).to(s.device);
    const auto logits = model->forward(window).select(1, window.size(1) - 1).squeeze(0) / 0.8;
    const auto next = torch::multinomial(torch::softmax(logits, -1), 1).item<std::int64_t>();
    ids.push_back(next);
    text += static_cast<char>(next);
  }
  return text;
}

// ---------------------------------------------------------------------------------------------------
// orthopt over the model's own tensors
// ---------------------------------------------------------------------------------------------------
rule_choice rule_of(method m) {
  switch (base_of(m)) {
    case method::muon: return rule_choice::muon;
    case method::adamuon: return rule_choice::adamuon;
    case method::namo: return rule_choice::namo;
    case method::namo_d: return rule_choice::namo_d;
    default: break;
  }
  return rule_choice::adamw;
}

/// The model's own tensors, as orthopt views (no copies), checked to be viewed in place.
std::vector<parameter> parameters_of(GPT& model, torch::Device device) {
  std::vector<parameter> params;
  for (const auto& item : model->named_parameters()) {
    const auto view = orthopt::make_view(torch_matrix<float>(item.value(), device.type()));
    if (view.data != item.value().data_ptr<float>()) throw std::logic_error("orthopt does not view " + item.key() + " in place");
    params.push_back({item.key(), view, item.value().dim() == 1});
  }
  return params;
}

/// The trainer of the run: the CUDA backend for a model on the GPU, the CPU backend otherwise.
std::unique_ptr<trainer_interface> make_trainer(GPT& model, method m, double lr, const settings& s) {
  trainer_settings ts;
  ts.matrices = rule_of(m);
  ts.group_name = method_name(m);
  ts.lr = lr;
  ts.weight_decay = s.weight_decay;
  ts.steps = s.steps;
  ts.budget = uses_budget(m);
  const auto params = parameters_of(model, s.device);
#if defined(ORTHOPT_DEMO_CUDA)
  if (s.device.is_cuda()) return make_cuda_trainer(ts, params, s.gpu_checks_on_device);
#endif
  return std::make_unique<trainer<backend>>(ts, params, backend(s.threads));
}

/// The gradients of the model's parameters, in parameters_of's order, as views.
std::vector<orthopt::matrix_view<const float>> gradients_of(const std::vector<torch::Tensor>& params, torch::Device device) {
  std::vector<orthopt::matrix_view<const float>> grads;
  grads.reserve(params.size());
  for (const auto& p : params) grads.push_back(orthopt::make_const_view(torch_matrix<float>(p.grad(), device.type())));
  return grads;
}

// ---------------------------------------------------------------------------------------------------
// One training run
// ---------------------------------------------------------------------------------------------------
struct curve_point {
  int step = 0;
  double train_loss = 0.0;  // mean batch loss over the steps since the previous evaluation
  double val_loss = 0.0;
  double seconds = 0.0;     // training time so far (forward, backward, optimizer; evaluations excluded)
};

struct run_result {
  method m = method::adamw;
  int seed = 0;
  double lr = 0.0;
  std::vector<curve_point> curve;
  double forward_backward_seconds = 0.0, optimizer_seconds = 0.0;
  double ns_iterations_per_step = 0.0;  // over all Newton–Schulz matrices
  std::string routing, sample_text, budget_report;
};

struct progress {
  int runs_total = 0, runs_done = 0;
  clock_type::time_point start = clock_type::now();
};

/// After the first step: every parameter with a nonzero gradient has new values, in its own memory.
void check_stepped_in_place(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& before,
                            const char* name) {
  int changed = 0, expected = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i].grad().abs().max().item<float>() == 0.0f) continue;  // an all-zero gradient may leave it be
    ++expected;
    if (!torch::equal(params[i], before[i])) ++changed;
  }
  if (changed != expected) {
    throw std::runtime_error(std::string(name) + ": the first step changed " + std::to_string(changed) + " of " +
                             std::to_string(expected) + " parameters with a gradient");
  }
  static bool said = false;  // once per program
  if (!said) {
    std::printf("  orthopt stepped %d of %zu parameter tensors in place, in %s memory\n", changed, params.size(),
                params.front().device().str().c_str());
    said = true;
  }
}

run_result train(method m, int seed, double lr, const settings& s, const corpus& c, const torch::Tensor& vx,
                 const torch::Tensor& vy, progress& prog, bool want_sample) {
  torch::manual_seed(static_cast<std::uint64_t>(1000 + seed));  // the same initial weights for every optimizer
  GPT model(s);
  model->to(s.device);  // initialized on the CPU, so every device starts from the same weights
  const auto t = make_trainer(model, m, lr, s);
  std::vector<torch::Tensor> params;
  for (const auto& p : model->parameters()) params.push_back(p);
  const auto offsets = batch_offsets(static_cast<std::uint64_t>(seed), s.steps, s.batch, c.train.size(0) - s.context - 1);

  run_result r;
  r.m = m;
  r.seed = seed;
  r.lr = lr;
  r.routing = t->routing_table();
  double window_sum = 0.0;
  int window_n = 0;
  const auto record = [&](int step) {
    const double train_loss = window_n > 0 ? window_sum / window_n : std::log(256.0);
    r.curve.push_back({step, train_loss, validation_loss(model, vx, vy), r.forward_backward_seconds + r.optimizer_seconds});
    window_sum = 0.0;
    window_n = 0;
  };
  record(0);
  r.curve.back().train_loss = r.curve.back().val_loss;  // before training: the validation loss stands in
  const double tokens_per_step = static_cast<double>(s.batch * s.context);
  for (int step = 1; step <= s.steps; ++step) {
    const auto [x, y] = windows(c.train, offsets[step - 1].to(s.device), s.context);
    const auto t0 = clock_type::now();
    model->zero_grad(/*set_to_none=*/false);  // the gradients keep their memory
    const auto loss = loss_of(model, x, y);
    loss.backward();
    const double loss_value = loss.item<double>();  // waits for the backward pass
    const auto t1 = clock_type::now();
    std::vector<torch::Tensor> before;
    if (step == 1) {
      for (const auto& p : params) before.push_back(p.detach().clone());
    }
    t->step(gradients_of(params, s.device));
    if (s.device.is_cuda()) torch::cuda::synchronize();  // the optimizer's kernels, timed to their end
    if (step == 1) check_stepped_in_place(params, before, method_name(m));
    r.forward_backward_seconds += std::chrono::duration<double>(t1 - t0).count();
    r.optimizer_seconds += seconds_since(t1);
    window_sum += loss_value;
    ++window_n;
    if (step % s.eval_every == 0 || step == s.steps) record(step);
    if (step % 100 == 0 || step == s.steps) {
      const double trained = r.forward_backward_seconds + r.optimizer_seconds;
      const double elapsed = seconds_since(prog.start);
      const double fraction = (prog.runs_done + static_cast<double>(step) / s.steps) / prog.runs_total;
      std::printf("  %-8s seed %d  step %4d/%d  loss %.4f  val %.4f  %6.0f tokens/s  ETA %4.0f s\n", method_name(m), seed,
                  step, s.steps, loss_value, r.curve.back().val_loss, step * tokens_per_step / trained,
                  elapsed / fraction - elapsed);
      std::fflush(stdout);
    }
  }
  if (want_sample) r.sample_text = sample(model, s, "Q: ", 240);
  r.ns_iterations_per_step = static_cast<double>(t->ns_iterations()) / s.steps;
  r.budget_report = t->budget_report();
  ++prog.runs_done;
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------
/// The first (fractional) step at which `curve` reaches `target`, interpolating between evaluations, and
/// the training time there; {-1, -1} when never reached.
std::pair<double, double> reach(const std::vector<curve_point>& curve, double curve_point::*field, double target) {
  for (std::size_t i = 1; i < curve.size(); ++i) {
    if (curve[i].*field <= target) {
      const auto& a = curve[i - 1];
      const auto& b = curve[i];
      const double f = a.*field <= target ? 0.0 : (a.*field - target) / (a.*field - b.*field);
      return {a.step + f * (b.step - a.step), a.seconds + f * (b.seconds - a.seconds)};
    }
  }
  return {-1.0, -1.0};
}

struct summary_stat {
  std::vector<double> values;
  bool all_present = true;
  void add(double v, bool present) {
    if (present) values.push_back(v);
    else all_present = false;
  }
  std::string text(const char* fmt, double scale = 1.0) const {
    if (values.empty()) return "not reached";
    const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
    const double mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
    char buf[128];
    if (values.size() == 1) {
      std::snprintf(buf, sizeof buf, fmt, scale * mean);
      return std::string(buf) + (all_present ? "" : " (one seed; the other not reached)");
    }
    char a[32], b[32], m[32];
    std::snprintf(m, sizeof m, fmt, scale * mean);
    std::snprintf(a, sizeof a, fmt, scale * *lo);
    std::snprintf(b, sizeof b, fmt, scale * *hi);
    std::snprintf(buf, sizeof buf, "%s (%s … %s)", m, a, b);
    return std::string(buf) + (all_present ? "" : " (a seed not reached)");
  }
};

std::string results_table(const std::vector<run_result>& runs, const settings& s) {
  std::string table =
      "| optimizer | lr | steps saved to AdamW's final train loss | steps saved to AdamW's final val loss | "
      "time saved to AdamW's final train loss | time saved to AdamW's final val loss | final train loss | "
      "final val loss | forward+backward per step | optimizer per step | NS iterations per step |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const method m : all_methods) {
    summary_stat steps_train, steps_val, time_train, time_val, final_train, final_val, fb, op, ns;
    double lr = 0.0;
    for (const auto& r : runs) {
      if (r.m != m) continue;
      lr = r.lr;
      const run_result* base = nullptr;
      for (const auto& b : runs) {
        if (b.m == method::adamw && b.seed == r.seed) base = &b;
      }
      if (base == nullptr) continue;
      const auto& end = base->curve.back();
      const auto [st, tt] = reach(r.curve, &curve_point::train_loss, end.train_loss);
      const auto [sv, tv] = reach(r.curve, &curve_point::val_loss, end.val_loss);
      steps_train.add(1.0 - st / end.step, st >= 0);
      steps_val.add(1.0 - sv / end.step, sv >= 0);
      time_train.add(1.0 - tt / end.seconds, tt >= 0);
      time_val.add(1.0 - tv / end.seconds, tv >= 0);
      final_train.add(r.curve.back().train_loss, true);
      final_val.add(r.curve.back().val_loss, true);
      fb.add(r.forward_backward_seconds / s.steps, true);
      op.add(r.optimizer_seconds / s.steps, true);
      ns.add(r.ns_iterations_per_step, true);
    }
    if (final_val.values.empty()) continue;
    char lr_text[32];
    std::snprintf(lr_text, sizeof lr_text, "%g", lr);
    table += std::string("| ") + method_name(m) + " | " + lr_text + " | " + steps_train.text("%.0f%%", 100) + " | " +
             steps_val.text("%.0f%%", 100) + " | " + time_train.text("%.0f%%", 100) + " | " + time_val.text("%.0f%%", 100) +
             " | " + final_train.text("%.4f") + " | " + final_val.text("%.4f") + " | " + fb.text("%.1f ms", 1e3) + " | " +
             op.text("%.1f ms", 1e3) + " | " + (m == method::adamw ? std::string("—") : ns.text("%.1f")) + " |\n";
  }
  return table;
}

void write_curves(const std::vector<run_result>& runs, const settings& s) {
  std::ofstream csv(s.out + "/curves.csv");
  csv << "optimizer,seed,lr,step,tokens,train_seconds,train_loss,val_loss\n";
  for (const auto& r : runs) {
    for (const auto& p : r.curve) {
      csv << method_name(r.m) << ',' << r.seed << ',' << r.lr << ',' << p.step << ',' << p.step * s.batch * s.context << ','
          << p.seconds << ',' << p.train_loss << ',' << p.val_loss << '\n';
    }
  }
  // The mean over seeds at each evaluation, for the plot.
  std::ofstream mean(s.out + "/mean_curves.csv");
  mean << "optimizer,step,train_seconds,train_loss,val_loss\n";
  for (const method m : all_methods) {
    std::vector<const run_result*> mine;
    for (const auto& r : runs) {
      if (r.m == m) mine.push_back(&r);
    }
    if (mine.empty()) continue;
    for (std::size_t i = 0; i < mine.front()->curve.size(); ++i) {
      double sec = 0, tr = 0, va = 0;
      for (const auto* r : mine) {
        sec += r->curve[i].seconds;
        tr += r->curve[i].train_loss;
        va += r->curve[i].val_loss;
      }
      const auto n = static_cast<double>(mine.size());
      mean << method_name(m) << ',' << mine.front()->curve[i].step << ',' << sec / n << ',' << tr / n << ',' << va / n << '\n';
    }
  }
}

void plot(const settings& s) {
#ifdef ORTHOPT_GPT_PLOT_SCRIPT
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::printf("gnuplot is not installed (Debian: gnuplot-nox); no plot\n");
    return;
  }
  const std::string cmd = "gnuplot -e \"csv='" + s.out + "/mean_curves.csv'; png='" + s.out + "/loss.png'\" '" +
                          ORTHOPT_GPT_PLOT_SCRIPT + "'";
  if (std::system(cmd.c_str()) == 0) std::printf("wrote %s/loss.png\n", s.out.c_str());
  else std::printf("gnuplot failed; no plot\n");
#else
  (void)s;
#endif
}

// ---------------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------------
const char* usage =
    "usage: gpt_demo [--full] [--quick] [--sweep [--sweep-lrs X,Y]] [--steps N] [--seeds K] [--lr NAME=X]\n"
    "                [--methods A,B] [--device cpu|cuda] [--threads N] [--data DIR] [--out DIR]\n"
    "  (default)   the first run: AdamW, Muon, AdaMuon, NAMO and NAMO-D at their chosen learning rates, seed 0,\n"
    "              400 steps (under 10 minutes on 2 cores)\n"
    "  --full      the study the README's table comes from: every optimizer, then Muon and AdaMuon with the\n"
    "              adaptive Newton–Schulz budget (Muon+budget, AdaMuon+budget), seeds 0..K-1 (K = 2), 800 steps\n"
    "  --quick     one seed, 120 steps, a smaller model: the smoke test (every validation loss must fall)\n"
    "  --sweep     the learning-rate sweep: every optimizer at each lr of {1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2}, seed 0;\n"
    "              prints and writes the lr with the lowest final validation loss for each\n"
    "  --sweep-lrs X,Y,...  sweep these learning rates instead of the whole grid (to extend or resume one)\n"
    "  --lr NAME=X the learning rate of one optimizer (AdamW, Muon, AdaMuon, NAMO, NAMO-D)\n"
    "  --methods A,B,...  run only these of AdamW, Muon, AdaMuon, NAMO, NAMO-D, Muon+budget, AdaMuon+budget\n"
    "              (AdamW, the baseline of the comparison, must be one of them)\n"
    "  --device D  cpu (the default), or cuda: the model on the GPU and orthopt on its CUDA backend, stepping\n"
    "              the CUDA tensors in place (only in orthopt_gpt_demo_cuda, built against a CUDA libtorch)\n"
    "  --gpu-checks W  device (the default): the optimizer's NaN/Inf checks are recorded on the GPU and read\n"
    "              once per step; host: each check waits for the GPU and refuses before anything is written\n";

settings parse(int argc, char** argv) {
  settings s;
  bool seeds_given = false, methods_given = false, steps_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value (try --help)");
      return argv[++i];
    };
    if (a == "--quick") {
      s.quick = true;
    } else if (a == "--full") {
      s.full = true;
    } else if (a == "--sweep") {
      s.sweep = true;
    } else if (a == "--steps") {
      s.steps = std::stoi(value());
      steps_given = true;
    } else if (a == "--seeds") {
      s.seeds = std::stoi(value());
      seeds_given = true;
    } else if (a == "--sweep-lrs") {
      s.sweep_lrs.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) {
        const double lr = std::stod(item);
        if (!(lr > 0.0) || !std::isfinite(lr)) throw std::invalid_argument("--sweep-lrs: '" + item + "' is not a learning rate");
        s.sweep_lrs.push_back(lr);
      }
      if (s.sweep_lrs.empty()) throw std::invalid_argument("--sweep-lrs needs a comma-separated list of learning rates");
    } else if (a == "--threads") {
      s.threads = std::stoi(value());
    } else if (a == "--device") {
      const std::string d = value();
      if (d == "cpu") {
        s.device = torch::kCPU;
      } else if (d == "cuda") {
#if defined(ORTHOPT_DEMO_CUDA)
        if (!torch::cuda::is_available()) throw std::invalid_argument("--device cuda: this libtorch sees no CUDA device");
        s.device = torch::kCUDA;
#else
        throw std::invalid_argument("--device cuda needs orthopt_gpt_demo_cuda (built with a CUDA libtorch and nvcc)");
#endif
      } else {
        throw std::invalid_argument("--device takes cpu or cuda, not '" + d + "'");
      }
    } else if (a == "--gpu-checks") {
      const std::string w = value();
      if (w != "device" && w != "host") throw std::invalid_argument("--gpu-checks takes device or host, not '" + w + "'");
      s.gpu_checks_on_device = w == "device";
    } else if (a == "--methods") {
      s.methods.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) {
        const auto found = std::find_if(all_methods.begin(), all_methods.end(), [&](method m) { return item == method_name(m); });
        if (found == all_methods.end()) {
          throw std::invalid_argument("--methods: '" + item + "' is not one of AdamW, Muon, AdaMuon, NAMO, NAMO-D, Muon+budget, AdaMuon+budget");
        }
        if (std::find(s.methods.begin(), s.methods.end(), *found) == s.methods.end()) s.methods.push_back(*found);
      }
      methods_given = true;
      if (std::find(s.methods.begin(), s.methods.end(), method::adamw) == s.methods.end()) {
        throw std::invalid_argument("--methods must include AdamW, the baseline every optimizer is compared with");
      }
    } else if (a == "--data") {
      s.data = value();
    } else if (a == "--out") {
      s.out = value();
    } else if (a == "--lr") {
      const std::string v = value();
      const auto eq = v.find('=');
      bool known = false;
      for (const method m : swept_methods) {
        if (eq != std::string::npos && v.substr(0, eq) == method_name(m)) {
          s.lr_override[m] = std::stod(v.substr(eq + 1));
          known = true;
        }
      }
      if (!known) throw std::invalid_argument("--lr takes NAME=X with NAME one of AdamW, Muon, AdaMuon, NAMO, NAMO-D; got '" + v + "'");
    } else if (a == "--help" || a == "-h") {
      std::printf("%s", usage);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + a + "' (try --help)");
    }
  }
  s.first_run = !s.full && !s.quick && !s.sweep;
  if (s.first_run) {
    // The first run: the five rules on one seed, half the study's steps; the same model, schedule shape
    // and learning rates.
    if (!seeds_given) s.seeds = 1;
    if (!steps_given) s.steps = 400;
    if (!methods_given) s.methods.assign(swept_methods.begin(), swept_methods.end());
  }
  if (s.quick) {
    s.d_model = 64;
    s.layers = 2;
    s.steps = std::min(s.steps, 120);
    s.seeds = 1;
    s.val_sequences = 64;
  }
  if (s.steps < 20 || s.seeds < 1) throw std::invalid_argument("--steps must be at least 20 and --seeds at least 1");
  return s;
}

}  // namespace

int main(int argc, char** argv) try {
  settings s = parse(argc, argv);
  if (s.threads <= 0) s.threads = backend{}.threads();
  const int threads = s.threads;
  torch::set_num_threads(threads);  // torch's kernels and orthopt's products on the same cores
  const std::string backend_used =
      s.device.is_cuda()
          ? std::string("cuda_backend on ") + s.device.str() + (s.gpu_checks_on_device ? " (checks on the device)" : " (checks on the host)")
          : backend_name;
  std::printf("orthopt GPT demo: libtorch %s, %d torch threads; orthopt::%s\n", TORCH_VERSION, torch::get_num_threads(),
              backend_used.c_str());

  corpus c = load_corpus(s.data);
  c.train = c.train.to(s.device);
  c.val = c.val.to(s.device);
  std::printf("corpus: %zu fortunes from %zu files in %s: %lld bytes of training text, %lld held out (every 20th fortune)\n",
              c.fortunes, c.files, s.data.c_str(), static_cast<long long>(c.train.size(0)),
              static_cast<long long>(c.val.size(0)));
  // Fixed validation windows, evenly spaced over the held-out text.
  const auto val_starts = torch::linspace(0, static_cast<double>(c.val.size(0) - s.context - 2), s.val_sequences).to(torch::kLong);
  const auto [vx, vy] = windows(c.val, val_starts.to(s.device), s.context);

  std::printf("model: byte-level GPT, %lld layers, d_model %lld, %lld heads, context %lld; %d steps of %lld×%lld tokens, "
              "warmup-stable-decay (5%% warmup, last 20%% linear decay), weight decay %g\n",
              static_cast<long long>(s.layers), static_cast<long long>(s.d_model), static_cast<long long>(s.heads),
              static_cast<long long>(s.context), s.steps, static_cast<long long>(s.batch), static_cast<long long>(s.context),
              s.weight_decay);
  std::filesystem::create_directories(s.out);

  progress prog;
  std::vector<run_result> runs;
  if (s.sweep) {
    prog.runs_total = static_cast<int>(swept_methods.size() * s.sweep_lrs.size());
    std::string table = "| optimizer | " ;
    for (const double lr : s.sweep_lrs) {
      char head[32];
      std::snprintf(head, sizeof head, "lr %g | ", lr);
      table += head;
    }
    table += "chosen |\n|---|";
    for (std::size_t i = 0; i <= s.sweep_lrs.size(); ++i) table += "---|";
    table += "\n";
    std::ofstream csv(s.out + "/sweep.csv");
    csv << "optimizer,lr,final_train_loss,final_val_loss\n";
    for (const method m : swept_methods) {
      table += std::string("| ") + method_name(m) + " | ";
      double best = 1e30, best_lr = 0.0;
      for (const double lr : s.sweep_lrs) {
        std::printf("\n%s at lr %g (sweep, seed 0)\n", method_name(m), lr);
        const auto r = train(m, 0, lr, s, c, vx, vy, prog, false);
        const double v = r.curve.back().val_loss;
        csv << method_name(m) << ',' << lr << ',' << r.curve.back().train_loss << ',' << v << '\n';
        char cell[32];
        std::snprintf(cell, sizeof cell, "%.4f | ", v);
        table += cell;
        if (std::isfinite(v) && v < best) {
          best = v;
          best_lr = lr;
        }
      }
      char cell[32];
      std::snprintf(cell, sizeof cell, "%g |\n", best_lr);
      table += cell;
    }
    std::printf("\nFinal validation loss after %d steps, seed 0:\n\n%s", s.steps, table.c_str());
    std::ofstream(s.out + "/sweep.md") << "Learning-rate sweep: final validation loss after " << s.steps << " steps, seed 0\n\n"
                                       << table;
    std::printf("wrote %s/sweep.md and %s/sweep.csv\n", s.out.c_str(), s.out.c_str());
    return 0;
  }

  prog.runs_total = static_cast<int>(s.methods.size()) * s.seeds;
  for (int seed = 0; seed < s.seeds; ++seed) {
    for (const method m : s.methods) {
      const double lr = s.lr_override.contains(base_of(m)) ? s.lr_override.at(base_of(m)) : chosen_lr(m);
      std::printf("\n%s, seed %d, lr %g\n", method_name(m), seed, lr);
      runs.push_back(train(m, seed, lr, s, c, vx, vy, prog, seed == 0));
      if (seed == 0 && m == method::muon) std::printf("  routing:\n%s", runs.back().routing.c_str());
    }
  }

  const std::string table = results_table(runs, s);
  std::printf("\nMean over %d seed(s) (range in parentheses); each optimizer against AdamW of the same seed:\n\n%s", s.seeds,
              table.c_str());
  std::string samples;
  for (const auto& r : runs) {
    if (!r.sample_text.empty()) samples += std::string("--- ") + method_name(r.m) + " (seed 0) ---\n" + r.sample_text + "\n\n";
  }
  std::printf("\nSamples (prompt \"Q: \", temperature 0.8):\n\n%s", samples.c_str());
  std::string budgets;
  for (const auto& r : runs) {
    if (r.seed == 0 && !r.budget_report.empty()) budgets += std::string("--- ") + method_name(r.m) + " (seed 0), the last commit ---\n" + r.budget_report + "\n";
  }
  if (!budgets.empty()) std::printf("\nAdaptive Newton–Schulz budget decisions:\n\n%s", budgets.c_str());
  if (s.first_run) {
    std::printf("\nThis was the first run (seed 0, the five rules, 400 steps). The study the README's table comes from,\n"
                "every optimizer and the adaptive budget, 800 steps, two seeds, is `bash examples/run_demo.sh --full`.\n");
  }
  {
    std::ofstream md(s.out + "/results.md");
    md << "Byte-level GPT on Debian's fortunes: " << s.layers << " layers, d_model " << s.d_model << ", " << s.steps
       << " steps of " << s.batch << "×" << s.context << " tokens, " << s.seeds << " seed(s)" << (s.quick ? " (--quick)" : "")
       << "; orthopt::" << backend_used << ", " << threads << " torch threads\n\n"
       << table;
    if (!budgets.empty()) {
      const auto budget = budget_options(s.steps);
    md << "\nAdaptive Newton–Schulz budget (orthopt/ns_budget.hpp): observe steps " << budget.start_step
         << "–" << budget.start_step + budget.observe_window
         << ", then commit per-matrix counts that reach the residual target, within the uniform cost; observe again every "
         << budget.reobserve_every << " steps. The last commit of each seed-0 run:\n\n```\n"
         << budgets << "```\n";
    }
  }
  std::ofstream(s.out + "/samples.txt") << samples;
  write_curves(runs, s);
  std::printf("wrote %s/results.md, %s/curves.csv, %s/mean_curves.csv, %s/samples.txt\n", s.out.c_str(), s.out.c_str(),
              s.out.c_str(), s.out.c_str());
  plot(s);

  // The smoke test's check: every optimizer lowered the validation loss.
  int failed = 0;
  for (const auto& r : runs) {
    if (!(r.curve.back().val_loss < r.curve.front().val_loss)) {
      std::printf("%s (seed %d) did not lower the validation loss: %.4f -> %.4f\n", method_name(r.m), r.seed,
                  r.curve.front().val_loss, r.curve.back().val_loss);
      ++failed;
    }
  }
  return failed == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "gpt_demo: %s\n", e.what());
  return 2;
}
