// SPDX-License-Identifier: Apache-2.0
//
// Saving and loading an optimizer's whole state (orthopt/optimizer.hpp) to a std::ostream / from a
// std::istream, in a versioned, little-endian binary format with a checksum.
//
//   orthopt::save_checkpoint(opt, file);   // every parameter's state, the step counts
//   orthopt::load_checkpoint(opt, file);   // into an optimizer with the same parameters registered
//
// What is saved: the optimizer's completed step count, and per parameter its name, rule kind, shape,
// step count, every persistent tensor of its state (param_state::slots(): momentum, second moment,
// column moment, the adaptive budget's accumulators) and its Newton–Schulz step count; and the phase of
// the adaptive Newton–Schulz budget (orthopt/ns_budget.hpp), so that a resumed run keeps its committed
// counts, or ends an interrupted observation window as the uninterrupted run would. The budget's options
// are configuration (set them again, with set_ns_budget, before loading) and its last report is not
// saved. Loaded into an optimizer without a budget, the per-parameter counts are still restored. Not
// saved: the parameters themselves (they are the host's; save them with the model), the
// hyper-parameters and schedules (configuration, set up in code when the optimizer is rebuilt), and
// scratch (recomputed by every step). Resuming is bit-exact: k steps, save, load into a freshly built
// optimizer over the same parameter values, N − k steps gives the same bits as N steps in one go.
//
// Loading is all-or-nothing. It reads the whole stream into memory, verifies the magic bytes, format
// version, element type and checksum, parses it, and checks every parameter (name, rule kind, rows, cols,
// count) and every slot (name, element size, element count) against the optimizer, before it writes
// anything; any mismatch throws value_error or shape_error naming the field and both values, and leaves
// the optimizer exactly as it was. Parameters are matched by name, so registration order may differ.
//
// The slots are copied through the state's backend (copy_to_host / copy_from_host): plain memcpy on the
// CPU backends, a device-to-host copy (and a wait for it) on the CUDA backend. A checkpoint written from
// one backend loads into another that stores the same element type.
//
// The format (version 2; version 1, without the Newton–Schulz fields, still loads): little-endian; the
// magic bytes "ORTHOPT\0", the format version, the element type (1 float, 2 double, 3 bfloat16) and the
// payload length; the payload (the optimizer's step count; per parameter its name, rule kind, shape,
// step count, state slots and Newton–Schulz iteration count; the budget's phase); then an FNV-1a 64
// checksum of everything before it. Bytes after the checksum are not read. The byte layout, field by
// field, with a worked example and the loader's checks, is docs/checkpoint-format.md, the master of
// this description; the constants in orthopt/checkpoint_format.hpp must agree with it
// (tests/test_checkpoint.cpp decodes a file by that layout).
#pragma once

#include <algorithm>
#include <cmath>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ios>
#include <istream>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "orthopt/checkpoint_format.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/optimizer.hpp"
#include "orthopt/rules/rule_list.hpp"

namespace orthopt {

/// FNV-1a 64 (Fowler–Noll–Vo), the checkpoint's checksum. Not cryptographic: it detects accidental
/// corruption, not tampering.
class fnv1a64 {
 public:
  void update(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
      hash_ ^= p[i];
      hash_ *= 1099511628211ull;
    }
  }
  [[nodiscard]] std::uint64_t value() const noexcept { return hash_; }

 private:
  std::uint64_t hash_ = 14695981039346656037ull;
};

namespace detail {

/// Bytes as hex pairs in stream order: "4f 52 54 ...".
inline std::string hex_bytes(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) s += ' ';
    s += digits[p[i] >> 4];
    s += digits[p[i] & 0xF];
  }
  return s;
}

inline std::string hex64(std::uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 60; shift >= 0; shift -= 4) s += digits[(v >> shift) & 0xF];
  return s;
}

/// Writes little-endian fields to a stream and feeds every byte to the checksum.
class checkpoint_writer {
 public:
  explicit checkpoint_writer(std::ostream& out) : out_(out) {}

