// libFuzzer target: every update rule (Muon, AdaMuon, NAMO, NAMO-D, AdamW) and preset, over fuzzed
// hyper-parameters (enum fields included, in and out of their range), shapes, strides, batches, step
// counts and values (NaN, Inf, denormals, huge and tiny), for a few steps, changing options between
// steps.
//
// Checked for every input: only orthopt::error escapes (anything else is a crash); no sanitizer report;
// a refused construction or step leaves the parameter and the whole state byte-identical; a step that
// goes through with check_finite on leaves every state tensor finite (the overflow guard: step_limits).
#include <orthopt/eigen.hpp>

#include <string>
#include <variant>

#include "fuzz_support.hpp"

namespace {

using namespace orthopt_fuzz;
using B = orthopt::eigen_backend;

/// Every persistent tensor of a state, byte for byte, and its step count.
template <class State>
std::vector<unsigned char> state_bytes(State& st) {
  std::vector<unsigned char> out;
  for (const auto& slot : std::as_const(st).slots()) {
    const auto* p = static_cast<const unsigned char*>(slot.data);
    out.insert(out.end(), p, p + slot.element_bytes * slot.elements);
  }
  const std::int64_t step = st.step();
  const auto* p = reinterpret_cast<const unsigned char*>(&step);
  out.insert(out.end(), p, p + sizeof step);
  return out;
}

template <class State>
bool state_finite(State& st) {
  for (orthopt::index_t k = 0; k < st.count(); ++k) {
    if (!all_finite(st.momentum(k)) || !all_finite(st.second_moment(k)) || !all_finite(st.column_moment(k))) return false;
  }
  return true;
}

void fuzz_ortho(FuzzedDataProvider& in, orthopt::orthogonalizer& o) {
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) o.exact = true;
  if (in.ConsumeBool()) o.ns.steps = in.ConsumeIntegralInRange<int>(-1, 9);
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) o.ns.eps = parameter(in, o.ns.eps);
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) o.ns.algorithm = static_cast<orthopt::ns_algorithm>(in.ConsumeIntegralInRange<int>(1, 2));
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) o.ns.normalization = static_cast<orthopt::ns_normalization>(in.ConsumeIntegralInRange<int>(0, 4));
}

/// Whether the rule's Newton–Schulz (if any) is promised finite output (fuzz_support.hpp).
template <class T, class Options>
bool gram_safe(const Options& o) {
  if constexpr (requires { o.ortho; }) return o.ortho.exact || finite_result_promised<T>(o.ortho.ns);
  else return true;
}

template <class T>
auto make_rule(FuzzedDataProvider& in) {
  using rule_variant = std::variant<orthopt::muon<T, B>, orthopt::adamuon<T, B>, orthopt::namo<T, B>,
                                    orthopt::namo_d<T, B>, orthopt::adamw<T, B>>;
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0: {
      static const orthopt::muon_options presets[] = {orthopt::muon_presets::keller(), orthopt::muon_presets::moonlight(),
                                                      orthopt::muon_presets::torch()};
      orthopt::muon_options o = presets[in.ConsumeIntegralInRange<int>(0, 2)];
      if (in.ConsumeBool()) o.lr = parameter(in, o.lr);
      if (in.ConsumeBool()) o.weight_decay = parameter(in, 0.1);
      if (in.ConsumeBool()) o.momentum = parameter(in, o.momentum);
      if (in.ConsumeBool()) o.momentum_type = static_cast<orthopt::momentum_kind>(in.ConsumeIntegralInRange<int>(0, 2));
      if (in.ConsumeBool()) o.nesterov = in.ConsumeBool();
      if (in.ConsumeBool()) o.scale = static_cast<orthopt::shape_scale>(in.ConsumeIntegralInRange<int>(0, 4));
      fuzz_ortho(in, o.ortho);
      return rule_variant(std::in_place_index<0>, o);
    }
    case 1: {
      static const orthopt::adamuon_options presets[] = {orthopt::adamuon_presets::paper(), orthopt::adamuon_presets::code(),
                                                         orthopt::adamuon_presets::code_gpt2(), orthopt::adamuon_presets::v1()};
      orthopt::adamuon_options o = presets[in.ConsumeIntegralInRange<int>(0, 3)];
      if (in.ConsumeBool()) o.lr = parameter(in, o.lr);
      if (in.ConsumeBool()) o.weight_decay = parameter(in, 0.1);
      if (in.ConsumeBool()) o.beta = parameter(in, o.beta);
      if (in.ConsumeBool()) o.beta2 = parameter(in, 0.999);
      if (in.ConsumeBool()) o.eps = parameter(in, o.eps);
      if (in.ConsumeBool()) o.sign = in.ConsumeBool();
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0) o.form = static_cast<orthopt::adamuon_form>(in.ConsumeIntegralInRange<int>(0, 2));
      fuzz_ortho(in, o.ortho);
      return rule_variant(std::in_place_index<1>, o);
    }
    case 2:
    case 3: {
      const bool d = in.ConsumeBool();
      orthopt::namo_options o = d ? (in.ConsumeBool() ? orthopt::namo_d_presets::code() : orthopt::namo_d_presets::gpt2_small())
                                  : (in.ConsumeBool() ? orthopt::namo_presets::code() : orthopt::namo_presets::paper());
      if (in.ConsumeBool()) o.lr = parameter(in, o.lr);
      if (in.ConsumeBool()) o.weight_decay = parameter(in, 0.1);
      if (in.ConsumeBool()) o.mu1 = parameter(in, o.mu1);
      if (in.ConsumeBool()) o.mu2 = parameter(in, o.mu2);
      if (in.ConsumeBool()) o.eps = parameter(in, o.eps);
      if (in.ConsumeBool()) o.rms_scale = parameter(in, o.rms_scale);
      if (in.ConsumeBool()) o.column_clamp = parameter(in, o.column_clamp);
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0) o.form = static_cast<orthopt::namo_form>(in.ConsumeIntegralInRange<int>(0, 2));
      fuzz_ortho(in, o.ortho);
      if (d) return rule_variant(std::in_place_index<3>, o);
      return rule_variant(std::in_place_index<2>, o);
    }
    default: {
      orthopt::adamw_options o = in.ConsumeBool() ? orthopt::adamw_presets::torch() : orthopt::adamw_presets::moonlight();
      if (in.ConsumeBool()) o.lr = parameter(in, o.lr);
      if (in.ConsumeBool()) o.weight_decay = parameter(in, 0.1);
      if (in.ConsumeBool()) o.beta1 = parameter(in, o.beta1);
      if (in.ConsumeBool()) o.beta2 = parameter(in, o.beta2);
      if (in.ConsumeBool()) o.eps = parameter(in, o.eps);
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0) o.form = static_cast<orthopt::adamw_form>(in.ConsumeIntegralInRange<int>(0, 2));
      return rule_variant(std::in_place_index<4>, o);
    }
  }
}

