// The orthopt demo: a 784 → 512 → 512 → 10 GELU perceptron trained on Fashion-MNIST with AdamW, Muon,
// AdaMuon, NAMO and NAMO-D under one warmup-stable-decay schedule, one seed and one batch order.
//
// As in the papers, the Muon-family rule takes the hidden matrix (512×512); AdamW takes the biases, the
// first layer and the last layer. Every rule is used with an AdamW-matched update size (Muon: Moonlight's
// 0.2·√max(A,B) scale; AdaMuon: its RMS alignment to 0.2; NAMO/NAMO-D: the authors' 0.2·√max(A,B)), so
// one learning rate serves all of them.
//
// Output: live progress per run; a table in the shape of the AdaMuon paper's Table 1 (steps each rule
// needs to reach AdamW's final training and test loss, the fraction of steps saved, final test accuracy,
// wall time); <out>/curves.csv; <out>/results.md; <out>/loss.png (drawn by gnuplot when installed).
//
//   demo [--quick] [--steps N] [--batch N] [--lr X] [--wd X] [--eval-every N] [--data DIR] [--out DIR]
#include <orthopt/eigen.hpp>

#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Mat = Eigen::MatrixXf;
using Vec = Eigen::VectorXf;
using clock_type = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST from gzip-compressed IDX files (Debian: dataset-fashion-mnist)
// ---------------------------------------------------------------------------------------------------
std::vector<unsigned char> read_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error("cannot open " + path + " (install Debian's dataset-fashion-mnist)");
  std::vector<unsigned char> out;
  std::array<unsigned char, 1 << 16> buf{};
  int n = 0;
  while ((n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0) out.insert(out.end(), buf.begin(), buf.begin() + n);
  const bool failed = n < 0;
  gzclose(f);
  if (failed) throw std::runtime_error("corrupt gzip data in " + path);
  return out;
}

std::uint32_t big_endian_u32(const std::vector<unsigned char>& d, std::size_t at) {
  return (std::uint32_t{d[at]} << 24) | (std::uint32_t{d[at + 1]} << 16) | (std::uint32_t{d[at + 2]} << 8) | d[at + 3];
}

struct dataset {
  Mat images;                 // 784 × n, standardized
  std::vector<int> labels;    // n
};

dataset load_split(const std::string& dir, const std::string& prefix) {
  const auto img = read_gzip(dir + "/" + prefix + "-images-idx3-ubyte.gz");
  const auto lab = read_gzip(dir + "/" + prefix + "-labels-idx1-ubyte.gz");
  if (img.size() < 16 || big_endian_u32(img, 0) != 0x803) throw std::runtime_error(prefix + " images: not an IDX3 ubyte file");
  if (lab.size() < 8 || big_endian_u32(lab, 0) != 0x801) throw std::runtime_error(prefix + " labels: not an IDX1 ubyte file");
  const std::uint32_t n = big_endian_u32(img, 4), rows = big_endian_u32(img, 8), cols = big_endian_u32(img, 12);
  if (rows != 28 || cols != 28) throw std::runtime_error(prefix + " images are " + std::to_string(rows) + "x" + std::to_string(cols) + ", not 28x28");
  if (big_endian_u32(lab, 4) != n) throw std::runtime_error(prefix + ": image and label counts differ");
  if (img.size() != 16 + std::size_t{n} * 784 || lab.size() != 8 + std::size_t{n}) throw std::runtime_error(prefix + ": truncated file");
  dataset d;
  d.images.resize(784, n);
  d.labels.resize(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    for (int p = 0; p < 784; ++p) d.images(p, i) = static_cast<float>(img[16 + std::size_t{i} * 784 + p]) / 255.0f;
    d.labels[i] = lab[8 + i];
    if (d.labels[i] > 9) throw std::runtime_error(prefix + ": label " + std::to_string(d.labels[i]) + " out of range");
  }
  return d;
}

// ---------------------------------------------------------------------------------------------------
// The model, with a hand-written forward and backward pass
// ---------------------------------------------------------------------------------------------------
float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678f)); }
float gelu_grad(float x) { return 0.5f * (1.0f + std::erf(x * 0.70710678f)) + x * 0.39894228f * std::exp(-0.5f * x * x); }