  void bytes(const void* data, std::size_t n) {
    hash_.update(data, n);
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  }
  void u32(std::uint32_t v) { integer(v, 4); }
  void u64(std::uint64_t v) { integer(v, 8); }
  void text(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  /// `count` elements of `element_bytes` each, stored little-endian whatever the host's byte order.
  void elements(const void* data, std::size_t element_bytes, std::size_t count) {
    if constexpr (std::endian::native == std::endian::little) {
      bytes(data, element_bytes * count);
    } else {
      unsigned char chunk[4096];
      const auto* p = static_cast<const unsigned char*>(data);
      const std::size_t per_chunk = sizeof(chunk) / element_bytes;
      for (std::size_t done = 0; done < count;) {
        const std::size_t n = std::min(per_chunk, count - done);
        for (std::size_t e = 0; e < n; ++e)
          for (std::size_t b = 0; b < element_bytes; ++b)
            chunk[e * element_bytes + b] = p[(done + e) * element_bytes + element_bytes - 1 - b];
        bytes(chunk, n * element_bytes);
        done += n;
      }
    }
  }
  [[nodiscard]] std::uint64_t checksum() const noexcept { return hash_.value(); }
  /// Ends the checkpoint: the checksum of every byte written so far (not itself fed to the checksum).
  void write_checksum() {
    unsigned char sum[8];
    const std::uint64_t value = hash_.value();
    for (int i = 0; i < 8; ++i) sum[i] = static_cast<unsigned char>(value >> (8 * i));
    out_.write(reinterpret_cast<const char*>(sum), 8);
  }

 private:
  void integer(std::uint64_t v, int width) {
    unsigned char b[8];
    for (int i = 0; i < width; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    bytes(b, static_cast<std::size_t>(width));
  }
  std::ostream& out_;
  fnv1a64 hash_;
};

inline std::uint64_t read_le(const unsigned char* p, int width) {
  std::uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

/// Bounds-checked reads from the verified payload. A checksum that passes makes a malformed payload all
/// but impossible, but the parser still never reads past the end.
class payload_reader {
 public:
  payload_reader(const unsigned char* data, std::size_t size) : data_(data), size_(size) {}

  std::uint32_t u32(const char* field) { return static_cast<std::uint32_t>(read_le(take(4, field), 4)); }
  std::uint64_t u64(const char* field) { return read_le(take(8, field), 8); }
  std::string text(const char* field) {
    const std::uint32_t n = u32(field);
    const unsigned char* p = take(n, field);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  /// Skips n bytes and returns their offset in the payload.
  std::size_t skip(std::uint64_t n, const char* field) {
    const std::size_t at = pos_;
    take(n, field);
    return at;
  }
  [[nodiscard]] std::size_t remaining() const noexcept { return size_ - pos_; }

 private:
  const unsigned char* take(std::uint64_t n, const char* field) {
    if (n > size_ - pos_) {
      throw value_error("orthopt::load_checkpoint: malformed payload: " + std::string(field) + " needs " +
                        std::to_string(n) + " bytes at payload offset " + std::to_string(pos_) + ", only " +
                        std::to_string(size_ - pos_) + " remain; the optimizer is unchanged");
    }
    const unsigned char* p = data_ + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  const unsigned char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

struct parsed_slot {
  std::string name;
  std::uint32_t element_bytes;
  std::uint64_t elements;
  std::size_t offset;  // of the first element byte in the payload
};
struct parsed_param {
  std::string name;
  std::uint32_t kind;
  std::uint64_t rows, cols, count, step;
  std::vector<parsed_slot> slots;
  std::uint32_t ns_steps = 0;  // version 2
};

inline const char* rule_code_name(std::uint32_t code) {
  return code >= 1 && code <= 5 ? rule_name(static_cast<rule_kind>(code)) : "unknown";
}

[[noreturn]] inline void load_fail_value(const std::string& what) {
  throw value_error("orthopt::load_checkpoint: " + what + "; the optimizer is unchanged");
}
[[noreturn]] inline void load_fail_shape(const std::string& what) {
  throw shape_error("orthopt::load_checkpoint: " + what + "; the optimizer is unchanged");
}

}  // namespace detail

namespace detail {
/// The payload bytes outside the parameter records: steps taken, parameter count, budget phase and start.
inline constexpr std::uint64_t payload_fixed_bytes = 8 + 4 + 4 + 8;

/// The length of one parameter's record in the payload (current format version).
template <class State>
std::uint64_t record_bytes_of(const std::string& name, const State& state) {
  std::uint64_t bytes = 4 + name.size() + 4 + 8 * 4 + 4 + 4;
  for (const auto& s : state.slots()) {
    bytes += 4 + std::strlen(s.name) + 4 + 8 + static_cast<std::uint64_t>(s.element_bytes) * s.elements;
  }
  return bytes;
}

/// Writes one parameter's record (name, rule, shape, step count, slots, Newton–Schulz count). `staging`
/// holds one slot at a time in host memory.
template <class State>
void write_param_record(checkpoint_writer& w, const std::string& name, const State& state,
                        std::vector<unsigned char>& staging) {
  w.text(name);
  w.u32(static_cast<std::uint32_t>(state.kind()));
  w.u64(static_cast<std::uint64_t>(state.rows()));
  w.u64(static_cast<std::uint64_t>(state.cols()));
  w.u64(static_cast<std::uint64_t>(state.count()));
  w.u64(static_cast<std::uint64_t>(state.step()));
  const auto slots = state.slots();
  w.u32(static_cast<std::uint32_t>(slots.size()));
  for (const auto& s : slots) {
    w.text(s.name);
    w.u32(static_cast<std::uint32_t>(s.element_bytes));
    w.u64(static_cast<std::uint64_t>(s.elements));
    staging.resize(s.element_bytes * s.elements);
    copy_to_host(state.backend(), staging.data(), s.data, staging.size());
    w.elements(staging.data(), s.element_bytes, s.elements);
  }
  const auto* ns = state.ns_plan();
  w.u32(ns != nullptr ? static_cast<std::uint32_t>(ns->steps()) : 0u);
}

/// The payload length of the checkpoint of the parameters whose states live in `reg` (all of an
/// optimizer's; a distributed optimizer's rank: its own), in the current format version.
template <class T, class Backend>
std::uint64_t payload_bytes_of(const param_registry<T, Backend>& reg) {
  std::uint64_t payload = payload_fixed_bytes;
  for (std::size_t i = 0; i < reg.param_count(); ++i) {
    if (reg.has_state(param_id{i})) payload += record_bytes_of(reg.param_name(param_id{i}), reg.state(param_id{i}));
  }
  return payload;
}
/// Writes a whole checkpoint of element type T to `out`: the header, the `n` parameter records that
/// `write_records(writer)` writes in registration order, the budget phase and its start, the checksum.
/// Throws value_error before writing anything when n exceeds the format's limit.
template <class T, class WriteRecords>
void write_checkpoint(std::ostream& out, std::uint64_t payload, std::int64_t steps_taken, std::size_t n,
                      WriteRecords write_records, ns_budget_phase phase, std::int64_t phase_start) {
  namespace fmt = checkpoint_format;
  if (n > std::numeric_limits<std::uint32_t>::max()) {
    throw value_error("orthopt::save_checkpoint: " + std::to_string(n) + " parameters exceed the format's limit");
  }
  checkpoint_writer w(out);
  w.bytes(fmt::magic, sizeof(fmt::magic));
  w.u32(fmt::version);
  w.u32(fmt::element_code<T>());
  w.u64(payload);
  w.u64(static_cast<std::uint64_t>(steps_taken));
  w.u32(static_cast<std::uint32_t>(n));
  write_records(w);
  w.u32(static_cast<std::uint32_t>(phase));
  w.u64(static_cast<std::uint64_t>(phase_start));
  w.write_checksum();
}
}  // namespace detail

/// Writes the optimizer's whole state to `out` (format above). Throws value_error if the stream fails,
/// whether it reports that by its state or, with exceptions() set, by throwing std::ios_base::failure.
template <class T, class Backend>
void save_checkpoint(const optimizer<T, Backend>& opt, std::ostream& out) {
  try {
    const auto write_records = [&](detail::checkpoint_writer& w) {
      std::vector<unsigned char> staging;  // one slot at a time, in host memory
      for (std::size_t i = 0; i < opt.param_count(); ++i) {
        detail::write_param_record(w, opt.param_name(param_id{i}), opt.state(param_id{i}), staging);
      }
    };
    detail::write_checkpoint<T>(out, detail::payload_bytes_of(opt), opt.steps_taken(), opt.param_count(), write_records,
                                opt.ns_budget_state(), opt.ns_budget_phase_start());
  } catch (const std::ios_base::failure& e) {
    throw value_error(std::string("orthopt::save_checkpoint: writing to the stream failed (") + e.what() + ")");
  }
  if (!out) throw value_error("orthopt::save_checkpoint: writing to the stream failed");
}
/// The same, through a pointer (the signature a distributed optimizer's ranks use); value_error for nullptr.
template <class T, class Backend>
void save_checkpoint(const optimizer<T, Backend>& opt, std::ostream* out) {
  if (out == nullptr) throw value_error("orthopt::save_checkpoint: the stream is nullptr");
  save_checkpoint(opt, *out);
}


namespace detail {
/// A checkpoint's verified bytes: its format version and payload.
struct checkpoint_image {
  std::uint32_t version = 0;
  std::vector<unsigned char> payload;
};

/// Steps 1–2 of loading: reads the header, the payload and the checksum from `in` and verifies them.
/// `expected_payload` is the length the loading optimizer's checkpoint has: a header announcing far more
/// is refused before anything else is read.
template <class T>
checkpoint_image read_checkpoint_image(std::istream& in, std::uint64_t expected_payload) {
  namespace fmt = checkpoint_format;
  // Up to n bytes; a stream with exceptions() set throws std::ios_base::failure where another sets
  // failbit: either way the count read says what happened, and the messages below say it in orthopt's
  // terms (value_error), never with a foreign exception.
  const auto read_up_to = [&in](void* dst, std::size_t n) -> std::size_t {
    try {
      in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    } catch (const std::ios_base::failure&) {
    }
    return static_cast<std::size_t>(in.gcount());
  };

  // ---- 1. Header: magic, version and element type are checked before the rest is read, so a file of
  //         another kind or version is reported as such rather than as a bad checksum.
  unsigned char header[fmt::header_bytes];
  if (const std::size_t got = read_up_to(header, fmt::header_bytes); got != fmt::header_bytes) {
    load_fail_value("truncated stream: " + std::to_string(got) + " bytes where the " +
                    std::to_string(fmt::header_bytes) + "-byte header was expected");
  }
  if (std::memcmp(header, fmt::magic, sizeof(fmt::magic)) != 0) {
    load_fail_value("not an orthopt checkpoint: magic bytes " + hex_bytes(header, 8) + ", expected " +
                    hex_bytes(fmt::magic, 8) + " (\"ORTHOPT\\0\")");
  }
  const auto version = static_cast<std::uint32_t>(read_le(header + 8, 4));
  if (version < fmt::oldest_version || version > fmt::version) {
    load_fail_value("format version in the checkpoint = " + std::to_string(version) + ", this build reads versions " +
                    std::to_string(fmt::oldest_version) + " to " + std::to_string(fmt::version));
  }
  const auto element = static_cast<std::uint32_t>(read_le(header + 12, 4));
  if (element != fmt::element_code<T>()) {
    load_fail_value("element type in the checkpoint = " + std::string(fmt::element_type_name(element)) + " (code " +
                    std::to_string(element) + "), in the optimizer = " +
                    fmt::element_type_name(fmt::element_code<T>()));
  }
  const std::uint64_t payload_bytes = read_le(header + 16, 8);
  // A checkpoint this optimizer can load is exactly payload_bytes_of(opt) long (version 2; version 1 is
  // shorter); one of another optimizer fails by name below. A length far beyond it is refused before
  // reading, so a corrupted length on an endless stream cannot make the loader read (and hold) without end.
  const std::uint64_t payload_limit = 2 * expected_payload + (std::uint64_t{1} << 20);
  if (payload_bytes > payload_limit) {
    load_fail_value("truncated or corrupted stream: the header announces " + std::to_string(payload_bytes) +
                    " payload bytes, far more than this optimizer's checkpoint holds (" +
                    std::to_string(expected_payload) + "); nothing after the header was read");
  }

  // ---- 2. Payload and checksum. The buffer grows as bytes arrive, so a corrupted length cannot make
  //         it allocate more than the stream holds.
  std::vector<unsigned char> payload;
  constexpr std::uint64_t chunk = std::uint64_t{1} << 24;
  while (payload.size() < payload_bytes) {
    const std::size_t have = payload.size();
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, payload_bytes - have));
    payload.resize(have + want);
    const std::size_t got = read_up_to(payload.data() + have, want);
    if (got != want) {
      load_fail_value("truncated or corrupted stream: the header announces " + std::to_string(payload_bytes) +
                      " payload bytes, the stream ends after " + std::to_string(have + got));
    }
  }
  unsigned char stored_sum[fmt::checksum_bytes];
  if (const std::size_t got = read_up_to(stored_sum, fmt::checksum_bytes); got != fmt::checksum_bytes) {
    load_fail_value("truncated stream: it ends " + std::to_string(got) +
                    " bytes into the 8-byte checksum that follows the payload");
  }
  fnv1a64 hash;
  hash.update(header, fmt::header_bytes);
  hash.update(payload.data(), payload.size());
  const std::uint64_t expected = read_le(stored_sum, 8);
  if (hash.value() != expected) {
    load_fail_value("checksum mismatch: the checkpoint records " + hex64(expected) +
                    ", its bytes sum to " + hex64(hash.value()) + " (the data is corrupted)");
  }

  return {version, std::move(payload)};
}

/// What a verified payload holds.
struct parsed_checkpoint {
  std::uint64_t steps_taken = 0;
  std::vector<parsed_param> params;
  std::uint32_t budget_phase = 0;
  std::uint64_t budget_phase_start = 0;
};

/// Step 3: parses and range-checks the payload.
inline parsed_checkpoint parse_checkpoint(const checkpoint_image& image) {
  const std::vector<unsigned char>& payload = image.payload;
  const std::uint32_t version = image.version;
  // ---- 3. Parse.
  payload_reader r(payload.data(), payload.size());
  const std::uint64_t steps_taken = r.u64("steps taken");
  const std::uint32_t param_count = r.u32("parameter count");
  std::vector<parsed_param> params;
  params.reserve(std::min<std::size_t>(param_count, payload.size() / 4));
  for (std::uint32_t i = 0; i < param_count; ++i) {
    parsed_param p;
    p.name = r.text("parameter name");
    p.kind = r.u32("rule kind");
    p.rows = r.u64("rows");
    p.cols = r.u64("cols");
    p.count = r.u64("count");
    p.step = r.u64("step count");
    const std::uint32_t slot_count = r.u32("slot count");
    for (std::uint32_t k = 0; k < slot_count; ++k) {
      parsed_slot s;
      s.name = r.text("slot name");
      s.element_bytes = r.u32("slot element size");
      s.elements = r.u64("slot element count");
      if (s.element_bytes != 0 && s.elements > std::numeric_limits<std::uint64_t>::max() / s.element_bytes) {
        load_fail_value("malformed payload: slot '" + s.name + "' of '" + p.name + "' is too large");
      }
      s.offset = r.skip(s.elements * s.element_bytes, "slot data");
      p.slots.push_back(std::move(s));
    }
    if (version >= 2) p.ns_steps = r.u32("Newton–Schulz step count");
    params.push_back(std::move(p));
  }
  std::uint32_t budget_phase = 0;
  std::uint64_t budget_phase_start = 0;
  if (version >= 2) {
    budget_phase = r.u32("budget phase");
    budget_phase_start = r.u64("budget phase start");
  }
  if (r.remaining() != 0) {
    load_fail_value("malformed payload: " + std::to_string(r.remaining()) + " bytes follow the last parameter");
  }
  constexpr auto int64_max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (steps_taken > int64_max) load_fail_value("optimizer steps taken = " + std::to_string(steps_taken) + " is out of range");
  for (const parsed_param& p : params) {
    if (p.step > int64_max) {
      load_fail_value("parameter '" + p.name + "': step count = " + std::to_string(p.step) + " is out of range");
    }
  }
  if (budget_phase > static_cast<std::uint32_t>(ns_budget_phase::committed)) {
    load_fail_value("adaptive budget phase = " + std::to_string(budget_phase) + " is not one of 0 to 3");
  }
  if (budget_phase_start > int64_max) {
    load_fail_value("adaptive budget phase start = " + std::to_string(budget_phase_start) + " is out of range");
  }

  return {steps_taken, std::move(params), budget_phase, budget_phase_start};
}

/// Where each of an optimizer's parameters is in a parsed checkpoint, and its slots.
template <class T, class Backend>
struct checkpoint_load_plan {
  using slot_list = decltype(std::declval<param_state<T, Backend>&>().slots());
  std::vector<slot_list> targets;
  std::vector<std::size_t> source;
};

/// One little-endian element of the payload as a double (U: the stored type).
template <class U>
double payload_element(const unsigned char* src) {
  unsigned char bytes[sizeof(U)];
  std::memcpy(bytes, src, sizeof(U));
  if constexpr (std::endian::native != std::endian::little) std::reverse(bytes, bytes + sizeof(U));
  U value;
  std::memcpy(&value, bytes, sizeof(U));
  return static_cast<double>(widen(value));
}

/// The values of a state slot: finite, and the moments (means of squares, whose roots a step takes)
/// not negative. A step's value check would refuse a non-finite state later; refusing it here names the
/// file as its source and keeps the optimizer as it was.
template <class T>
void check_slot_values(const std::string& who, const parsed_slot& slot, const unsigned char* src, std::uint64_t rows,
                       std::uint64_t cols) {
  const std::string_view name = slot.name;
  const bool element_typed = name == "momentum" || name == "second_moment";
  const bool observation = name == "ns_observation";  // sums and counts of the adaptive budget's window
  const bool non_negative = name == "second_moment" || name == "column_moment" || observation;
  for (std::uint64_t e = 0; e < slot.elements; ++e) {
    const double v = element_typed ? payload_element<T>(src + e * sizeof(T)) : payload_element<double>(src + e * 8);
    const bool bad = !std::isfinite(v) || (non_negative && v < 0.0);
    if (!bad) continue;
    std::string where = "element " + std::to_string(e);
    if (element_typed) {  // count matrices of rows×cols, each row-major
      const std::uint64_t k = e / (rows * cols), r = (e % (rows * cols)) / cols, c = e % cols;
      where += " (matrix " + std::to_string(k) + ", row " + std::to_string(r) + ", column " + std::to_string(c) + ")";
    }
    load_fail_value(who + "slot '" + slot.name + "' " + where + " is " + value_text(v) +
                    (!std::isfinite(v) ? "; a state must be finite"
                     : observation     ? "; the adaptive budget's observation holds counts and sums of counts and "
                                         "residuals, which cannot be negative"
                                       : "; a second moment is a mean of squares and cannot be negative"));
  }
}

/// Step 4: matches the checkpoint against the registered parameters by name and checks every field:
/// each parameter's rule and shape, and, for the parameters whose states live in `opt` (has_state),
/// every slot; allocates what the copy needs. `budget_set`: an adaptive budget will run the counts.
template <class T, class Backend>
checkpoint_load_plan<T, Backend> plan_checkpoint_load(param_registry<T, Backend>& opt, const checkpoint_image& image,
                                                      const parsed_checkpoint& parsed, bool budget_set) {
  const std::uint32_t version = image.version;
  const std::vector<parsed_param>& params = parsed.params;
  // ---- 4. Match against the optimizer, by name.
  std::unordered_map<std::string_view, std::size_t> by_name;
  by_name.reserve(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!by_name.emplace(params[i].name, i).second) {
      load_fail_value("the checkpoint holds parameter '" + params[i].name + "' twice");
    }
  }
  for (std::size_t i = 0; i < opt.param_count(); ++i) {
    if (by_name.find(opt.param_name(param_id{i})) == by_name.end()) {
      load_fail_value("parameter '" + opt.param_name(param_id{i}) + "' of the optimizer is not in the checkpoint (" +
                      std::to_string(params.size()) + " parameters there, " + std::to_string(opt.param_count()) +
                      " in the optimizer)");
    }
  }
  for (const auto& p : params) {
    if (!opt.find_param(p.name)) {
      load_fail_value("the checkpoint holds parameter '" + p.name + "', which the optimizer does not have");
    }
  }

  // Where each of the optimizer's parameters is in the checkpoint, and its slots: gathered (and
  // allocated) now so that the copy below cannot fail half-way.
  checkpoint_load_plan<T, Backend> plan;
  plan.targets.resize(opt.param_count());
  plan.source.resize(opt.param_count());
  auto& targets = plan.targets;
  auto& source = plan.source;
  using slot_list = typename checkpoint_load_plan<T, Backend>::slot_list;
  for (std::size_t i = 0; i < opt.param_count(); ++i) {
    const param_id id{i};
    source[i] = by_name.find(opt.param_name(id))->second;
    const parsed_param& p = params[source[i]];
    const std::string who = "parameter '" + p.name + "': ";
    const rule_kind kind = opt.group(opt.group_of(id)).kind();
    if (p.kind != static_cast<std::uint32_t>(kind)) {
      load_fail_value(who + "rule in the checkpoint = " + rule_code_name(p.kind) + " (" +
                      std::to_string(p.kind) + "), in the optimizer = " + rule_name(kind));
    }
    const auto check_extent = [&](const char* field, std::uint64_t saved, index_t have) {
      if (saved != static_cast<std::uint64_t>(have)) {
        load_fail_shape(who + field + " in the checkpoint = " + std::to_string(saved) + ", in the optimizer = " +
                        std::to_string(have));
      }
    };
    const batch_view<T> param = opt.param_view(id);
    check_extent("rows", p.rows, param.rows());
    check_extent("cols", p.cols, param.cols());
    check_extent("count", p.count, param.count);
    if (!opt.has_state(id)) continue;  // its owner checks the slots
    const auto& state = opt.state(id);
    if (state.kind() != kind) {
      load_fail_value(who + "its state was made by " + rule_name(state.kind()) + " but its group now runs " + rule_name(kind));
    }
    targets[i] = opt.state(id).slots();
    if (version < 2) {  // version 1 has no ns_observation slot: those accumulators are left as they are
      std::erase_if(targets[i], [](const auto& slot) { return std::string_view(slot.name) == "ns_observation"; });
    }
    const slot_list& have = targets[i];
    if (p.slots.size() != have.size()) {
      load_fail_shape(who + "slot count in the checkpoint = " + std::to_string(p.slots.size()) +
                      ", in the optimizer = " + std::to_string(have.size()));
    }
    for (std::size_t k = 0; k < have.size(); ++k) {
      const parsed_slot& s = p.slots[k];
      if (s.name != have[k].name) {
        load_fail_value(who + "slot " + std::to_string(k) + " in the checkpoint = '" + s.name +
                        "', in the optimizer = '" + have[k].name + "'");
      }
      if (s.element_bytes != have[k].element_bytes) {
        load_fail_shape(who + "slot '" + s.name + "' element size in the checkpoint = " +
                        std::to_string(s.element_bytes) + " bytes, in the optimizer = " +
                        std::to_string(have[k].element_bytes));
      }
      if (s.elements != have[k].elements) {
        load_fail_shape(who + "slot '" + s.name + "' element count in the checkpoint = " + std::to_string(s.elements) +
                        ", in the optimizer = " + std::to_string(have[k].elements));
      }
      if (s.element_bytes == sizeof(T) || s.element_bytes == sizeof(double)) {
        check_slot_values<T>(who, s, image.payload.data() + s.offset, p.rows, p.cols);
      }
    }
    if (version >= 2) {
      const auto* ns = state.ns_plan();
      if ((ns != nullptr) != (p.ns_steps != 0)) {
        load_fail_value(who + "Newton–Schulz step count in the checkpoint = " + std::to_string(p.ns_steps) +
                        (ns != nullptr ? ", but the optimizer's state runs Newton–Schulz"
                                       : ", but the optimizer's state has no Newton–Schulz plan"));
      }
      const bool restricted = ns != nullptr && (ns->records_residuals() || ns->stop_tolerance() > 0.0 || budget_set);
      if (p.ns_steps > static_cast<std::uint32_t>(std::numeric_limits<int>::max()) ||
          (restricted && p.ns_steps > static_cast<std::uint32_t>(ns_max_recorded_steps))) {
        load_fail_value(who + "Newton–Schulz step count in the checkpoint = " + std::to_string(p.ns_steps) +
                        " is more than this optimizer's state can run while it records residuals (" +
                        std::to_string(ns_max_recorded_steps) + ")");
      }
    }
  }

  return plan;
}

/// Step 5: copies the checkpoint into the states that live in `opt` and sets the step count (every
/// check has passed).
template <class T, class Backend>
void commit_checkpoint_load(param_registry<T, Backend>& opt, const checkpoint_image& image, const parsed_checkpoint& parsed,
                            const checkpoint_load_plan<T, Backend>& plan) {
  const std::vector<unsigned char>& payload = image.payload;
  const std::vector<parsed_param>& params = parsed.params;
  const auto& targets = plan.targets;
  const auto& source = plan.source;
  // ---- 5. Every check passed: copy. Nothing below throws on a host backend; on a device backend only a
  //         failing device copy could (a cuda_error), which means the device itself failed.
  std::vector<unsigned char> swapped;  // big-endian hosts only
  for (std::size_t i = 0; i < opt.param_count(); ++i) {
    const param_id id{i};
    if (!opt.has_state(id)) continue;
    const detail::parsed_param& p = params[source[i]];
    opt.state(id).set_step(static_cast<std::int64_t>(p.step));
    if (p.ns_steps != 0) opt.state(id).ns_plan()->set_steps(static_cast<int>(p.ns_steps));
    for (std::size_t k = 0; k < targets[i].size(); ++k) {
      const auto& dst = targets[i][k];
      const unsigned char* src = payload.data() + p.slots[k].offset;
      const std::size_t bytes = dst.element_bytes * dst.elements;
      if constexpr (std::endian::native == std::endian::little) {
        copy_from_host(opt.state(id).backend(), dst.data, src, bytes);
      } else {
        swapped.resize(bytes);
        for (std::size_t e = 0; e < dst.elements; ++e)
          for (std::size_t b = 0; b < dst.element_bytes; ++b)
            swapped[e * dst.element_bytes + b] = src[e * dst.element_bytes + dst.element_bytes - 1 - b];
        copy_from_host(opt.state(id).backend(), dst.data, swapped.data(), bytes);
      }
    }
  }
  opt.set_steps_taken(static_cast<std::int64_t>(parsed.steps_taken));
}
}  // namespace detail

/// Replaces the optimizer's state with the checkpoint read from `in` (format above). All-or-nothing: on
/// any error it throws and the optimizer is unchanged.
template <class T, class Backend>
void load_checkpoint(optimizer<T, Backend>& opt, std::istream& in) {
  const detail::checkpoint_image image = detail::read_checkpoint_image<T>(in, detail::payload_bytes_of(opt));
  const detail::parsed_checkpoint parsed = detail::parse_checkpoint(image);
  const auto plan = detail::plan_checkpoint_load(opt, image, parsed, opt.has_ns_budget());
  detail::commit_checkpoint_load(opt, image, parsed, plan);
  opt.restore_ns_budget_phase(static_cast<ns_budget_phase>(parsed.budget_phase),
                              static_cast<std::int64_t>(parsed.budget_phase_start));
}
/// The same, through a pointer (the signature a distributed optimizer's ranks use); value_error for nullptr.
template <class T, class Backend>
void load_checkpoint(optimizer<T, Backend>& opt, std::istream* in) {
  if (in == nullptr) throw value_error("orthopt::load_checkpoint: the stream is nullptr");
  load_checkpoint(opt, *in);
}

}  // namespace orthopt
