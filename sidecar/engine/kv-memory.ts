/**
 * Where the KV caches' memory comes from (kv-cache.ts holds the caches themselves): a pool that
 * hands out zeroed Float32Array buffers and takes them back, carving them first from memory
 * reserved and faulted in at load (`serve --kv-cache-mb`), else allocating and recycling by length.
 */

/** What sizes a model's KV cache: its layers, KV heads and head dimension. */
export interface KvShape {
  layers: number;
  kvHeads: number;
  headDim: number;
}

/** The KV memory reserved at load, and the bytes of it that buffers hold now. */
export interface KvReserveStats {
  bytes: number;
  inUse: number;
}

/** Memory a runtime's pool keeps for reuse at most (beyond it, released buffers are dropped). */
const DEFAULT_POOL_BYTES = 256 * 2 ** 20;

/** Buffers carved from reserved memory start on a 64-byte line (16 floats). */
const ALIGN_FLOATS = 16;
/** Reserved memory comes in blocks of at most this size (one ArrayBuffer each). */
const RESERVE_BLOCK_BYTES = 512 * 2 ** 20;
/** Bytes one write touches to fault a page in (the smallest page size). */
const PAGE_BYTES = 4096;

interface FreeRange {
  /** In floats from the block's start. */
  start: number;
  end: number;
}

/**
 * KV memory allocated and written once, at load, then carved into buffers and given back: a first
 * write to fresh memory costs a page fault per 4 KiB, 6–13 µs each on the 2-core VMs measured, so
 * eight sequences crossing a capacity step together (their grown caches and the batch's past
 * rebuilt after them, ≈ 200 MB) stalled one decode step by ≈ 0.5 s. llama.cpp likewise allocates
 * its whole KV cache when a context is created, and vLLM its KV blocks at start-up. Buffers are
 * placed first-fit in a block's free ranges, which merge with their neighbours when buffers return.
 */
class ReservedKvMemory {
  private readonly blocks: Array<{ memory: Float32Array; free: FreeRange[]; used: Map<number, number> }> = [];

  constructor(bytes: number) {
    for (let left = bytes; left >= PAGE_BYTES; left -= RESERVE_BLOCK_BYTES) {
      const floats = Math.floor(Math.min(left, RESERVE_BLOCK_BYTES) / 4 / ALIGN_FLOATS) * ALIGN_FLOATS;
      const memory = new Float32Array(floats);
      for (let i = 0; i < floats; i += PAGE_BYTES / 4) memory[i] = 0; // fault every page in now
      this.blocks.push({ memory, free: [{ start: 0, end: floats }], used: new Map() });
    }
  }

  get bytes(): number {
    return this.blocks.reduce((sum, block) => sum + block.memory.byteLength, 0);
  }

  /** Bytes handed out and not yet returned. */
  get bytesInUse(): number {
    let floats = 0;
    for (const block of this.blocks) for (const length of block.used.values()) floats += length;
    return floats * 4;
  }

  /** A buffer of `length` floats (contents left over from earlier use), or null when none fits. */
  allocate(length: number): Float32Array | null {
    if (length <= 0) return null; // an empty view would share its offset with the next buffer there
    const size = Math.ceil(length / ALIGN_FLOATS) * ALIGN_FLOATS;
    for (const block of this.blocks) {
      const index = block.free.findIndex((range) => range.end - range.start >= size);
      if (index < 0) continue;
      const range = block.free[index]!;
      const start = range.start;
      range.start += size;
      if (range.start === range.end) block.free.splice(index, 1);
      block.used.set(start, size);
      return block.memory.subarray(start, start + length);
    }
    return null;
  }

  /** Whether `buffer` lies in this memory (handed out now or before). */
  owns(buffer: Float32Array): boolean {
    return this.blocks.some((block) => block.memory.buffer === buffer.buffer);
  }

