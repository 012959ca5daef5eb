// A counting allocator for the whole process: replaces malloc and friends (glibc allows an executable to
// interpose them) and forwards to glibc's own implementation. operator new, Eigen's aligned_malloc,
// std::vector and OpenMP's runtime all end here, so "no allocation" means none at all.
#include "counting_malloc.hpp"

#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace counting_malloc {
std::atomic<bool> enabled{false};
std::atomic<long> count{0};
}  // namespace counting_malloc

namespace {
inline void note() {
  if (counting_malloc::enabled.load(std::memory_order_relaxed)) counting_malloc::count.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

extern "C" {
void* malloc(std::size_t n) {
  note();
  return __libc_malloc(n);
}
void* calloc(std::size_t a, std::size_t b) {
  note();
  return __libc_calloc(a, b);
}
void* realloc(void* p, std::size_t n) {
  note();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  note();
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  note();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  note();
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) { __libc_free(p); }
}
