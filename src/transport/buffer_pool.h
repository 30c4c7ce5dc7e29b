// A bounded pool of byte buffers that one connection reuses for the payloads it receives (and,
// when its caller asks for send buffers, for the payloads it sent). A steady stream of large
// messages then costs no allocation, zero-fill or page faults per message: the pages stay mapped
// and warm, as in ucx_perftest, which receives into one buffer it allocated once.
//
// Bounded: the pool holds at most `max_bytes` of buffer capacity; past that it frees the buffers
// it has held longest. Buffers under kMinPooledBytes are not kept (malloc serves them from its
// own caches without page faults). Thread-safe; one pool may serve several connections.
//
// A new buffer of 2 MiB or more is advised to the kernel as huge pages before it is first
// written, so that its first use takes one page fault per 2 MiB instead of one per 4 KiB (on a
// VM each fault is an exit to the hypervisor; they dominated a fresh process's first transfer).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <vector>

namespace kvwire::transport {

class BufferPool {
 public:
  static constexpr size_t kMinPooledBytes = 64u << 10;
  static constexpr size_t kHugePage = size_t{2} << 20;

  /// Counters, for tests and diagnostics.
  struct Stats {
    uint64_t reused = 0;     // Take served from the pool
    uint64_t allocated = 0;  // Take that allocated (pool empty or no buffer of a fitting size)
    uint64_t evicted = 0;    // buffers freed to stay under max_bytes, or too large to keep
  };

  explicit BufferPool(uint64_t max_bytes) : max_bytes_(max_bytes) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  /// A buffer of exactly `bytes` bytes. Contents unspecified: a reused buffer keeps the bytes of
  /// an earlier message; a new one is zero-filled. A pooled buffer is used only when its capacity
  /// is at most twice `bytes`, so that a small message does not pin a large buffer.
  std::vector<uint8_t> Take(size_t bytes) {
    if (bytes >= kMinPooledBytes) {
      std::lock_guard lock(mu_);
      auto it = buffers_.lower_bound(bytes);  // best fit: the smallest capacity >= bytes
      if (it != buffers_.end() && it->first / 2 <= bytes) {
        // Of the buffers with that capacity, the one returned last: its bytes are the likeliest
        // to be in the CPU's cache (the oldest would cycle through every pooled buffer).
        it = std::prev(buffers_.upper_bound(it->first));
        std::vector<uint8_t> buf = std::move(it->second.buf);
        held_bytes_ -= it->first;
        buffers_.erase(it);
        ++stats_.reused;
        // Shrinking writes nothing; growing within the capacity zero-fills only the difference.
        buf.resize(bytes);
        return buf;
      }
      ++stats_.allocated;
    }
    return Fresh(bytes);
  }

  /// A new zero-filled buffer of `bytes` bytes; from 2 MiB on, with huge pages advised.
  static std::vector<uint8_t> Fresh(size_t bytes) {
    std::vector<uint8_t> buf;
    if (bytes >= kHugePage) {
      buf.reserve(bytes);
      AdviseHugePages(buf.data(), bytes);
    }
    buf.resize(bytes);
    return buf;
  }

  /// Keeps `buf` for a later Take, or frees it (too small to be worth keeping, larger than the
  /// whole pool). Makes room by freeing the buffers held longest.
  void Put(std::vector<uint8_t>&& buf) {
    const size_t cap = buf.capacity();
    if (cap < kMinPooledBytes) return;
    std::vector<std::vector<uint8_t>> freed;  // released outside the lock
    {
      std::lock_guard lock(mu_);
      if (cap > max_bytes_) {
        ++stats_.evicted;
        freed.push_back(std::move(buf));
      } else {
        while (held_bytes_ + cap > max_bytes_) {
          auto oldest = buffers_.begin();
          for (auto it = buffers_.begin(); it != buffers_.end(); ++it)
            if (it->second.stamp < oldest->second.stamp) oldest = it;
          held_bytes_ -= oldest->first;
          freed.push_back(std::move(oldest->second.buf));
          buffers_.erase(oldest);
          ++stats_.evicted;
        }
        held_bytes_ += cap;
        buffers_.emplace(cap, Held{std::move(buf), next_stamp_++});
      }
    }
  }

  /// Capacity held now (bytes), at most max_bytes().
  uint64_t held_bytes() const {
    std::lock_guard lock(mu_);
    return held_bytes_;
  }
  size_t held_buffers() const {
    std::lock_guard lock(mu_);
    return buffers_.size();
  }
  uint64_t max_bytes() const { return max_bytes_; }
  Stats stats() const {
    std::lock_guard lock(mu_);
    return stats_;
  }

 private:
  // madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside [p, p + bytes); advice only.
  static void AdviseHugePages(void* p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHugePage - 1);
    if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
  }

  struct Held {
    std::vector<uint8_t> buf;
    uint64_t stamp;  // order of Put: the lowest is evicted first
  };
  const uint64_t max_bytes_;
  mutable std::mutex mu_;
  std::multimap<size_t, Held> buffers_;  // by capacity
  uint64_t held_bytes_ = 0;
  uint64_t next_stamp_ = 0;
  Stats stats_;
};

}  // namespace kvwire::transport
