// Checkpoints: the documented byte layout, bit-exact resume, and loud, all-or-nothing failures on a
// corrupted, truncated, wrong-version, wrong-type or mismatched checkpoint.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "optimizer_test_util.hpp"

using namespace testing;
using orthopt::param_id;

namespace {

using B = backend_under_test;

using testing::checkpoint_bytes;
using testing::load_checkpoint_bytes;

std::uint64_t le(const std::string& s, std::size_t at, int width) {
  std::uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}
void put_le(std::string& s, std::size_t at, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i) s[at + i] = static_cast<char>(static_cast<unsigned char>(v >> (8 * i)));
}
std::uint64_t fnv(const std::string& s, std::size_t n) {
  orthopt::fnv1a64 h;
  h.update(s.data(), n);
  return h.value();
}
/// Recomputes the trailing checksum (to make a checkpoint that is intact but says something else).
void reseal(std::string& s) { put_le(s, s.size() - 8, fnv(s, s.size() - 8), 8); }

/// The message of the orthopt error `f` throws, or "" when it throws none (a test failure).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const orthopt::error& e) {
    return e.what();
  }
  return "";
}

/// A checkpoint of the toy model after 3 steps, and a target optimizer (2 steps, so its state differs
/// from the checkpoint's: a load that went through would show).
template <class T>
struct fixture {
  toy_model<T> source_model;
  orthopt::optimizer<T, B> source = source_model.make_optimizer();
  std::string bytes;
  fixture() {
    source_model.run(source, 0, 3);
    bytes = checkpoint_bytes(source);
  }
};

template <class T>
void check_load_fails_unchanged(orthopt::optimizer<T, B>& target, const std::string& bytes, const std::string& expected) {
  const auto before = snapshot(target);
  const std::string message = error_of([&] { load_checkpoint_bytes(target, bytes); });
  INFO("message: " << message);
  CHECK_FALSE(message.empty());
  CHECK_THAT(message, Catch::Contains(expected));
  CHECK_THAT(message, Catch::Contains("the optimizer is unchanged"));
  CHECK(snapshot(target) == before);
}

}  // namespace

TEST_CASE("FNV-1a 64 matches the reference test vectors", "[checkpoint]") {
  const auto h = [](const char* s) {
    orthopt::fnv1a64 f;
    f.update(s, std::strlen(s));
    return f.value();
  };
  CHECK(h("") == 0xcbf29ce484222325ull);
  CHECK(h("a") == 0xaf63dc4c8601ec8cull);
  CHECK(h("foobar") == 0x85944171f73967e8ull);
}

TEMPLATE_TEST_CASE("a checkpoint has the documented byte layout", "[checkpoint]", float, double) {
  using T = TestType;
  fixture<T> f;
  const std::string& s = f.bytes;
  REQUIRE(s.size() > 32);
  CHECK(s.substr(0, 8) == std::string("ORTHOPT\0", 8));
  CHECK(le(s, 8, 4) == 2);                                  // version
  CHECK(le(s, 12, 4) == (sizeof(T) == 4 ? 1u : 2u));        // element type
  CHECK(le(s, 16, 8) == s.size() - 24 - 8);                 // payload length
  CHECK(le(s, s.size() - 8, 8) == fnv(s, s.size() - 8));   // checksum over header and payload
  // Payload: steps taken, parameter count, then the first parameter (the embedding, AdamW).
  std::size_t at = 24;
  CHECK(le(s, at, 8) == 3);
  CHECK(le(s, at + 8, 4) == f.source.param_count());
  at += 12;
  const std::string name = "transformer.wte.weight";
  REQUIRE(le(s, at, 4) == name.size());
  CHECK(s.substr(at + 4, name.size()) == name);
  at += 4 + name.size();
  CHECK(le(s, at, 4) == static_cast<std::uint32_t>(orthopt::rule_kind::adamw));
  CHECK(le(s, at + 4, 8) == 32);   // rows
  CHECK(le(s, at + 12, 8) == 8);   // cols
  CHECK(le(s, at + 20, 8) == 1);   // count
  CHECK(le(s, at + 28, 8) == 3);   // the parameter's step count
  CHECK(le(s, at + 36, 4) == 2);   // slots: momentum, second_moment
  at += 40;
  REQUIRE(le(s, at, 4) == 8);
  CHECK(s.substr(at + 4, 8) == "momentum");
  at += 12;
  CHECK(le(s, at, 4) == sizeof(T));
  CHECK(le(s, at + 4, 8) == 32 * 8);
  at += 12;
  auto& state = f.source.state(param_id{0});
  CHECK(std::memcmp(s.data() + at, state.momentum().data, 32 * 8 * sizeof(T)) == 0);  // little-endian host
  // NAMO-D's column moment is stored in double whatever T is.
  const auto slots = f.source.state(*f.source.find_param("blocks.0.moe.experts")).slots();
  REQUIRE(slots.size() == 3);
  CHECK(std::string(slots[1].name) == "column_moment");
  CHECK(slots[1].element_bytes == 8);
  CHECK(slots[1].elements == 3 * 5);
  // The adaptive budget's accumulators: five doubles per Newton–Schulz state.
  CHECK(std::string(slots[2].name) == "ns_observation");
  CHECK(slots[2].element_bytes == 8);
  CHECK(slots[2].elements == 5);
}

