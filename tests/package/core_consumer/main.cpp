// A consumer of orthopt's core alone, built where Eigen is not available: the backend-independent
// headers, views and schedules must compile and work without any backend.
#include <orthopt/orthopt.hpp>

#include <cstdio>

int main() {
  float storage[6] = {1, 2, 3, 4, 5, 6};
  const orthopt::matrix_view<float> m = orthopt::row_major_view(storage, 2, 3);
  const auto t = orthopt::make_view(m).transposed();
  const orthopt::ns_config config = orthopt::ns_presets::by_name("polar_express");
  config.validate();
  const bool ok = t.rows == 3 && t.cols == 2 && t(2, 1) == 6.0f && config.steps >= 1 && !config.table.empty();
  std::printf("orthopt %s core: %s\n", ORTHOPT_VERSION_STRING, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
