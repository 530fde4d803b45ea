// The addon's one helper thread: every native job that runs on two threads (the attention layer's
// products and long attention, the experts, the head) shares its chunks with it.
#pragma once
#include <stdint.h>

#include <functional>

namespace sirocco {

/** One chunk of a job, by index; each chunk writes only its own outputs. */
using Chunk = std::function<void(int)>;

/**
 * run(0) … run(chunks − 1), each once: shared with the helper thread when `share` and there are two
 * chunks or more, else (or while another thread holds the helper) all on this thread. Chunks write
 * disjoint outputs, so the bits are the same either way.
 */
void runChunks(bool share, int chunks, const Chunk& run);

/** Chunks the helper thread has run in this process (tests check that a job reached it). */
uint64_t helperChunksRun();

}  // namespace sirocco