template <class T>
void run(FuzzedDataProvider& in) {
  auto rule = [&] {
    try {
      return std::optional(make_rule<T>(in));
    } catch (const orthopt::error& e) {
      if (verbose()) std::fprintf(stderr, "construction refused: %s\n", e.what());
      return std::optional<decltype(make_rule<T>(in))>();
    }
  }();
  if (!rule) return;
  std::visit(
      [&](auto& r) {
        const index_t rows = in.ConsumeIntegralInRange<index_t>(0, 10), cols = in.ConsumeIntegralInRange<index_t>(0, 10);
        const index_t count = in.ConsumeIntegralInRange<index_t>(1, 3);
        std::optional<std::decay_t<decltype(r.make_state(1, 1))>> st;
        try {
          st.emplace(r.make_state(rows, cols, count));
        } catch (const orthopt::error& e) {
          if (verbose()) std::fprintf(stderr, "state refused: %s\n", e.what());
          return;
        }
        strided<T> w(in, rows, cols, count);
        if (in.ConsumeBool()) w.fill(in);
        const int steps = in.ConsumeIntegralInRange<int>(1, 6);
        for (int t = 0; t < steps; ++t) {
          strided<T> g(in, rows, cols, count);
          g.fill(in);
          // Between steps: change an option, the step count, or pass the gradient as the parameter.
          switch (in.ConsumeIntegralInRange<int>(0, 9)) {
            case 0: r.options().lr = parameter(in, r.options().lr); break;
            case 1: r.options().check_finite = in.ConsumeBool(); break;
            case 2: st->set_step(in.ConsumeIntegral<std::int64_t>() & std::numeric_limits<std::int64_t>::max()); break;
            default: break;
          }
          // The state-finite promise covers orthogonalizers whose Newton–Schulz is finite: the Gram
          // algorithm only where its rounding growth is small (as in fuzz_newton_schulz).
          const bool checked = r.options().check_finite && gram_safe<T>(r.options());
          const std::vector<T> w_before = w.storage;
          const std::vector<unsigned char> state_before = state_bytes(*st);
          try {
            if (in.ConsumeIntegralInRange<int>(0, 15) == 0) r.step(w.batch(), orthopt::batch_view<const T>(w.batch()), *st);
            else r.step(w.batch(), orthopt::batch_view<const T>(g.batch()), *st);
          } catch (const orthopt::error& e) {
            if (verbose()) std::fprintf(stderr, "step %d refused: %s\n", t, e.what());
            ORTHOPT_FUZZ_CHECK(same_bytes(w.storage, w_before));
            ORTHOPT_FUZZ_CHECK(state_bytes(*st) == state_before);
            continue;
          }
          if (verbose()) std::fprintf(stderr, "step %d done\n", t);
          if (checked) ORTHOPT_FUZZ_CHECK(state_finite(*st));
        }
      },
      *rule);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool()) run<float>(in);
  else run<double>(in);
  return 0;
}