  /** Takes back a buffer `allocate` returned; one returned already, or never handed out, is ignored. */
  release(buffer: Float32Array): void {
    const block = this.blocks.find((b) => b.memory.buffer === buffer.buffer);
    const start = buffer.byteOffset / 4;
    const size = block?.used.get(start);
    if (!block || size === undefined) return;
    block.used.delete(start);
    const end = start + size;
    const { free } = block;
    let index = free.findIndex((range) => range.start > start);
    if (index < 0) index = free.length;
    const before = free[index - 1];
    const after = free[index];
    if (before?.end === start && after?.start === end) {
      before.end = after.end;
      free.splice(index, 1);
    } else if (before?.end === start) before.end = end;
    else if (after?.start === end) after.start = start;
    else free.splice(index, 0, { start, end });
  }
}

/** Tokens per sequence `--kv-cache-mb auto` reserves room for. */
const AUTO_RESERVE_TOKENS = 256;
const AUTO_RESERVE_MAX_BYTES = 2 ** 30;

/** Bytes one cached token takes in every layer (keys and values, fp32). */
export function kvBytesPerToken({ layers, kvHeads, headDim }: KvShape): number {
  return layers * 2 * kvHeads * headDim * 4;
}

/**
 * The automatic reserve: `sequences` caches of AUTO_RESERVE_TOKENS tokens, twice over (each
 * sequence's own buffers and the batch's past tensors copied from them), at most 1 GiB.
 * 1.0B bench shape, 16 sequences: 512 MiB; Mistral 7B / Mixtral: the 1 GiB cap (256 KiB per token).
 */
export function autoKvReserveBytes(shape: KvShape, sequences: number): number {
  return Math.min(AUTO_RESERVE_MAX_BYTES, 2 * sequences * AUTO_RESERVE_TOKENS * kvBytesPerToken(shape));
}

export interface KvPoolOptions {
  /** Bytes of outgrown or released buffers kept for reuse beyond the reserve (default 256 MiB). */
  keepBytes?: number;
  /** Bytes allocated and faulted in up front, from which buffers are carved first (default none). */
  reserveBytes?: number;
}

/**
 * Where the caches' buffers come from and go back to. With a reserve, from memory faulted in at
 * load (see ReservedKvMemory); beyond it, or without one, from new allocations, with outgrown and
 * released ones kept by length (up to `keepBytes`) for the next cache or batch of that size.
 * Buffers are zeroed when taken: unused slots are masked and must stay finite.
 */
export class KvBufferPool {
  private readonly free = new Map<number, Float32Array[]>();
  private heldBytes = 0;
  private readonly limitBytes: number;
  private readonly reserved: ReservedKvMemory | null;

  constructor({ keepBytes = DEFAULT_POOL_BYTES, reserveBytes = 0 }: KvPoolOptions = {}) {
    this.limitBytes = keepBytes;
    this.reserved = reserveBytes >= PAGE_BYTES ? new ReservedKvMemory(reserveBytes) : null;
  }

  /** Bytes of new allocations kept for reuse. */
  get bytes(): number {
    return this.heldBytes;
  }

  /** The reserve's size and how much of it buffers hold now. */
  get reserve(): KvReserveStats {
    return { bytes: this.reserved?.bytes ?? 0, inUse: this.reserved?.bytesInUse ?? 0 };
  }

  /** A zeroed buffer of `length` floats: from the reserve, else a kept one, else a new one. */
  take(length: number): Float32Array {
    const reserved = this.reserved?.allocate(length);
    if (reserved) return reserved.fill(0);
    const kept = this.free.get(length)?.pop();
    if (!kept) return new Float32Array(length);
    this.heldBytes -= kept.byteLength;
    return kept.fill(0);
  }

  /** Takes `buffer` back: into the reserve it came from, else kept unless that would pass the limit. */
  give(buffer: Float32Array): void {
    if (this.reserved?.owns(buffer)) {
      this.reserved.release(buffer);
      return;
    }
    if (buffer.length === 0 || this.heldBytes + buffer.byteLength > this.limitBytes) return;
    const list = this.free.get(buffer.length);
    if (list) list.push(buffer);
    else this.free.set(buffer.length, [buffer]);
    this.heldBytes += buffer.byteLength;
  }

  clear(): void {
    this.free.clear();
    this.heldBytes = 0;
  }
}
