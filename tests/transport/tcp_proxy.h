// Test helper shared by the transport tests (session_test.cpp: cut connections; tls_test.cpp:
// what crosses the wire).
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kvwire::testing_net {

// A TCP proxy on 127.0.0.1 that forwards to `target`, can cut every connection it carries, and
// (with `record_upstream`) keeps a copy of every byte the clients sent: a tap on the wire.
class CuttableProxy {
 public:
  explicit CuttableProxy(uint16_t target, bool record_upstream = false)
      : target_(target), record_upstream_(record_upstream) {
    lfd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(lfd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~CuttableProxy() {
    stop_ = true;
    ::shutdown(lfd_, SHUT_RDWR);
    ::close(lfd_);
    acceptor_.join();
    CutAll();
    for (auto& t : pumps_) t.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  /// Cuts every open connection once `bytes` more bytes went client -> server.
  void CutAfter(uint64_t bytes) { cut_at_ = forwarded_.load() + bytes; }
  /// While on, nothing goes server -> client (acks and completions are held, then lost on a cut).
  void HoldReplies(bool on) { hold_replies_ = on; }
  int connections() const { return connections_; }
  /// New connections go to `port` from now on (open ones stay where they are).
  void SetTarget(uint16_t port) { target_ = port; }
  /// While on, from the next cut (CutAfter, CutAll) on, every new connection is closed as soon
  /// as it is accepted: the receiver is unreachable. Off: connections go through again.
  void RefuseAfterCut(bool on) {
    refuse_after_cut_ = on;
    if (!on) refusing_ = false;
  }
  bool refusing() const { return refusing_; }
  /// When the last cut happened.
  std::chrono::steady_clock::time_point last_cut() {
    std::lock_guard lock(mu_);
    return last_cut_;
  }
  int refused() const { return refused_; }
  /// Flips a bit of the last byte of the first occurrence of `pattern` (at least two bytes) that
  /// a client sends from now on, as a damaged link would.
  void CorruptFirst(std::vector<uint8_t> pattern) {
    std::lock_guard lock(mu_);
    corrupt_ = std::move(pattern);
  }
  bool corrupted() const { return corrupted_; }
  /// What the clients sent so far (empty unless constructed with record_upstream).
  std::vector<uint8_t> upstream_bytes() {
    std::lock_guard lock(mu_);
    return upstream_;
  }
  void CutAll() {
    if (refuse_after_cut_) refusing_ = true;
    std::lock_guard lock(mu_);
    last_cut_ = std::chrono::steady_clock::now();
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }

 private:
  void AcceptLoop() {
    for (;;) {
      int c = ::accept(lfd_, nullptr, nullptr);
      if (c < 0 || stop_) {
        if (c >= 0) ::close(c);
        return;
      }
      if (refusing_) {
        ++refused_;
        ::close(c);
        continue;
      }
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(target_);
      if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(c);
        ::close(s);
        continue;
      }
      ++connections_;
      std::lock_guard lock(mu_);
      fds_.push_back(c);
      fds_.push_back(s);
      pumps_.emplace_back([this, c, s] { Pump(c, s, true); });
      pumps_.emplace_back([this, c, s] { Pump(s, c, false); });
    }
  }
  void Pump(int from, int to, bool upstream) {
    std::vector<char> buf(64 << 10);
    std::vector<char> tail;  // the last bytes before buf, for a pattern across two reads
    for (;;) {
      ssize_t n = ::read(from, buf.data(), buf.size());
      if (n <= 0) break;
      if (upstream) Corrupt(buf.data(), static_cast<size_t>(n), &tail);
      if (upstream && record_upstream_) {
        std::lock_guard lock(mu_);
        upstream_.insert(upstream_.end(), buf.begin(), buf.begin() + n);
      }
      if (upstream) {
        const uint64_t before = forwarded_.fetch_add(n);
        if (cut_at_ && before + n >= cut_at_) {
          cut_at_ = 0;
          CutAll();
          break;
        }
      }
      while (!upstream && hold_replies_ && !stop_)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (::send(to, buf.data(), n, MSG_NOSIGNAL) != n) break;
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  }

  void Corrupt(char* data, size_t n, std::vector<char>* tail) {
    std::lock_guard lock(mu_);
    if (corrupt_.empty()) return;
    std::vector<char> window(*tail);
    window.insert(window.end(), data, data + n);
    auto at = std::search(window.begin(), window.end(), corrupt_.begin(), corrupt_.end(),
                          [](char a, uint8_t b) { return static_cast<uint8_t>(a) == b; });
    if (at != window.end()) {
      // The pattern's last byte is in this read: a match within the tail was seen last time.
      data[(at - window.begin()) + corrupt_.size() - 1 - tail->size()] ^= 0x10;
      corrupt_.clear();
      corrupted_ = true;
      return;
    }
    const size_t keep = std::min(window.size(), corrupt_.size() - 1);
    tail->assign(window.end() - static_cast<long>(keep), window.end());
  }

  std::atomic<uint16_t> target_;
  uint16_t port_ = 0;
  const bool record_upstream_;
  int lfd_ = -1;
  std::atomic<bool> stop_{false}, hold_replies_{false};
  std::atomic<uint64_t> forwarded_{0}, cut_at_{0};
  std::atomic<int> connections_{0}, refused_{0};
  std::chrono::steady_clock::time_point last_cut_{};
  std::atomic<bool> refuse_after_cut_{false}, refusing_{false};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<uint8_t> upstream_;
  std::vector<uint8_t> corrupt_;  // under mu_
  std::atomic<bool> corrupted_{false};
  std::vector<std::thread> pumps_;
  std::thread acceptor_;
};

}  // namespace kvwire::testing_net
