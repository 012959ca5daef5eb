// gpu_driver.cu compiled by the host compiler, on the CUDA backend's host emulation (test_gpu_thrust_host).
#include "gpu_driver.cu"  // NOLINT(bugprone-suspicious-include)
