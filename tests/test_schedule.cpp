// Learning-rate schedules: values at the key steps of each phase, exactly as orthopt/lr_schedule.hpp
// defines them, and the validation of their parameters.
#include <catch2/catch.hpp>

#include <orthopt/lr_schedule.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

using orthopt::cosine_schedule;
using orthopt::decay_shape;
using orthopt::warmup_stable_decay;

TEST_CASE("constant schedule is 1 at every step and rejects a negative step", "[schedule]") {
  const orthopt::constant_schedule s;
  CHECK(s(0) == 1.0);
  CHECK(s(1) == 1.0);
  CHECK(s(1'000'000'000) == 1.0);
  CHECK_THROWS_AS(s(-1), orthopt::value_error);
}

TEST_CASE("warmup-stable (the AdaMuon paper's GPT-2 policy): 2K warmup of 100K steps, no decay", "[schedule]") {
  const warmup_stable_decay s(2000, 100000);
  CHECK(s.decay_steps() == 0);
  CHECK(s(0) == 1.0 / 2000.0);  // the first step already moves: (s + 1) / W
  CHECK(s(999) == 1000.0 / 2000.0);
  CHECK(s(1999) == 1.0);  // the last warmup step reaches the base lr
  CHECK(s(2000) == 1.0);
  CHECK(s(99999) == 1.0);
  CHECK(s(100000) == 1.0);  // no decay planned: no cliff after the run either
  CHECK(s(500000) == 1.0);
  for (std::int64_t t = 1; t < 2000; ++t) REQUIRE(s(t) > s(t - 1));
}

TEST_CASE("warmup-stable-decay: linear decay over the final fraction to a floor", "[schedule]") {
  // N = 100, W = 10, K = 20 (decay_fraction 0.2), D = 80, floor 0.1
  const warmup_stable_decay s(10, 100, 0.2, 0.1);
  CHECK(s.decay_steps() == 20);
  CHECK(s.decay_start() == 80);
  CHECK(s(0) == Approx(0.1).epsilon(1e-15));
  CHECK(s(4) == Approx(0.5).epsilon(1e-15));
  CHECK(s(9) == 1.0);
  CHECK(s(10) == 1.0);
  CHECK(s(79) == 1.0);
  CHECK(s(80) == 1.0);                                        // decay starts at 1
  CHECK(s(90) == Approx(0.1 + 0.9 * 0.5).epsilon(1e-15));     // half-way
  CHECK(s(99) == Approx(0.1 + 0.9 * (1.0 / 20)).epsilon(1e-15));  // last planned step
  CHECK(s(100) == 0.1);                                       // the floor from N on
  CHECK(s(12345) == 0.1);
  for (std::int64_t t = 81; t <= 100; ++t) REQUIRE(s(t) < s(t - 1));
}

TEST_CASE("warmup-stable-decay: cosine and 1-sqrt decay shapes", "[schedule]") {
  const warmup_stable_decay cosine(0, 100, 0.5, 0.0, decay_shape::cosine);
  CHECK(cosine(0) == 1.0);  // no warmup: the first step is at the base lr
  CHECK(cosine(50) == 1.0);
  CHECK(cosine(75) == Approx(0.5).epsilon(1e-14));
  CHECK(cosine(99) == Approx(0.5 * (1.0 + std::cos(std::numbers::pi * 49.0 / 50.0))).epsilon(1e-14));
  CHECK(cosine(100) == 0.0);
  const warmup_stable_decay sqrt_shape(0, 100, 0.4, 0.2, decay_shape::one_minus_sqrt);
  CHECK(sqrt_shape(60) == 1.0);
  CHECK(sqrt_shape(70) == Approx(0.2 + 0.8 * 0.5).epsilon(1e-14));  // p = 1/4, 1 - sqrt(p) = 1/2
  CHECK(sqrt_shape(100) == 0.2);
}

TEST_CASE("warmup-stable-decay: the decay length is round(fraction x N), half away from zero", "[schedule]") {
  CHECK(warmup_stable_decay(0, 10, 0.25).decay_steps() == 3);  // 2.5 -> 3
  CHECK(warmup_stable_decay(0, 10, 0.24).decay_steps() == 2);
  CHECK(warmup_stable_decay(0, 10, 1.0).decay_steps() == 10);
  const warmup_stable_decay all_decay(0, 10, 1.0, 0.0);
  CHECK(all_decay(0) == 1.0);
  CHECK(all_decay(5) == Approx(0.5).epsilon(1e-15));
}

TEST_CASE("warmup-stable-decay rejects bad parameters with value_error", "[schedule]") {
  using E = orthopt::value_error;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(warmup_stable_decay(-1, 100), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, -5), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, -0.1), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, 1.5), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, nan), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, 0.1, -0.5), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, 0.1, 2.0), E);
  CHECK_THROWS_AS(warmup_stable_decay(0, 100, 0.1, nan), E);
  CHECK_THROWS_WITH(warmup_stable_decay(90, 100, 0.2), Catch::Contains("exceed total_steps = 100"));
  CHECK_NOTHROW(warmup_stable_decay(80, 100, 0.2));  // warmup and decay may meet, not overlap
  CHECK_THROWS_WITH(warmup_stable_decay(10, 100)(-3), Catch::Contains("step = -3"));
  CHECK_THROWS_WITH(warmup_stable_decay(0, 100, 3.0), Catch::Contains("decay_fraction"));
}

TEST_CASE("cosine schedule with warmup and a floor", "[schedule]") {
  // N = 100, W = 10, floor 0.1: cosine over the 90 steps after warmup
  const cosine_schedule s(100, 10, 0.1);
  CHECK(s(0) == Approx(0.1).epsilon(1e-15));
  CHECK(s(9) == 1.0);
  CHECK(s(10) == 1.0);
  CHECK(s(55) == Approx(0.1 + 0.9 * 0.5).epsilon(1e-14));
  CHECK(s(99) == Approx(0.1 + 0.9 * 0.5 * (1.0 + std::cos(std::numbers::pi * 89.0 / 90.0))).epsilon(1e-14));
  CHECK(s(100) == 0.1);
  CHECK(s(1000) == 0.1);
  for (std::int64_t t = 11; t <= 100; ++t) REQUIRE(s(t) < s(t - 1));

  const cosine_schedule plain(50);  // no warmup, to 0
  CHECK(plain(0) == 1.0);
  CHECK(plain(25) == Approx(0.5).epsilon(1e-14));
  CHECK(plain(50) == 0.0);
}

TEST_CASE("cosine schedule rejects bad parameters with value_error", "[schedule]") {
  using E = orthopt::value_error;
  CHECK_THROWS_AS(cosine_schedule(-1), E);
  CHECK_THROWS_AS(cosine_schedule(100, -1), E);
  CHECK_THROWS_WITH(cosine_schedule(100, 101), Catch::Contains("warmup_steps = 101 exceeds total_steps = 100"));
  CHECK_THROWS_AS(cosine_schedule(100, 0, 1.01), E);
  CHECK_THROWS_AS(cosine_schedule(100, 0, -0.01), E);
  CHECK_THROWS_AS(cosine_schedule(100)(-1), E);
  CHECK_NOTHROW(cosine_schedule(100, 100));  // all warmup
  CHECK(cosine_schedule(100, 100)(99) == 1.0);
}