struct mlp {
  std::array<Mat, 3> w;  // out × in, like nn.Linear
  std::array<Mat, 3> b;  // out × 1
  explicit mlp(unsigned seed) {
    const std::array<int, 4> dims{784, 512, 512, 10};
    std::mt19937 rng(seed);
    for (int l = 0; l < 3; ++l) {
      std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(static_cast<float>(dims[l])));
      w[l] = Mat::NullaryExpr(dims[l + 1], dims[l], [&] { return n(rng); });
      b[l] = Mat::Zero(dims[l + 1], 1);
    }
  }
};

struct activations {
  std::array<Mat, 3> pre;   // pre-activations H1, H2, logits
  std::array<Mat, 2> post;  // GELU outputs A1, A2
};

/// Mean cross-entropy of the batch; fills `act`.
float forward(const mlp& m, const Mat& x, const int* labels, activations& act) {
  act.pre[0].noalias() = m.w[0] * x;
  act.pre[0].colwise() += m.b[0].col(0);
  act.post[0] = act.pre[0].unaryExpr(&gelu);
  act.pre[1].noalias() = m.w[1] * act.post[0];
  act.pre[1].colwise() += m.b[1].col(0);
  act.post[1] = act.pre[1].unaryExpr(&gelu);
  act.pre[2].noalias() = m.w[2] * act.post[1];
  act.pre[2].colwise() += m.b[2].col(0);
  double loss = 0.0;
  for (Eigen::Index i = 0; i < x.cols(); ++i) {
    const auto z = act.pre[2].col(i);
    const float mx = z.maxCoeff();
    loss += std::log((z.array() - mx).exp().sum()) + mx - z(labels[i]);
  }
  return static_cast<float>(loss / static_cast<double>(x.cols()));
}

/// Gradients of the mean cross-entropy for the batch of the last forward().
void backward(const mlp& m, const Mat& x, const int* labels, const activations& act, std::array<Mat, 3>& gw,
              std::array<Mat, 3>& gb) {
  const float inv_n = 1.0f / static_cast<float>(x.cols());
  Mat dz = act.pre[2];
  for (Eigen::Index i = 0; i < dz.cols(); ++i) {
    auto z = dz.col(i);
    z = (z.array() - z.maxCoeff()).exp();
    z /= z.sum();
    z(labels[i]) -= 1.0f;
  }
  dz *= inv_n;
  gw[2].noalias() = dz * act.post[1].transpose();
  gb[2] = dz.rowwise().sum();
  Mat dh = (m.w[2].transpose() * dz).cwiseProduct(act.pre[1].unaryExpr(&gelu_grad));
  gw[1].noalias() = dh * act.post[0].transpose();
  gb[1] = dh.rowwise().sum();
  dh = (m.w[1].transpose() * dh).cwiseProduct(act.pre[0].unaryExpr(&gelu_grad));
  gw[0].noalias() = dh * x.transpose();
  gb[0] = dh.rowwise().sum();
}

struct evaluation {
  float loss = 0.0f;
  float accuracy = 0.0f;
};

evaluation evaluate(const mlp& m, const dataset& d, Eigen::Index count) {
  activations act;
  double loss = 0.0;
  Eigen::Index correct = 0;
  const Eigen::Index chunk = 2000;
  for (Eigen::Index s = 0; s < count; s += chunk) {
    const Eigen::Index n = std::min(chunk, count - s);
    const Mat x = d.images.middleCols(s, n);
    loss += static_cast<double>(forward(m, x, d.labels.data() + s, act)) * static_cast<double>(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      Eigen::Index arg = 0;
      act.pre[2].col(i).maxCoeff(&arg);
      correct += (arg == d.labels[static_cast<std::size_t>(s + i)]) ? 1 : 0;
    }
  }
  return {static_cast<float>(loss / static_cast<double>(count)), static_cast<float>(correct) / static_cast<float>(count)};
}

// ---------------------------------------------------------------------------------------------------
// One training run per optimizer
// ---------------------------------------------------------------------------------------------------
struct settings {
  int steps = 1500;
  int batch = 128;
  double lr = 2e-3;
  double weight_decay = 0.1;
  int eval_every = 100;
  Eigen::Index eval_train = 10000;  // training samples the loss curve is evaluated on
  Eigen::Index eval_test = 10000;
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "demo-output";
  bool quick = false;
};

