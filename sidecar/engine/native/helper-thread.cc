// The addon's helper thread. A job is cut into chunks that the calling thread and the helper claim
// from one counter: the caller starts on them at once, and a helper that wakes late only takes what
// is left, so a job is never slower than on one thread.
//
// Between jobs the helper polls for kPollMicros before it sleeps on a condition variable. A decode
// step publishes jobs a few tens of microseconds apart (a layer's products, its experts, the head),
// and a wake-up from sleep costs about as long as a small job, so a sleeping helper joined each one
// late. Every native job goes through this one thread, so its polling takes the second core from
// nothing of ours; after a step it sleeps.

#include "helper-thread.h"

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace sirocco {
namespace {

/** How long the helper polls for the next job before it sleeps (longer than the gaps within a step). */
constexpr int kPollMicros = 500;

class HelperThread {
 public:
  static HelperThread& instance() {
    static HelperThread* helper = new HelperThread();  // never destroyed: it sleeps through the process's exit
    return *helper;
  }

  /** One caller at a time: a caller that finds the helper taken (another JS thread) runs alone. */
  bool tryAcquire() { return !busy_.exchange(true, std::memory_order_acquire); }
  void release() { busy_.store(false, std::memory_order_release); }

  /** Runs run(0) … run(chunks − 1), each once, on this thread and the helper; returns when all are done. */
  void share(int chunks, const Chunk& run) {
    uint32_t job;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job = job_ + 1;  // wraps around: only equality with the job in claim_ matters
      run_ = &run;
      chunks_ = chunks;
      claim_.store(static_cast<uint64_t>(job) << 32, std::memory_order_seq_cst);
      job_ = job;
      published_.store(job, std::memory_order_release);
    }
    wake_.notify_one();
    for (int chunk; (chunk = claim(job, chunks)) >= 0;) run(chunk);
    // Every chunk is claimed: wait for one the helper may still be running.
    while (inFlight_.load(std::memory_order_seq_cst) != 0) _mm_pause();
  }

  uint64_t chunksRun() const { return chunksRun_.load(std::memory_order_relaxed); }

 private:
  HelperThread() { std::thread([this] { loop(); }).detach(); }

  /** The next chunk of `job`, or −1 when none is left (or the job is over). */
  int claim(uint32_t job, int chunks) {
    uint64_t word = claim_.load(std::memory_order_seq_cst);
    while (static_cast<uint32_t>(word >> 32) == job && static_cast<int>(word & 0xffffffff) < chunks) {
      if (claim_.compare_exchange_weak(word, word + 1, std::memory_order_seq_cst)) return static_cast<int>(word & 0xffffffff);
    }
    return -1;
  }

  /** Returns once a job after `seen` is published, or after kPollMicros without one. */
  void pollForJob(uint32_t seen) const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kPollMicros);
    for (int spins = 0; published_.load(std::memory_order_acquire) == seen; spins++) {
      _mm_pause();
      if (spins % 64 == 63 && std::chrono::steady_clock::now() > until) return;
    }
  }

  void loop() {
    uint32_t seen = 0;
    for (;;) {
      const Chunk* run;
      uint32_t job;
      int chunks;
      pollForJob(seen);
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return job_ != seen; });
        seen = job = job_;
        run = run_;
        chunks = chunks_;
      }
      for (;;) {
        // Counted before claiming: a caller that finds no chunk left waits for this one, and so
        // keeps `run` alive until then.
        inFlight_.fetch_add(1, std::memory_order_seq_cst);
        const int chunk = claim(job, chunks);
        if (chunk >= 0) {
          (*run)(chunk);
          chunksRun_.fetch_add(1, std::memory_order_relaxed);
        }
        inFlight_.fetch_sub(1, std::memory_order_seq_cst);
        if (chunk < 0) break;
      }
    }
  }

  std::atomic<bool> busy_{false};
  /** (job << 32) | next chunk. */
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> inFlight_{0};
  std::atomic<uint64_t> chunksRun_{0};
  /** The last job published, polled without the mutex. */
  std::atomic<uint32_t> published_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  uint32_t job_ = 0;
  const Chunk* run_ = nullptr;
  int chunks_ = 0;
};

}  // namespace

void runChunks(bool share, int chunks, const Chunk& run) {
  if (share && chunks >= 2 && HelperThread::instance().tryAcquire()) {
    HelperThread::instance().share(chunks, run);
    HelperThread::instance().release();
    return;
  }
  for (int chunk = 0; chunk < chunks; chunk++) run(chunk);
}

uint64_t helperChunksRun() { return HelperThread::instance().chunksRun(); }

}  // namespace sirocco
