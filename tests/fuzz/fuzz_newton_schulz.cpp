// libFuzzer target: Newton–Schulz plans and the exact polar factor over fuzzed shapes, strides, batch
// layouts, configurations (every preset and algorithm, step counts, ε, normalizations, custom tables)
// and values (NaN, Inf, denormals, huge and tiny).
//
// Checked for every input: only orthopt::error escapes (anything else is a crash); no sanitizer report;
// a call that throws leaves its output untouched unless the output is the input itself (in place); a
// call that returns on finite input with a preset table gives a finite output; with check_finite on, a
// NaN or Inf input is refused.
#include <orthopt/eigen.hpp>

#include <algorithm>
#include <string>

#include "fuzz_support.hpp"

namespace {

using namespace orthopt_fuzz;

orthopt::ns_config fuzzed_config(FuzzedDataProvider& in, bool& preset_table) {
  static const char* const names[] = {"keller", "polar_express", "polar_express_nanogpt", "quintic",
                                      "cans", "aol", "you", "cubic"};
  orthopt::ns_config c = orthopt::ns_presets::by_name(names[in.ConsumeIntegralInRange<int>(0, 7)]);
  preset_table = true;
  if (in.ConsumeBool()) c.steps = in.ConsumeIntegralInRange<int>(-2, 14);
  if (in.ConsumeBool()) c.eps = parameter(in, c.eps);
  if (in.ConsumeBool()) c.safety = parameter(in, 0.01);
  if (in.ConsumeBool()) c.normalization = static_cast<orthopt::ns_normalization>(in.ConsumeIntegralInRange<int>(0, 4));
  if (in.ConsumeBool()) c.algorithm = static_cast<orthopt::ns_algorithm>(in.ConsumeIntegralInRange<int>(0, 2));
  if (in.ConsumeBool()) c.gram_restart_after = in.ConsumeIntegralInRange<int>(-2, 6);
  c.check_finite = in.ConsumeBool();
  c.absolute_eps = in.ConsumeBool();
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {  // a custom table, rows of any values
    preset_table = false;
    c.table.assign(static_cast<std::size_t>(in.ConsumeIntegralInRange<int>(0, 3)), {});
    for (auto& row : c.table) row = {parameter(in, 3.4445), parameter(in, -4.775), parameter(in, 2.0315)};
  }
  return c;
}

template <class T>
void run(FuzzedDataProvider& in) {
  using B = orthopt::eigen_backend;
  const index_t rows = in.ConsumeIntegralInRange<index_t>(-1, 12), cols = in.ConsumeIntegralInRange<index_t>(-1, 12);
  const bool exact = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  const index_t count = exact ? 1 : in.ConsumeIntegralInRange<index_t>(1, 3);
  bool preset_table = true;
  const orthopt::ns_config config = exact ? orthopt::ns_config{} : fuzzed_config(in, preset_table);
  const bool check_finite = exact ? in.ConsumeBool() : config.check_finite;
  // The plan may be made for another shape than the call uses (a shape_error).
  const index_t plan_rows = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(-1, 12) : rows;
  const index_t plan_cols = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(-1, 12) : cols;
  const index_t capacity = in.ConsumeIntegralInRange<index_t>(0, 4);

  strided<T> x(in, rows, cols, count);
  x.fill(in);
  // The output: its own buffer, the input itself (in place), or a shifted view into the input's buffer.
  const int where = in.ConsumeIntegralInRange<int>(0, 3);
  strided<T> own(in, rows, cols, count);
  orthopt::batch_view<T> out = own.batch();
  if (where == 1) out = x.batch();
  if (where == 2) {
    out = x.batch();
    out.first.data += in.ConsumeIntegralInRange<index_t>(-3, 3);
  }
  orthopt::batch_view<const T> input = x.batch();
  // A batch count of 0 or −1 (refused); never more matrices than the buffers hold (orthopt cannot see a
  // buffer's end: reading past it is the caller's error, not a refusable input).
  if (in.ConsumeIntegralInRange<int>(0, 15) == 0) input.count = out.count = in.ConsumeIntegralInRange<index_t>(-1, 0);

  const std::vector<T> x_before = x.storage, own_before = own.storage;
  if (verbose()) {
    std::fprintf(stderr, "%s %s plan %ldx%ld call %ldx%ld count %ld, x strides (%ld, %ld, batch %ld), out strides (%ld, %ld, batch %ld) output %ld, check_finite %d\n",
                 sizeof(T) == 4 ? "float" : "double", exact ? "exact_polar" : config.name.c_str(), long(plan_rows), long(plan_cols),
                 long(rows), long(cols), long(input.count), long(x.view.row_stride), long(x.view.col_stride), long(x.batch_stride),
                 long(out.first.row_stride), long(out.first.col_stride), long(out.batch_stride), long(where),
                 int(check_finite));
    if (!exact)
      std::fprintf(stderr, "  steps %d eps %g safety %g normalization %d algorithm %d restart %d absolute_eps %d\n", config.steps,
                   config.eps, config.safety, int(config.normalization), int(config.algorithm), config.gram_restart_after,
                   int(config.absolute_eps));
    for (index_t i = 0; i < rows && input.count > 0; ++i)
      for (index_t j = 0; j < cols; ++j) std::fprintf(stderr, "  x(%ld, %ld) = %.17g\n", long(i), long(j), double(input.first(i, j)));
  }
  bool input_finite = true;
  for (index_t k = 0; k < input.count && input.first.rows > 0 && input.first.cols > 0; ++k) input_finite &= all_finite(input[k]);
  try {
    if (exact) {
      orthopt::exact_polar<T, B> polar(plan_rows, plan_cols, B{}, check_finite);
      polar(input.first, out.first);
    } else {
      orthopt::newton_schulz<T, B> ns(plan_rows, plan_cols, config, B{}, capacity);
      if (input.count == 1 && in.ConsumeBool()) ns(input.first, out.first);
      else ns(input, out);
    }
  } catch (const orthopt::error& e) {
    if (verbose()) std::fprintf(stderr, "refused: %s\n", e.what());
    // Refused: nothing was written (an in-place call's output is its input, also unchanged).
    ORTHOPT_FUZZ_CHECK(same_bytes(x.storage, x_before));
    ORTHOPT_FUZZ_CHECK(same_bytes(own.storage, own_before));
    return;
  }
  ORTHOPT_FUZZ_CHECK(input_finite || !check_finite);  // a NaN or Inf input with the check on is refused
  // Finite output is promised for preset tables (and the Gram algorithm only within its precision).
  const bool gram_safe = exact || finite_result_promised<T>(config);
  if (input_finite && preset_table && gram_safe) {
    if (verbose())
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) std::fprintf(stderr, "  out(%ld, %ld) = %.17g\n", long(i), long(j), double(out.first(i, j)));
    for (index_t k = 0; k < out.count; ++k) ORTHOPT_FUZZ_CHECK(all_finite(orthopt::matrix_view<const T>(out[k])));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool()) run<float>(in);
  else run<double>(in);
  return 0;
}
