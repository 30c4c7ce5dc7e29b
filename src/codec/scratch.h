// Per-thread scratch buffers of the codecs and streams: reused across chunks (a fresh multi-MiB
// buffer per chunk costs its zero-filling and page faults), only grown, and given back after a
// chunk that made one larger than kScratchKeepBytes. Not installed.
#pragma once

#include <cstddef>
#include <vector>

namespace kvwire {

inline constexpr size_t kScratchKeepBytes = size_t{64} << 20;

// At least n elements: scratch only grows (a resize up to a size it had before would fill with
// zeros what is about to be overwritten).
template <typename T>
void Grow(std::vector<T>* v, size_t n) {
  if (v->size() < n) v->resize(n);
}

// Frees v when it holds more than kScratchKeepBytes.
template <typename T>
void ShedIfLarge(std::vector<T>* v) {
  if (v->capacity() * sizeof(T) > kScratchKeepBytes) std::vector<T>().swap(*v);
}

}  // namespace kvwire