TEMPLATE_TEST_CASE("resuming from a checkpoint is bit-exact", "[checkpoint]", float, double) {
  using T = TestType;
  const std::int64_t total = 7;
  toy_model<T> straight_model;
  auto straight = straight_model.make_optimizer();
  straight_model.run(straight, 0, total);
  const auto expected = snapshot(straight);

  for (const std::int64_t k : {1, 3, 6}) {
    INFO("checkpoint after " << k << " of " << total << " steps");
    toy_model<T> first_model;
    auto first = first_model.make_optimizer();
    first_model.run(first, 0, k);
    const std::string bytes = checkpoint_bytes(first);

    // A fresh process: a new model with the saved parameter values, a new optimizer, the checkpoint.
    toy_model<T> resumed_model;
    for (std::size_t i = 0; i < resumed_model.tensors.size(); ++i) {
      std::copy(first_model.tensors[i].value.begin(), first_model.tensors[i].value.end(),
                resumed_model.tensors[i].value.begin());
    }
    auto resumed = resumed_model.make_optimizer();
    load_checkpoint_bytes(resumed, bytes);
    CHECK(resumed.steps_taken() == k);
    CHECK(checkpoint_bytes(resumed) == bytes);  // the state round-trips exactly
    resumed_model.run(resumed, k, total);
    CHECK(snapshot(resumed) == expected);
  }
  CHECK(straight.steps_taken() == total);
}

TEMPLATE_TEST_CASE("parameters are matched by name, not by registration order", "[checkpoint]", float, double) {
  using T = TestType;
  toy_model<T> a;
  auto opt_a = a.make_optimizer();
  a.run(opt_a, 0, 2);
  const std::string bytes = checkpoint_bytes(opt_a);

  toy_model<T> b;
  std::reverse(b.tensors.begin(), b.tensors.end());
  for (std::size_t i = 0; i < b.tensors.size(); ++i) b.tensors[i].value = a.tensors[b.tensors.size() - 1 - i].value;
  auto opt_b = b.make_optimizer();
  load_checkpoint_bytes(opt_b, bytes);
  a.run(opt_a, 2, 4);
  const std::size_t n = b.tensors.size();
  for (std::int64_t t = 2; t < 4; ++t) {
    toy_model<T> in_a_order;  // the same tensor list as a: its gradients of step t are a's
    in_a_order.fill_gradients(t);
    for (std::size_t i = 0; i < n; ++i) b.tensors[i].grad = in_a_order.tensors[n - 1 - i].grad;
    opt_b.step(b.gradient_views());
  }
  for (std::size_t i = 0; i < n; ++i) {
    INFO(a.tensors[i].name);
    CHECK(b.tensors[n - 1 - i].name == a.tensors[i].name);
    CHECK(std::memcmp(a.tensors[i].value.data(), b.tensors[n - 1 - i].value.data(), a.tensors[i].value.size() * sizeof(T)) == 0);
  }
}

TEMPLATE_TEST_CASE("a flipped bit anywhere fails loudly and changes nothing", "[checkpoint]", float, double) {
  using T = TestType;
  fixture<T> f;
  toy_model<T> target_model;
  auto target = target_model.make_optimizer();
  target_model.run(target, 0, 2);
  const std::size_t n = f.bytes.size();
  std::vector<std::size_t> positions;
  for (std::size_t p = 0; p < 24; ++p) positions.push_back(p);             // every header byte
  for (std::size_t p = 24; p < n - 8; p += 53) positions.push_back(p);      // through the payload
  for (std::size_t p = n - 8; p < n; ++p) positions.push_back(p);          // the checksum
  positions.push_back(n - 9);                                              // the last element byte
  for (const std::size_t p : positions) {
    INFO("byte " << p << " of " << n);
    std::string bad = f.bytes;
    bad[p] = static_cast<char>(bad[p] ^ (1 << (p % 8)));
    std::string expected = "checksum mismatch";
    if (p < 8) expected = "not an orthopt checkpoint";
    else if (p < 12) expected = "format version in the checkpoint";
    else if (p < 16) expected = "element type in the checkpoint";
    else if (p < 24) expected = le(bad, 16, 8) > le(f.bytes, 16, 8) ? "truncated or corrupted" : "checksum mismatch";
    check_load_fails_unchanged(target, bad, expected);
  }
  // The untouched checkpoint loads (the failures above were about the flipped bit).
  load_checkpoint_bytes(target, f.bytes);
  CHECK(checkpoint_bytes(target) == f.bytes);
}

