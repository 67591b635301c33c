// A fixed pool of worker threads for data-parallel loops: run(n, fn) calls fn(i) for i in [0, n)
// split over the workers and the calling thread, and returns when all are done.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvd {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Calls fn(thread_index, n_threads) once on each of the n threads (the caller is thread 0).
  void run_on_all(const std::function<void(int, int)>& fn);
  // Calls fn(begin, end) over contiguous chunks of [0, n), at most one chunk per thread.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
};

// Physical cores of this machine (falls back to hardware_concurrency).
int default_thread_count();

}  // namespace kvd