struct curve_point {
  int step;
  float train_loss, test_loss, test_accuracy;
  double seconds;
};

struct run_result {
  std::string name;
  std::vector<curve_point> curve;
  double train_seconds = 0.0;
  std::string routing;
};

enum class method { adamw, muon, adamuon, namo, namo_d };
const char* method_name(method m) {
  switch (m) {
    case method::adamw: return "AdamW";
    case method::muon: return "Muon";
    case method::adamuon: return "AdaMuon";
    case method::namo: return "NAMO";
    case method::namo_d: return "NAMO-D";
  }
  return "?";
}

using backend = orthopt::eigen_backend;
using optimizer = orthopt::optimizer<float, backend>;

/// A rule's preset at the common learning rate and weight decay.
template <class Options>
Options at_common_rates(Options o, const settings& s) {
  o.lr = s.lr;
  o.weight_decay = s.weight_decay;
  return o;
}

/// The rule for the hidden matrix, at the common AdamW-matched learning rate.
optimizer::rule_type hidden_rule(method m, const settings& s) {
  switch (m) {
    case method::muon: return orthopt::muon<float, backend>(at_common_rates(orthopt::muon_presets::moonlight(), s));
    case method::adamuon:
      return orthopt::adamuon<float, backend>(at_common_rates(orthopt::adamuon_presets::code(), s));
    case method::namo: return orthopt::namo<float, backend>(at_common_rates(orthopt::namo_presets::code(), s));
    case method::namo_d: return orthopt::namo_d<float, backend>(at_common_rates(orthopt::namo_d_presets::code(), s));
    case method::adamw: break;
  }
  return orthopt::adamw<float, backend>(at_common_rates(orthopt::adamw_presets::torch(), s));
}

run_result train(method m, const settings& s, const dataset& train_set, const dataset& test_set,
                 const std::vector<std::vector<int>>& batches) {
  mlp model(1234);  // the same initial weights for every optimizer
  const orthopt::warmup_stable_decay schedule(s.steps / 20, s.steps, 0.2);

  optimizer opt;
  auto adamw_opts = at_common_rates(orthopt::adamw_presets::torch(), s);
  const auto adamw_group = opt.add_group("adamw", orthopt::adamw<float, backend>(adamw_opts), schedule);
  adamw_opts.weight_decay = 0.0;
  const auto no_decay = opt.add_group("adamw_no_decay", orthopt::adamw<float, backend>(adamw_opts), schedule);
  const auto hidden = m == method::adamw ? adamw_group : opt.add_group("hidden", hidden_rule(m, s), schedule);

  // Routing as in the papers: the hidden matrix to the Muon-family group, the first layer, the last
  // layer (a "head") and the biases to AdamW, biases without weight decay.
  orthopt::param_router router(hidden, adamw_group);
  router.override_param("input.weight", adamw_group);
  for (const char* bias : {"input.bias", "hidden.bias", "head.bias"}) router.override_param(bias, no_decay);
  const std::array<const char*, 3> names{"input", "hidden", "head"};
  for (int l = 0; l < 3; ++l) {
    opt.add_param(std::string(names[l]) + ".weight", orthopt::make_view(model.w[l]), router);
    opt.add_param(std::string(names[l]) + ".bias", orthopt::make_view(model.b[l]), router);
  }
  opt.check_overrides_used(router);

  std::array<Mat, 3> gw, gb;
  for (int l = 0; l < 3; ++l) {
    gw[l].resizeLike(model.w[l]);
    gb[l].resizeLike(model.b[l]);
  }
  const std::array<optimizer::gradient_view, 6> grads{
      orthopt::as_batch(orthopt::make_const_view(gw[0])), orthopt::as_batch(orthopt::make_const_view(gb[0])),
      orthopt::as_batch(orthopt::make_const_view(gw[1])), orthopt::as_batch(orthopt::make_const_view(gb[1])),
      orthopt::as_batch(orthopt::make_const_view(gw[2])), orthopt::as_batch(orthopt::make_const_view(gb[2]))};

  run_result result;
  result.name = method_name(m);
  result.routing = opt.routing_table();
  activations act;
  Mat x(784, s.batch);
  std::vector<int> y(static_cast<std::size_t>(s.batch));
  double trained = 0.0;
  const auto record = [&](int step) {
    const evaluation tr = evaluate(model, train_set, s.eval_train);
    const evaluation te = evaluate(model, test_set, s.eval_test);
    result.curve.push_back({step, tr.loss, te.loss, te.accuracy, trained});
  };
  record(0);
  float smoothed = 0.0f;
  for (int step = 1; step <= s.steps; ++step) {
    const auto t0 = clock_type::now();
    const auto& idx = batches[static_cast<std::size_t>(step - 1)];
    for (int i = 0; i < s.batch; ++i) {
      x.col(i) = train_set.images.col(idx[static_cast<std::size_t>(i)]);
      y[static_cast<std::size_t>(i)] = train_set.labels[static_cast<std::size_t>(idx[static_cast<std::size_t>(i)])];
    }
    const float loss = forward(model, x, y.data(), act);
    backward(model, x, y.data(), act, gw, gb);
    opt.step(grads);
    trained += std::chrono::duration<double>(clock_type::now() - t0).count();
    smoothed = step == 1 ? loss : 0.95f * smoothed + 0.05f * loss;
    if (step % s.eval_every == 0 || step == s.steps) record(step);
    if (step % 100 == 0 || step == s.steps) {
      const double rate = step / trained;
      std::printf("  %-8s step %5d/%d  loss %.4f  %6.1f steps/s  ETA %5.1f s\n", result.name.c_str(), step, s.steps,
                  smoothed, rate, (s.steps - step) / rate);
      std::fflush(stdout);
    }
  }
  result.train_seconds = trained;
  return result;
}