TEMPLATE_TEST_CASE("a truncated checkpoint fails loudly and changes nothing", "[checkpoint]", float, double) {
  using T = TestType;
  fixture<T> f;
  toy_model<T> target_model;
  auto target = target_model.make_optimizer();
  target_model.run(target, 0, 2);
  const std::size_t n = f.bytes.size();
  for (const std::size_t length : {std::size_t{0}, std::size_t{5}, std::size_t{23}, std::size_t{24}, std::size_t{40},
                                   n / 2, n - 9, n - 8, n - 1}) {
    INFO("first " << length << " of " << n << " bytes");
    check_load_fails_unchanged(target, f.bytes.substr(0, length), "truncated");
  }
}

TEMPLATE_TEST_CASE("a checkpoint of another format version or element type is refused", "[checkpoint]", float, double) {
  using T = TestType;
  using Other = std::conditional_t<std::is_same_v<T, float>, double, float>;
  fixture<T> f;
  toy_model<T> target_model;
  auto target = target_model.make_optimizer();
  target_model.run(target, 0, 2);

  std::string v3 = f.bytes;
  put_le(v3, 8, 3, 4);
  reseal(v3);
  check_load_fails_unchanged(target, v3, "format version in the checkpoint = 3, this build reads versions 1 to 2");
  std::string v0 = f.bytes;
  put_le(v0, 8, 0, 4);
  reseal(v0);
  check_load_fails_unchanged(target, v0, "format version in the checkpoint = 0, this build reads versions 1 to 2");

  toy_model<Other> other_model;
  auto other = other_model.make_optimizer();
  other_model.run(other, 0, 3);
  const std::string other_bytes = checkpoint_bytes(other);
  const std::string mine = sizeof(T) == 4 ? "float32" : "float64", theirs = sizeof(T) == 4 ? "float64" : "float32";
  check_load_fails_unchanged(target, other_bytes,
                             "element type in the checkpoint = " + theirs + " (code " + (sizeof(T) == 4 ? "2" : "1") +
                                 "), in the optimizer = " + mine);
  CHECK_THROWS_AS(load_checkpoint_bytes(target, other_bytes), orthopt::value_error);
}

TEMPLATE_TEST_CASE("a checkpoint that does not match the optimizer is refused, naming the field", "[checkpoint]", float,
                   double) {
  using T = TestType;
  fixture<T> f;
  const auto target_for = [](toy_variant v) {
    toy_model<T> m(v);
    auto opt = m.make_optimizer();
    m.run(opt, 0, 2);
    return std::pair{std::move(m), std::move(opt)};
  };
  SECTION("a parameter of another shape") {
    auto [m, opt] = target_for({.wider_fc = true});
    check_load_fails_unchanged(opt, f.bytes, "parameter 'blocks.0.mlp.fc.weight': cols in the checkpoint = 8, in the optimizer = 9");
    CHECK_THROWS_AS(load_checkpoint_bytes(opt, f.bytes), orthopt::shape_error);
  }
  SECTION("a parameter under another rule") {
    auto [m, opt] = target_for({.namo_group_runs_adamuon = true});
    check_load_fails_unchanged(opt, f.bytes,
                               "parameter 'blocks.0.conv.weight': rule in the checkpoint = namo (3), in the optimizer = adamuon");
    CHECK_THROWS_AS(load_checkpoint_bytes(opt, f.bytes), orthopt::value_error);
  }
  SECTION("the optimizer lacks a parameter of the checkpoint") {
    auto [m, opt] = target_for({.drop_head = true});
    check_load_fails_unchanged(opt, f.bytes, "the checkpoint holds parameter 'lm_head.weight', which the optimizer does not have");
  }
  SECTION("the checkpoint lacks a parameter of the optimizer") {
    auto [m, opt] = target_for({.extra_param = true});
    check_load_fails_unchanged(opt, f.bytes, "parameter 'blocks.0.extra.bias' of the optimizer is not in the checkpoint");
  }
  SECTION("a renamed parameter") {
    auto [m, opt] = target_for({.rename_head = true});
    check_load_fails_unchanged(opt, f.bytes, "parameter 'lm_head.w' of the optimizer is not in the checkpoint");
  }
  SECTION("an intact checkpoint that records another shape") {
    auto [m, opt] = target_for({});
    std::string other = f.bytes;
    const std::size_t rows_at = 24 + 12 + 4 + std::string("transformer.wte.weight").size() + 4;
    REQUIRE(le(other, rows_at, 8) == 32);
    put_le(other, rows_at, 33, 8);
    reseal(other);
    check_load_fails_unchanged(opt, other, "parameter 'transformer.wte.weight': rows in the checkpoint = 33, in the optimizer = 32");
  }
}

