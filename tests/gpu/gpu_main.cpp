// The GPU suite's main: exits 77 (ctest: skipped) when there is no CUDA device, so that a machine without
// a GPU reports the suite as not run rather than as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "gpu_driver.hpp"

int main(int argc, char** argv) {
  std::string description;
  if (!gpu_driver::device_available(description)) {
    std::printf("orthopt GPU suite: %s; skipped\n", description.c_str());
    return 77;
  }
  std::printf("orthopt GPU suite on %s\n", description.c_str());
  return Catch::Session().run(argc, argv);
}