/// The first step at which `curve` reaches `target` (linear interpolation between evaluations), or -1.
double steps_to_reach(const std::vector<curve_point>& curve, float curve_point::*field, float target) {
  for (std::size_t i = 0; i < curve.size(); ++i) {
    if (curve[i].*field <= target) {
      if (i == 0) return 0.0;
      const auto& a = curve[i - 1];
      const auto& b = curve[i];
      const double f = (a.*field - target) / static_cast<double>(a.*field - b.*field);
      return a.step + f * (b.step - a.step);
    }
  }
  return -1.0;
}

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") {
      s.quick = true;
      s.steps = 300;
      s.eval_every = 50;
      s.eval_train = 2000;
      s.eval_test = 2000;
    } else if (a == "--steps") s.steps = std::stoi(value());
    else if (a == "--batch") s.batch = std::stoi(value());
    else if (a == "--lr") s.lr = std::stod(value());
    else if (a == "--wd") s.weight_decay = std::stod(value());
    else if (a == "--eval-every") s.eval_every = std::stoi(value());
    else if (a == "--data") s.data = value();
    else if (a == "--out") s.out = value();
    else if (a == "--help" || a == "-h") {
      std::printf("usage: demo [--quick] [--steps N] [--batch N] [--lr X] [--wd X] [--eval-every N] [--data DIR] [--out DIR]\n");
      std::exit(0);
    } else throw std::invalid_argument("unknown argument " + a + " (try --help)");
  }
  if (s.steps < 1 || s.batch < 1 || s.eval_every < 1) throw std::invalid_argument("--steps, --batch and --eval-every must be >= 1");
  return s;
}

}  // namespace

