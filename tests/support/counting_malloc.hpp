#pragma once
#include <atomic>

namespace counting_malloc {
extern std::atomic<bool> enabled;
extern std::atomic<long> count;

/// Counts every heap allocation of the process (all threads) while alive.
struct scope {
  scope() {
    count.store(0);
    enabled.store(true);
  }
  ~scope() { enabled.store(false); }
  scope(const scope&) = delete;
  scope& operator=(const scope&) = delete;
  [[nodiscard]] long allocations() const { return count.load(); }
};
}  // namespace counting_malloc
