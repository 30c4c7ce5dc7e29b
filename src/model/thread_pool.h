// A small fixed pool of worker threads for the forward pass: ParallelFor over task indices.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvwire::model {

/// Runs fn(task) for task in [0, tasks) on the calling thread plus threads - 1 workers. Tasks
/// are claimed dynamically, so a task must compute its outputs completely by itself (that is
/// what keeps results independent of the thread count). Concurrent ParallelFor calls from
/// different threads are serialized.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void ParallelFor(size_t tasks, const std::function<void(size_t task)>& fn);

 private:
  void WorkerLoop();
  void RunTasks();

  std::mutex call_mutex_;  // one ParallelFor at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t tasks_ = 0;
  size_t next_ = 0;      // next unclaimed task (guarded by mutex_)
  size_t finished_ = 0;  // tasks completed
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace kvwire::model