int main(int argc, char** argv) try {
  const settings s = parse(argc, argv);
  std::printf("orthopt demo: Fashion-MNIST, MLP 784-512-512-10 (GELU), %d steps of %d, lr %g, wd %g, "
              "warmup-stable-decay (5%% warmup, last 20%% linear decay), %d threads\n",
              s.steps, s.batch, s.lr, s.weight_decay, Eigen::nbThreads());
  dataset train_set = load_split(s.data, "train");
  dataset test_set = load_split(s.data, "t10k");
  // Standardize with the training set's statistics.
  const float mean = train_set.images.mean();
  const float stdev = std::sqrt((train_set.images.array() - mean).square().mean());
  train_set.images = (train_set.images.array() - mean) / stdev;
  test_set.images = (test_set.images.array() - mean) / stdev;
  std::printf("data: %ld training and %ld test images from %s\n", static_cast<long>(train_set.images.cols()),
              static_cast<long>(test_set.images.cols()), s.data.c_str());

  // One batch order for every optimizer: epochs of a seeded shuffle.
  std::vector<std::vector<int>> batches;
  {
    std::mt19937 rng(42);
    std::vector<int> order(static_cast<std::size_t>(train_set.images.cols()));
    std::size_t pos = order.size();
    for (int step = 0; step < s.steps; ++step) {
      std::vector<int> b;
      for (int i = 0; i < s.batch; ++i) {
        if (pos == order.size()) {
          std::iota(order.begin(), order.end(), 0);
          std::shuffle(order.begin(), order.end(), rng);
          pos = 0;
        }
        b.push_back(order[pos++]);
      }
      batches.push_back(std::move(b));
    }
  }

  std::vector<run_result> runs;
  for (method m : {method::adamw, method::muon, method::adamuon, method::namo, method::namo_d}) {
    std::printf("\n%s\n", method_name(m));
    runs.push_back(train(m, s, train_set, test_set, batches));
    if (m != method::adamw && runs.size() == 2) std::printf("  routing:\n%s", runs.back().routing.c_str());
  }

  // Results: the shape of the AdaMuon paper's Table 1.
  std::filesystem::create_directories(s.out);
  const auto& base = runs.front().curve.back();
  std::string table =
      "| optimizer | steps to AdamW's final train loss (" + std::to_string(base.train_loss).substr(0, 6) +
      ") | saved | steps to AdamW's final test loss (" + std::to_string(base.test_loss).substr(0, 6) +
      ") | saved | final train loss | final test loss | final test accuracy | training wall time |\n"
      "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    const double tr = steps_to_reach(r.curve, &curve_point::train_loss, base.train_loss);
    const double te = steps_to_reach(r.curve, &curve_point::test_loss, base.test_loss);
    const auto cell = [&](double v) { return v < 0 ? std::string("not reached") : std::to_string(static_cast<long>(std::lround(v))); };
    const auto saved = [&](double v) {
      if (v < 0) return std::string("—");
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * (1.0 - v / s.steps));
      return std::string(buf);
    };
    char tail[160];
    std::snprintf(tail, sizeof tail, " | %.4f | %.4f | %.2f%% | %.1f s |\n", r.curve.back().train_loss, r.curve.back().test_loss,
                  100.0 * r.curve.back().test_accuracy, r.train_seconds);
    table += "| " + r.name + " | " + cell(tr) + " | " + saved(tr) + " | " + cell(te) + " | " + saved(te) + tail;
  }
  std::printf("\n%s", table.c_str());
  {
    std::ofstream md(s.out + "/results.md");
    md << "Fashion-MNIST, MLP 784-512-512-10, " << s.steps << " steps of " << s.batch << ", lr " << s.lr << ", wd "
       << s.weight_decay << (s.quick ? " (--quick)" : "") << "\n\n"
       << table;
  }
  {
    std::ofstream csv(s.out + "/curves.csv");
    csv << "optimizer,step,train_loss,test_loss,test_accuracy,train_seconds\n";
    for (const auto& r : runs)
      for (const auto& p : r.curve)
        csv << r.name << ',' << p.step << ',' << p.train_loss << ',' << p.test_loss << ',' << p.test_accuracy << ','
            << p.seconds << '\n';
  }
  std::printf("wrote %s/results.md and %s/curves.csv\n", s.out.c_str(), s.out.c_str());

  // The plot, from the small gnuplot script next to this file (skipped with a note without gnuplot).
#ifdef ORTHOPT_DEMO_PLOT_SCRIPT
  const std::string cmd = "gnuplot -e \"csv='" + s.out + "/curves.csv'; png='" + s.out + "/loss.png'\" '" +
                          ORTHOPT_DEMO_PLOT_SCRIPT + "'";
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    if (std::system(cmd.c_str()) == 0) std::printf("wrote %s/loss.png\n", s.out.c_str());
    else std::printf("gnuplot failed; no plot\n");
  } else {
    std::printf("gnuplot is not installed (Debian: gnuplot-nox); no plot\n");
  }
#endif

  // The smoke test's check: every optimizer lowered the training loss.
  for (const auto& r : runs) {
    if (!(r.curve.back().train_loss < r.curve.front().train_loss)) {
      std::printf("%s did not lower the training loss\n", r.name.c_str());
      return 1;
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "demo: %s\n", e.what());
  return 2;
}
