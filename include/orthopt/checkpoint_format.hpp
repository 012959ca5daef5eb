// SPDX-License-Identifier: Apache-2.0
//
// The checkpoint format's constants: the magic bytes, the version, the element-type codes and the sizes
// of the header and checksum (docs/checkpoint-format.md is the layout's master). A header of its own so
// that a backend with another storage type (orthopt/cuda/backend.hpp: bfloat16) can give it an element
// code without including the checkpoint code, and with it the optimizer and the rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace orthopt {

namespace checkpoint_format {
inline constexpr unsigned char magic[8] = {'O', 'R', 'T', 'H', 'O', 'P', 'T', 0x00};
inline constexpr std::uint32_t version = 2;
inline constexpr std::uint32_t oldest_version = 1;
inline constexpr std::uint32_t element_float32 = 1;
inline constexpr std::uint32_t element_float64 = 2;
inline constexpr std::uint32_t element_bfloat16 = 3;
inline constexpr std::size_t header_bytes = 24;
inline constexpr std::size_t checksum_bytes = 8;

inline const char* element_type_name(std::uint32_t code) {
  switch (code) {
    case element_float32: return "float32";
    case element_float64: return "float64";
    case element_bfloat16: return "bfloat16";
  }
  return "unknown";
}
/// The element-type code of T; a backend with another storage type specializes it
/// (orthopt/cuda/backend.hpp: bfloat16).
template <class T>
struct element_code_of {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "orthopt checkpoints store float, double or bfloat16 parameters");
  static_assert(std::numeric_limits<T>::is_iec559, "orthopt checkpoints store IEEE-754 values");
  static constexpr std::uint32_t value = std::is_same_v<T, float> ? element_float32 : element_float64;
};
template <class T>
constexpr std::uint32_t element_code() {
  return element_code_of<T>::value;
}
}  // namespace checkpoint_format

}  // namespace orthopt
