// The backends' bounded message queue: back-pressure, and when a blocked Push is woken (once the
// queue has drained to half its bound, or at once when its message fits only there).
#include "transport/message_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace kvwire::transport {
namespace {

Message Sized(size_t bytes) {
  Message m;
  m.kind = MessageKind::kData;
  m.payload.assign(bytes, 0);
  return m;
}

// Pushes `bytes` on a thread; `done` turns true once Push returned.
struct BlockedPush {
  std::atomic<bool> done{false};
  std::thread thread;
  BlockedPush(MessageQueue& q, size_t bytes) {
    thread = std::thread([&q, bytes, this] {
      EXPECT_TRUE(q.Push(Sized(bytes)).ok());
      done = true;
    });
  }
  ~BlockedPush() {
    if (thread.joinable()) thread.join();
  }
  // True when the push finished within `ms`.
  bool FinishesWithin(int ms) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!done && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return done;
  }
};

TEST(MessageQueue, PushBlocksPastTheBoundAndResumesOnceHalfDrained) {
  MessageQueue q(100);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.Push(Sized(30)).ok());  // 90 queued
  BlockedPush p(q, 20);                                               // 110 > 100: blocks
  EXPECT_FALSE(p.FinishesWithin(50));
  Message m;
  ASSERT_TRUE(q.TryPop(&m));  // 60 queued: it would fit, but the queue is over half full
  EXPECT_FALSE(p.FinishesWithin(50));
  auto popped = q.Pop(0);  // 30 queued: half drained, the pusher wakes
  ASSERT_TRUE(popped.ok());
  EXPECT_TRUE(p.FinishesWithin(5000));
  EXPECT_EQ(q.bytes(), 50u);
}

TEST(MessageQueue, AMessageThatFitsOnlyBelowHalfIsWokenWhenItFits) {
  MessageQueue q(100);
  ASSERT_TRUE(q.Push(Sized(40)).ok());
  ASSERT_TRUE(q.Push(Sized(40)).ok());
  BlockedPush p(q, 70);  // fits only with <= 30 queued
  EXPECT_FALSE(p.FinishesWithin(50));
  Message m;
  ASSERT_TRUE(q.TryPop(&m));  // 40 queued: below half, woken, but 110 still does not fit
  EXPECT_FALSE(p.FinishesWithin(50));
  ASSERT_TRUE(q.TryPop(&m));  // empty
  EXPECT_TRUE(p.FinishesWithin(5000));
  EXPECT_EQ(q.bytes(), 70u);
}

TEST(MessageQueue, AMessageLargerThanTheBoundWaitsForAnEmptyQueue) {
  MessageQueue q(100);
  ASSERT_TRUE(q.Push(Sized(10)).ok());
  BlockedPush p(q, 250);
  EXPECT_FALSE(p.FinishesWithin(50));
  Message m;
  ASSERT_TRUE(q.TryPop(&m));
  EXPECT_TRUE(p.FinishesWithin(5000));
  EXPECT_EQ(q.bytes(), 250u);
}

TEST(MessageQueue, CloseWakesABlockedPushWithTheReason) {
  MessageQueue q(100);
  ASSERT_TRUE(q.Push(Sized(100)).ok());
  std::atomic<bool> failed{false};
  std::thread t([&] {
    Status s = q.Push(Sized(10));
    failed = !s.ok() && s.message().find("peer went away") != std::string::npos;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.Close(Status(StatusCode::kIoError, "peer went away"));
  t.join();
  EXPECT_TRUE(failed);
}

}  // namespace
}  // namespace kvwire::transport