TEMPLATE_TEST_CASE("saving to a failed stream throws", "[checkpoint]", float, double) {
  using T = TestType;
  toy_model<T> m;
  auto opt = m.make_optimizer();
  std::ostringstream out;
  out.setstate(std::ios::badbit);
  CHECK_THROWS_WITH(orthopt::save_checkpoint(opt, out), Catch::Contains("writing to the stream failed"));
}

namespace {
/// The same checkpoint in format version 1 (orthopt before the adaptive budget): without the
/// ns_observation slots, the per-parameter Newton–Schulz counts and the budget phase. Written from the
/// format description (docs/checkpoint-format.md), field by field.
std::string as_version_1(const std::string& v2) {
  std::string payload;
  std::size_t at = 24;
  const auto copy = [&](std::size_t n) {
    payload += v2.substr(at, n);
    at += n;
  };
  copy(8);  // steps taken
  const auto n = le(v2, at, 4);
  copy(4);
  for (std::uint64_t p = 0; p < n; ++p) {
    copy(4 + le(v2, at, 4));  // name
    copy(4 + 8 * 4);          // rule kind, rows, cols, count, step
    const auto slots = le(v2, at, 4);
    const std::size_t slot_count_at = payload.size();
    copy(4);
    std::uint64_t kept = 0;
    for (std::uint64_t k = 0; k < slots; ++k) {
      const auto name_length = le(v2, at, 4);
      const std::string name = v2.substr(at + 4, name_length);
      const auto bytes = le(v2, at + 4 + name_length, 4) * le(v2, at + 8 + name_length, 8);
      const std::size_t record = 4 + name_length + 4 + 8 + bytes;
      if (name == "ns_observation") {
        at += record;
      } else {
        copy(record);
        ++kept;
      }
    }
    put_le(payload, slot_count_at, kept, 4);
    at += 4;  // the Newton–Schulz count
  }
  at += 12;  // the budget phase and its start
  REQUIRE(at == v2.size() - 8);
  std::string v1 = v2.substr(0, 24) + payload + std::string(8, '\0');
  put_le(v1, 8, 1, 4);
  put_le(v1, 16, payload.size(), 8);
  reseal(v1);
  return v1;
}
}  // namespace

TEMPLATE_TEST_CASE("a version 1 checkpoint still loads, leaving the Newton-Schulz counts as they are", "[checkpoint]",
                   float, double) {
  using T = TestType;
  fixture<T> f;
  const std::string v1 = as_version_1(f.bytes);
  CHECK(v1.size() < f.bytes.size());
  toy_model<T> target_model;
  auto target = target_model.make_optimizer();
  const auto hidden = *target.find_param("blocks.0.mlp.fc.weight");
  target.set_ns_steps(hidden, 7);
  load_checkpoint_bytes(target, v1);
  CHECK(target.ns_steps(hidden) == 7);
  // Everything else is the source's: saving again gives the source's version 2 bytes but for that count.
  target.set_ns_steps(hidden, f.source.ns_steps(hidden));
  CHECK(checkpoint_bytes(target) == f.bytes);
}

