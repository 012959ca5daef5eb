/* SPDX-License-Identifier: Apache-2.0
 *
 * Which kernels OpenBLAS runs here, and whether they compute correctly and how fast: prints
 *   core=<openblas_get_corename()> error=<largest relative error> gflops=<sgemm GFLOP/s>
 * for a 384x384x384 sgemm against a float64 reference (error) and a 1024^3 sgemm (speed), on the
 * threads OpenBLAS is set to use. cmake/openblas-kernels.sh builds and runs it before any program of
 * this project loads OpenBLAS, to catch OpenBLAS's generic fallback kernels on CPUs it does not know.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

char* openblas_get_corename(void);

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
  const int n = 384, big = 1024;
  float* a = malloc(sizeof(float) * (size_t)big * big);
  float* b = malloc(sizeof(float) * (size_t)big * big);
  float* c = malloc(sizeof(float) * (size_t)big * big);
  if (!a || !b || !c) return 2;
  unsigned s = 12345u;
  for (long i = 0; i < (long)big * big; ++i) {
    s = s * 1664525u + 1013904223u;
    a[i] = (float)((double)(s >> 8) / 16777216.0 - 0.5);
    s = s * 1664525u + 1013904223u;
    b[i] = (float)((double)(s >> 8) / 16777216.0 - 0.5);
  }
  /* Correctness: C = A·B (row-major n×n) against a float64 product of the same float inputs. */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  double worst = 0.0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0.0, mag = 0.0;
      for (int k = 0; k < n; ++k) {
        ref += (double)a[i * n + k] * (double)b[k * n + j];
        mag += fabs((double)a[i * n + k] * (double)b[k * n + j]);
      }
      const double e = fabs((double)c[i * n + j] - ref) / (mag > 0.0 ? mag : 1.0);
      if (!(e <= worst)) worst = e; /* NaN propagates */
    }
  /* Speed: the best of three 1024^3 products. */
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    const double t0 = seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, big, big, big, 1.0f, a, big, b, big, 0.0f, c, big);
    const double t = seconds() - t0;
    if (t < best) best = t;
  }
  printf("core=%s error=%.3g gflops=%.1f\n", openblas_get_corename(), worst, 2.0 * big * big * big / best * 1e-9);
  free(a);
  free(b);
  free(c);
  return 0;
}
