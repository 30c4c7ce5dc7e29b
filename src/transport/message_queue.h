// A bounded, closable FIFO of messages shared by the backends (send and receive queues).
// Push blocks while more than `max_bytes` are queued (back-pressure); one message larger than
// the bound is still accepted when the queue is empty, so progress is always possible.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "kvwire/status.h"
#include "kvwire/transport.h"

namespace kvwire::transport {

class MessageQueue {
 public:
  explicit MessageQueue(uint64_t max_bytes) : max_bytes_(max_bytes) {}

  /// kCancelled once closed (with the close reason).
  Status Push(Message msg) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock,
                   [&] { return closed_ || bytes_ == 0 || bytes_ + msg.bytes() <= max_bytes_; });
    if (closed_) return close_reason_;
    bytes_ += msg.bytes();
    queue_.push_back(std::move(msg));
    not_empty_.notify_one();
    return Status::Ok();
  }

  /// Next message; kTimeout after `timeout_ms` (< 0: forever); the close reason once closed and
  /// drained (`drain_after_close` false: immediately once closed).
  Result<Message> Pop(int timeout_ms, bool drain_after_close = true) {
    std::unique_lock lock(mu_);
    auto ready = [&] { return closed_ || !queue_.empty(); };
    if (timeout_ms < 0) {
      not_empty_.wait(lock, ready);
    } else if (!not_empty_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
      return Status(StatusCode::kTimeout,
                    "nothing received in " + std::to_string(timeout_ms) + " ms");
    }
    if (queue_.empty() || (closed_ && !drain_after_close)) return close_reason_;
    Message m = std::move(queue_.front());
    queue_.pop_front();
    bytes_ -= m.bytes();
    NotifyIfHalfEmpty();
    return m;
  }

  /// Non-blocking pop: false when empty.
  bool TryPop(Message* out) {
    std::lock_guard lock(mu_);
    if (queue_.empty()) return false;
    *out = std::move(queue_.front());
    queue_.pop_front();
    bytes_ -= out->bytes();
    NotifyIfHalfEmpty();
    return true;
  }

  /// Wakes every waiter; later pushes fail with `reason` (first reason wins).
  void Close(Status reason) {
    std::lock_guard lock(mu_);
    if (!closed_) {
      closed_ = true;
      close_reason_ =
          reason.ok() ? Status(StatusCode::kCancelled, "connection closed") : std::move(reason);
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  bool closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }
  uint64_t bytes() const {
    std::lock_guard lock(mu_);
    return bytes_;
  }

 private:
  // Blocked pushers wake when the queue has drained to half its bound (or empty), not at every
  // pop: a producer faster than the consumer then refills the queue in a batch instead of
  // sleeping and waking once per message. No pusher waits for longer than it must in order to
  // avoid a deadlock: one whose message fits only below half (or only in an empty queue) is woken
  // exactly when it fits, and the others are woken by a pop that leaves half or less, which the
  // consumer reaches by draining.
  void NotifyIfHalfEmpty() {
    if (bytes_ <= max_bytes_ / 2) not_full_.notify_all();
  }

  const uint64_t max_bytes_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<Message> queue_;
  uint64_t bytes_ = 0;
  bool closed_ = false;
  Status close_reason_;
};

}  // namespace kvwire::transport