// Streams that throw (exceptions() set) and lengths that would make the loader read
// without end give orthopt's errors, with the optimizer unchanged.
TEMPLATE_TEST_CASE("streams with exceptions set and absurd payload lengths give orthopt's errors", "[checkpoint]", float,
                   double) {
  using T = TestType;
  fixture<T> f;
  toy_model<T> target_model;
  auto target = target_model.make_optimizer();
  target_model.run(target, 0, 2);
  const auto before = snapshot(target);
  for (const std::size_t length : {std::size_t{10}, f.bytes.size() / 2, f.bytes.size() - 3}) {
    std::istringstream in(f.bytes.substr(0, length), std::ios::binary);
    in.exceptions(std::ios::failbit | std::ios::badbit | std::ios::eofbit);
    INFO("first " << length << " bytes, exceptions on");
    CHECK_THROWS_AS(orthopt::load_checkpoint(target, in), orthopt::value_error);
    CHECK(snapshot(target) == before);
  }
  {
    std::istringstream in(f.bytes, std::ios::binary);
    in.exceptions(std::ios::failbit | std::ios::badbit);
    orthopt::load_checkpoint(target, in);  // a whole checkpoint loads with exceptions on
    CHECK(checkpoint_bytes(target) == f.bytes);
  }
  // Saving to a stream that fails by throwing.
  struct full_disk : std::streambuf {
    int_type overflow(int_type) override { return traits_type::eof(); }
  } nowhere;
  std::ostream broken(&nowhere);
  broken.exceptions(std::ios::badbit);
  CHECK_THROWS_WITH(orthopt::save_checkpoint(target, broken), Catch::Contains("writing to the stream failed"));
  // A payload length of 2^62 on a stream that never ends (a header, then zeros forever, as from
  // /dev/zero): refused before the payload is read.
  std::string header = f.bytes.substr(0, 24);
  put_le(header, 16, std::uint64_t{1} << 62, 8);
  struct endless : std::streambuf {
    std::string head;
    std::size_t at = 0;
    char zero[4096] = {};
    int_type underflow() override {
      if (at < head.size()) {
        setg(head.data(), head.data() + at, head.data() + head.size());
        at = head.size();
        return traits_type::to_int_type(*gptr());
      }
      setg(zero, zero, zero + sizeof zero);
      return 0;
    }
  } source;
  source.head = header;
  std::istream in(&source);
  const auto loaded_before = snapshot(target);
  CHECK_THROWS_WITH(orthopt::load_checkpoint(target, in),
                    Catch::Contains("far more than this optimizer's checkpoint holds") &&
                        Catch::Contains("the optimizer is unchanged"));
  CHECK(snapshot(target) == loaded_before);
}

// A NaN momentum loaded from a checkpoint poisoned every later step. A checkpoint
// whose state is not finite, or whose second moments are negative (a step takes their root), is refused
// at load, naming the parameter, the slot and the element; the optimizer is unchanged.
TEMPLATE_TEST_CASE("a checkpoint whose state is not finite or has a negative moment is refused", "[checkpoint]", float,
                   double) {
  using T = TestType;
  toy_model<T> model;
  auto target = model.make_optimizer();
  model.run(target, 0, 2);
  struct corruption {
    std::string param;
    const char* slot;
    double value;
    std::string expected;
  };
  const std::string head = model.tensors.back().name;  // AdamW (m, v)
  const std::string first = model.tensors.front().name;
  const std::vector<corruption> cases = {
      {first, "momentum", std::numeric_limits<double>::quiet_NaN(), "slot 'momentum' element 5 (matrix 0, row "},
      {first, "momentum", std::numeric_limits<double>::infinity(), "is inf; a state must be finite"},
      {head, "second_moment", -1.0, "cannot be negative"},
      {head, "second_moment", std::numeric_limits<double>::quiet_NaN(), "slot 'second_moment' element 5"},
  };
  for (const corruption& c : cases) {
    INFO(c.param << " " << c.slot << " = " << c.value);
    fixture<T> f;
    const auto id = *f.source.find_param(c.param);
    auto& st = f.source.state(id);
    if (std::string_view(c.slot) == "momentum") st.momentum(0).data[5] = static_cast<T>(c.value);
    else st.second_moment(0).data[5] = static_cast<T>(c.value);
    const std::string bytes = checkpoint_bytes(f.source);
    check_load_fails_unchanged(target, bytes, "parameter '" + c.param + "': ");
    check_load_fails_unchanged(target, bytes, c.expected);
  }
  // Column moments (NAMO's v) too.
  fixture<T> f;
  for (std::size_t i = 0; i < f.source.param_count(); ++i) {
    auto& st = f.source.state(param_id{i});
    if (!st.column_moment(0).empty()) {
      st.column_moment(0)(0, 0) = -2.0;
      break;
    }
  }
  check_load_fails_unchanged(target, checkpoint_bytes(f.source), "slot 'column_moment' element 0 is -2.0; a second moment");
  // The adaptive budget's observation accumulators (calls, sums of needs and residuals): a valid checksum
  // over a negative count loaded before.
  fixture<T> g;
  for (std::size_t i = 0; i < g.source.param_count(); ++i) {
    if (auto* ns = g.source.state(param_id{i}).ns_plan()) {
      ns->observation_data()[1] = -3.0;  // calls
      break;
    }
  }
  check_load_fails_unchanged(target, checkpoint_bytes(g.source),
                             "slot 'ns_observation' element 1 is -3.0; the adaptive budget's observation holds counts");
}
