// The connection's receive/send buffer pool: reuse, best fit, and the bound on what it holds.
#include "transport/buffer_pool.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace kvwire::transport {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(BufferPool, ReusesAReturnedBufferWithoutAllocating) {
  BufferPool pool(8 * kMiB);
  std::vector<uint8_t> a = pool.Take(kMiB);
  ASSERT_EQ(a.size(), kMiB);
  a[kMiB - 1] = 7;
  const uint8_t* at = a.data();
  pool.Put(std::move(a));
  EXPECT_EQ(pool.held_buffers(), 1u);
  EXPECT_EQ(pool.held_bytes(), kMiB);

  std::vector<uint8_t> b = pool.Take(kMiB);
  EXPECT_EQ(b.data(), at);  // the same storage, not a new allocation
  EXPECT_EQ(b.size(), kMiB);
  EXPECT_EQ(b[kMiB - 1], 7);  // contents unspecified: the old bytes are still there
  EXPECT_EQ(pool.held_buffers(), 0u);
  EXPECT_EQ(pool.stats().reused, 1u);
  EXPECT_EQ(pool.stats().allocated, 1u);
}

TEST(BufferPool, ASmallerRequestShrinksAFittingBufferAndKeepsItsCapacity) {
  BufferPool pool(8 * kMiB);
  std::vector<uint8_t> a(kMiB);
  const uint8_t* at = a.data();
  pool.Put(std::move(a));
  std::vector<uint8_t> b = pool.Take(kMiB - 4096);
  EXPECT_EQ(b.data(), at);
  EXPECT_EQ(b.size(), kMiB - 4096);
  pool.Put(std::move(b));
  EXPECT_EQ(pool.held_bytes(), kMiB);        // accounted by capacity
  std::vector<uint8_t> c = pool.Take(kMiB);  // grows back within the capacity
  EXPECT_EQ(c.data(), at);
  EXPECT_EQ(c.size(), kMiB);
}

TEST(BufferPool, PicksTheBestFitAndNeverABufferMoreThanTwiceTheSize) {
  BufferPool pool(64 * kMiB);
  std::vector<uint8_t> big(16 * kMiB), mid(2 * kMiB);
  const uint8_t* big_at = big.data();
  const uint8_t* mid_at = mid.data();
  pool.Put(std::move(big));
  pool.Put(std::move(mid));
  std::vector<uint8_t> m = pool.Take(1536 * 1024);  // 1.5 MiB: the 2 MiB buffer fits best
  EXPECT_EQ(m.data(), mid_at);
  std::vector<uint8_t> s = pool.Take(kMiB);  // only the 16 MiB one is left: too large
  EXPECT_NE(s.data(), big_at);
  EXPECT_EQ(pool.held_buffers(), 1u);
  EXPECT_EQ(pool.stats().allocated, 1u);
}

TEST(BufferPool, HoldsAtMostItsBoundAndFreesTheOldestFirst) {
  BufferPool pool(3 * kMiB);
  std::vector<const uint8_t*> at;
  for (int i = 0; i < 5; ++i) {
    std::vector<uint8_t> b(kMiB);
    at.push_back(b.data());
    pool.Put(std::move(b));
    EXPECT_LE(pool.held_bytes(), pool.max_bytes());
  }
  EXPECT_EQ(pool.held_bytes(), 3 * kMiB);
  EXPECT_EQ(pool.held_buffers(), 3u);
  EXPECT_EQ(pool.stats().evicted, 2u);
  // The three kept are the last three put (at[2..4]); the first two were freed.
  std::vector<const uint8_t*> got;
  for (int i = 0; i < 3; ++i) got.push_back(pool.Take(kMiB).data());
  for (int i = 2; i < 5; ++i)
    EXPECT_NE(std::find(got.begin(), got.end(), at[i]), got.end()) << "buffer " << i;
  EXPECT_EQ(pool.held_buffers(), 0u);
}

TEST(BufferPool, KeepsNothingLargerThanItsBoundOrTooSmallToBeWorthIt) {
  BufferPool pool(kMiB);
  pool.Put(std::vector<uint8_t>(2 * kMiB));
  pool.Put(std::vector<uint8_t>(BufferPool::kMinPooledBytes - 1));
  EXPECT_EQ(pool.held_buffers(), 0u);
  EXPECT_EQ(pool.held_bytes(), 0u);

  BufferPool none(0);  // max_pooled_bytes = 0: pooling off
  none.Put(std::vector<uint8_t>(kMiB));
  EXPECT_EQ(none.held_buffers(), 0u);
}

TEST(BufferPool, ANewBufferIsZeroFilled) {
  BufferPool pool(kMiB);
  std::vector<uint8_t> b = pool.Take(BufferPool::kMinPooledBytes);
  ASSERT_EQ(b.size(), BufferPool::kMinPooledBytes);
  EXPECT_EQ(std::count(b.begin(), b.end(), 0), static_cast<long>(b.size()));
}

}  // namespace
}  // namespace kvwire::transport
