// Fit a linear map with every orthopt rule: minimize L(W) = ½·mean‖W·x − y‖² over a fixed data set,
// where y = W*·x + noise for a random 64×96 W*. Shows the API: a rule, a state made from the
// parameter's shape, a step per gradient; the learning rate follows a schedule between steps.
//
// Prints the loss of each rule every 50 steps; exits non-zero if a rule fails to reduce the loss to
// 10% of its starting value (the ctest `example.least_squares` checks the pipeline, not speed).
#include <orthopt/eigen.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

namespace {
using Mat = Eigen::MatrixXf;

struct problem {
  Mat x, y;  // samples in columns
  explicit problem(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    const auto gauss = [&](Eigen::Index r, Eigen::Index c) { return Mat(Mat::NullaryExpr(r, c, [&] { return n(rng); })); };
    const Mat w_true = gauss(64, 96) / std::sqrt(96.0f);
    x = gauss(96, 512);
    y = w_true * x + 0.01f * gauss(64, 512);
  }
  float loss(const Mat& w) const { return 0.5f * (w * x - y).squaredNorm() / static_cast<float>(x.cols()); }
  Mat gradient(const Mat& w) const { return (w * x - y) * x.transpose() / static_cast<float>(x.cols()); }
};

template <class Rule>
bool train(const char* label, Rule rule, const problem& p, int steps) {
  Mat w = Mat::Zero(64, 96);
  auto state = rule.make_state(w.rows(), w.cols());  // all buffers of the step are allocated here
  const double base_lr = rule.options().lr;
  const float start = p.loss(w);
  std::printf("%-22s", label);
  for (int t = 0; t < steps; ++t) {
    // Linear decay over the last half: hyper-parameters may change between steps.
    const double progress = static_cast<double>(t) / steps;
    rule.options().lr = base_lr * (progress < 0.5 ? 1.0 : 2.0 * (1.0 - progress));
    const Mat g = p.gradient(w);
    rule.step(orthopt::make_view(w), orthopt::make_view(g), state);
    if ((t + 1) % 50 == 0) std::printf(" %9.5f", p.loss(w));
  }
  const float end = p.loss(w);
  std::printf("   (start %.3f)\n", start);
  return end < 0.1f * start;
}
}  // namespace

int main() {
  using B = orthopt::eigen_backend;
  const problem p(7);
  const int steps = 300;
  std::printf("loss every 50 steps of %d\n", steps);
  bool ok = true;
  // AdamW-matched update RMS (0.2·√max(A,B) scaling, AdaMuon's RMS alignment) lets one lr serve all.
  auto moon = orthopt::muon_presets::moonlight();
  moon.lr = 0.02;
  moon.weight_decay = 0.0;
  ok &= train("muon (moonlight)", orthopt::muon<float, B>(moon), p, steps);
  auto keller = orthopt::muon_presets::keller();
  ok &= train("muon (keller)", orthopt::muon<float, B>(keller), p, steps);
  auto ada = orthopt::adamuon_presets::code();
  ada.lr = 0.02;
  ada.weight_decay = 0.0;
  ok &= train("adamuon (code)", orthopt::adamuon<float, B>(ada), p, steps);
  auto ada_paper = orthopt::adamuon_presets::paper();
  ada_paper.lr = 0.02;
  ada_paper.weight_decay = 0.0;
  ok &= train("adamuon (paper)", orthopt::adamuon<float, B>(ada_paper), p, steps);
  auto nm = orthopt::namo_presets::code();
  nm.weight_decay = 0.0;
  ok &= train("namo (code)", orthopt::namo<float, B>(nm), p, steps);
  auto nmd = orthopt::namo_d_presets::code();
  nmd.weight_decay = 0.0;
  ok &= train("namo_d (code)", orthopt::namo_d<float, B>(nmd), p, steps);
  auto aw = orthopt::adamw_presets::torch();
  aw.lr = 0.02;
  aw.weight_decay = 0.0;
  ok &= train("adamw (torch)", orthopt::adamw<float, B>(aw), p, steps);
  if (!ok) std::printf("a rule did not reduce the loss to 10%% of its start\n");
  return ok ? 0 : 1;
}
