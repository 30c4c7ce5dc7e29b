// Allocation bound of a parse, for the parser fuzz targets: a parser that reads a count or a
// length from its input must not allocate more than the input can justify. While a bound is
// armed (AllocBound's lifetime), every heap allocation is checked: one allocation above
// `single_per_byte * input + kSlack`, or all allocations together above
// `total_per_byte * input + kTotalSlack`, prints the allocation's stack and aborts (a crash for
// libFuzzer, a failed replay for ctest).
//
// It uses the sanitizer allocator's malloc hooks, so it checks only in AddressSanitizer builds
// (the libFuzzer build, or a -DKVWIRE_SANITIZE=address build); elsewhere it does nothing.
// libFuzzer's -malloc_limit_mb catches only allocations above a fixed size; this bound scales
// with the input, so a 24-byte file that asks for 80 MB fails too.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVWIRE_FUZZ_ALLOC_HOOKS 1
#endif
#endif
#if !defined(KVWIRE_FUZZ_ALLOC_HOOKS) && defined(__SANITIZE_ADDRESS__)
#define KVWIRE_FUZZ_ALLOC_HOOKS 1
#endif

#ifdef KVWIRE_FUZZ_ALLOC_HOOKS
extern "C" int __sanitizer_install_malloc_and_free_hooks(
    void (*malloc_hook)(const volatile void*, size_t), void (*free_hook)(const volatile void*));
extern "C" void __sanitizer_print_stack_trace();
#endif

namespace kvwire::fuzz {

class AllocBound {
 public:
  static constexpr uint64_t kSlack = 1ull << 20;        // fixed costs: tables, thread pool, ...
  static constexpr uint64_t kTotalSlack = 64ull << 20;  // all allocations of one input

  // `extra_slack` raises both bounds for a documented fixed cap of a library the parser uses.
  AllocBound(const char* what, size_t input_bytes, uint64_t single_per_byte = 128,
             uint64_t total_per_byte = 1024, uint64_t extra_slack = 0) {
#ifdef KVWIRE_FUZZ_ALLOC_HOOKS
    static const bool installed =
        __sanitizer_install_malloc_and_free_hooks(&OnMalloc, &OnFree) != 0;
    if (!installed) return;
    State& s = state();
    s.what = what;
    s.single_limit = single_per_byte * input_bytes + kSlack + extra_slack;
    s.total_limit = total_per_byte * input_bytes + kTotalSlack + extra_slack;
    s.total.store(0, std::memory_order_relaxed);
    s.armed.store(true, std::memory_order_release);
#else
    (void)what, (void)input_bytes, (void)single_per_byte, (void)total_per_byte,
        (void)extra_slack;
#endif
  }
  ~AllocBound() {
#ifdef KVWIRE_FUZZ_ALLOC_HOOKS
    state().armed.store(false, std::memory_order_release);
#endif
  }
  AllocBound(const AllocBound&) = delete;
  AllocBound& operator=(const AllocBound&) = delete;

 private:
#ifdef KVWIRE_FUZZ_ALLOC_HOOKS
  struct State {
    std::atomic<bool> armed{false};
    std::atomic<bool> failed{false};
    std::atomic<uint64_t> total{0};
    const char* what = "";
    uint64_t single_limit = 0, total_limit = 0;
  };
  static State& state() {
    static State s;
    return s;
  }

  // Runs inside the allocator: no allocation here, hence snprintf into a stack buffer.
  static void OnMalloc(const volatile void*, size_t size) {
    State& s = state();
    if (!s.armed.load(std::memory_order_acquire)) return;
    const uint64_t total = s.total.fetch_add(size, std::memory_order_relaxed) + size;
    const bool single = size > s.single_limit;
    if (!single && total <= s.total_limit) return;
    if (s.failed.exchange(true)) return;
    char buf[256];
    const int n = std::snprintf(
        buf, sizeof(buf),
        "%s: allocation bound exceeded: %s of %llu bytes, bound %llu bytes for this input\n",
        s.what, single ? "one allocation" : "allocations totalling",
        static_cast<unsigned long long>(single ? size : total),
        static_cast<unsigned long long>(single ? s.single_limit : s.total_limit));
    if (n > 0) (void)!::write(2, buf, static_cast<size_t>(n) < sizeof(buf) ? n : sizeof(buf) - 1);
    __sanitizer_print_stack_trace();
    std::abort();
  }
  static void OnFree(const volatile void*) {}
#endif
};

}  // namespace kvwire::fuzz
