/**
 * Per-sequence KV cache kept in JS, and the per-step batch layout built from it: the past tensors,
 * the additive attention mask (causality, sliding window, batch padding) and each token's
 * absolute position (the RoPE table's row, engine/rope.ts).
 *
 * Each sequence holds, per layer, a key and a value buffer [kv_heads, capacity, head_dim] whose
 * first `entries` slots are valid; capacity grows by a quarter at a time. The graphs take the past
 * as an input and return only the step's NEW keys/values, which are written into the buffers at
 * commit — so a decode step copies O(new tokens), not O(context): a single sequence passes its
 * whole buffer (unused slots are zeros, masked out) without any copy; a batch uses
 * [B, kv_heads, P, head_dim] tensors (P = the largest capacity) kept from step to step, into which
 * each sequence's new slots are copied (BatchedPast).
 *
 * Step layout with B entries: past slots [0, P), new slots [P, P+S) with S = the most new tokens.
 * The rows a step feeds the matmuls (B×S) are a multiple of the runtime's row multiple,
 * MIN_MATMUL_ROWS for onnxruntime's graphs: MatMulNBits computes rows in pairs and sends a lone
 * trailing row through a kernel that rounds differently, so otherwise a sequence's logits would
 * depend on its place in the batch. A step with several new tokens rounds S up; an odd decode batch
 * gets one padding entry (masked, never stored). The native layers compute each row on its own and
 * take a multiple of 1: no padding.
 *
 * A sliding-window model never reads keys older than W-1 positions behind the newest query, so its
 * buffers are compacted to the last W-1 entries (in batches of TRIM_SLACK, to copy rarely).
 *
 * All these buffers come from a KvBufferPool (kv-memory.ts).
 */
import { MIN_MATMUL_ROWS } from '../formats/quantize.ts';
import { KvBufferPool, type KvShape } from './kv-memory.ts';

export interface CacheShape extends KvShape {
  /** Sliding window W (keys a query sees, itself included), or null for full attention. */
  window: number | null;
}

const TRIM_SLACK = 64;
const MIN_CAPACITY = 64;
export class SequenceCache {
  /** Tokens processed so far (absolute position of the next token). */
  length = 0;
  /** Valid slots per layer; the oldest is at absolute position `length - entries`. */
  entries = 0;
  /** Slots allocated per head. */
  capacity = 0;
  /** Bumped whenever valid slots move (compaction, release), so copies of them are known stale. */
  layoutVersion = 0;
  keys: Float32Array[];
  values: Float32Array[];

  constructor(
    readonly id: number,
    readonly shape: CacheShape,
    private readonly pool = new KvBufferPool({ keepBytes: 0 }),
  ) {
    this.keys = Array.from({ length: shape.layers }, () => new Float32Array(0));
    this.values = Array.from({ length: shape.layers }, () => new Float32Array(0));
  }

  /** Bytes held by this sequence's cache. */
  get bytes(): number {
    return [...this.keys, ...this.values].reduce((sum, buffer) => sum + buffer.byteLength, 0);
  }

  /** Grows every buffer to hold at least `slots` entries, keeping the valid ones. */
  reserve(slots: number): void {
    if (slots <= this.capacity) return;
    const { kvHeads, headDim } = this.shape;
    // +25% rounded to 64 slots: attention runs over the whole buffer, so slack costs compute.
    const capacity = Math.ceil(Math.max(slots, this.capacity * 1.25, MIN_CAPACITY) / MIN_CAPACITY) * MIN_CAPACITY;
    const grow = (old: Float32Array) => {
      const out = this.pool.take(kvHeads * capacity * headDim);
      for (let h = 0; h < kvHeads; h++)
        out.set(old.subarray(h * this.capacity * headDim, (h * this.capacity + this.entries) * headDim), h * capacity * headDim);
      this.pool.give(old);
      return out;
    };
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
    this.capacity = capacity;
  }

  /** Keeps only the newest `keep` entries, moved to the front of each buffer. */
  compact(keep: number): void {
    const { kvHeads, headDim } = this.shape;
    const drop = this.entries - keep;
    if (drop <= 0) return;
    for (const buffer of [...this.keys, ...this.values]) {
      for (let h = 0; h < kvHeads; h++) {
        const head = h * this.capacity * headDim;
        buffer.copyWithin(head, head + drop * headDim, head + this.entries * headDim);
        buffer.fill(0, head + keep * headDim, head + this.entries * headDim); // masked slots stay finite
      }
    }
    this.entries = keep;
    this.layoutVersion++;
  }

  release(): void {
    for (const buffer of [...this.keys, ...this.values]) this.pool.give(buffer);
    this.keys = this.keys.map(() => new Float32Array(0));
    this.values = this.values.map(() => new Float32Array(0));
    this.entries = 0;
    this.capacity = 0;
    this.layoutVersion++;
  }
}

export interface StepEntry {
  cache: SequenceCache;
  tokens: number[];
}

/**
 * The batched past tensors [B, kv_heads, P, head_dim] (per layer, keys and values) of the last
 * multi-entry step, kept for the next one: a decode loop over the same sequences then copies only
 * the slots each sequence gained since — O(B) per step — instead of every valid prefix again,
 * O(B × context), which at 16 streams cost more than the attention itself. Rebuilt when the
 * batch, P or a cache's layout changes; dropped when a lone sequence runs.
 */
export class BatchedPast {
  private key = '';
  /** Index layer * 2 (+1 for values). */
  private buffers: Float32Array[] = [];
  /** Slots copied so far, per entry. */
  private copied: number[] = [];

  constructor(
    private readonly shape: CacheShape,
    private readonly pool = new KvBufferPool({ keepBytes: 0 }),
  ) {}

  /** Brings the buffers up to date with `step`'s caches and returns them. */
  sync(step: BatchStep): Float32Array[] {
    const { layers, kvHeads, headDim } = this.shape;
    const { entries, past } = step;
    const key = `${step.batch}:${past}:${entries.map((e) => `${e.cache.id}.${e.cache.layoutVersion}`).join(',')}`;
    // An unchanged key names the same entries in the same order, so `copied` has a slot for each.
    if (key !== this.key || entries.some((e, b) => e.cache.entries < this.copied[b]!)) {
      this.key = key;
      for (const buffer of this.buffers) this.pool.give(buffer);
      this.buffers = Array.from({ length: layers * 2 }, () => this.pool.take(step.batch * kvHeads * past * headDim));
      this.copied = entries.map(() => 0);
    }
    entries.forEach(({ cache }, b) => {
      const from = this.copied[b]!;
      if (cache.entries === from) return;
      // Every cache has this shape's `layers` key and value buffers; `buffers` holds 2 × layers.
      for (let layer = 0; layer < layers; layer++) {
        for (const [kind, source] of [cache.keys[layer]!, cache.values[layer]!].entries()) {
          const target = this.buffers[layer * 2 + kind]!;
          for (let h = 0; h < kvHeads; h++) {
            const start = h * cache.capacity * headDim;
            target.set(
              source.subarray(start + from * headDim, start + cache.entries * headDim),
              ((b * kvHeads + h) * past + from) * headDim,
            );
          }
        }
      }
      this.copied[b] = cache.entries;
    });
    return this.buffers;
  }

  /** Hands the buffers back to the pool. */
  clear(): void {
    this.key = '';
    for (const buffer of this.buffers) this.pool.give(buffer);
    this.buffers = [];
    this.copied = [];
  }
}

/** `n` rounded up to a multiple of `m`. */
function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

export class BatchStep {
  /** Batch rows B: the entries, plus one padding entry when needed for an even row count. */
  readonly batch: number;
  /** Padded new-token count S (B×S is a multiple of the row multiple). */
  readonly seq: number;
  /** Past slots P: the largest buffer capacity in the step (a lone sequence's buffer as is). */
  readonly past: number;
  private pending: Array<{ layer: number; kind: 'keys' | 'values'; rows: Float32Array }> = [];
  /** Batched past tensors (several entries), index layer * 2 (+1 for values). */
  private batchedPast: Float32Array[] | null = null;

  /**
   * @param reuse the runtime's buffers from the previous step (else this step builds its own)
   * @param rowMultiple B×S must be a multiple of this (the header)
   */
  constructor(
    readonly entries: StepEntry[],
    private readonly shape: CacheShape,
    reuse?: BatchedPast,
    rowMultiple = MIN_MATMUL_ROWS,
  ) {
    const tokens = entries.reduce((most, e) => Math.max(most, e.tokens.length), 0);
    // Row counts a multiple of rowMultiple (see the header): pad S when there is one entry or several
    // new tokens, else (a decode batch) pad B — one extra row either way, at a multiple of 2.
    const padTokens = entries.length === 1 || tokens > 1;
    this.seq = padTokens ? roundUp(tokens, rowMultiple) : 1;
    this.batch = padTokens ? entries.length : roundUp(entries.length, rowMultiple);
    // Slot layout decides rounding: onnxruntime's vectorised softmax sums lanes by slot position.
    // Using the largest buffer capacity as P gives the sequence that owns it exactly the layout
    // it has alone, so its output does not change when others join its step.
    this.past = entries.reduce((most, e) => Math.max(most, e.cache.capacity), 0);
    if (this.batch === 1)
      reuse?.clear(); // a lone sequence passes its own buffers
    else this.batchedPast = (reuse ?? new BatchedPast(shape)).sync(this);
  }

  get total(): number {
    return this.past + this.seq;
  }

  /** Token ids [B, S], padding (positions and entries) with 0: masked out and never read back. */
  inputIds(): BigInt64Array {
    const ids = new BigInt64Array(this.batch * this.seq);
    for (const [b, e] of this.entries.entries()) {
      for (const [i, t] of e.tokens.entries()) ids[b * this.seq + i] = BigInt(t);
    }
    return ids;
  }

  /** Each new token's absolute position [B, S] (the RoPE table's row); padding 0, masked out. */
  positions(): BigInt64Array {
    const positions = new BigInt64Array(this.batch * this.seq);
    this.entries.forEach((e, b) => {
      for (let i = 0; i < e.tokens.length; i++) positions[b * this.seq + i] = BigInt(e.cache.length + i);
    });
    return positions;
  }

  /** One past the highest position any entry reaches in this step: the RoPE table rows it needs. */
  get positionCount(): number {
    return this.entries.reduce((most, e) => Math.max(most, e.cache.length + e.tokens.length), 1);
  }

  /**
   * Additive mask [B, 1, S, P+S]: 0 where a query may attend, -inf elsewhere (unused and padding
   * slots included). A padding query row attends only to its own slot so no row is all -inf
   * (which would produce NaN).
   */
  mask(): Float32Array {
    const { batch, seq, past, total } = this;
    const window = this.shape.window;
    const mask = new Float32Array(batch * seq * total).fill(-Infinity);
    this.entries.forEach((e, b) => {
      const firstCached = e.cache.length - e.cache.entries;
      for (let i = 0; i < seq; i++) {
        const row = (b * seq + i) * total;
        if (i >= e.tokens.length) {
          mask[row + past + i] = 0;
          continue;
        }
        const query = e.cache.length + i;
        const oldest = window === null ? 0 : query - window + 1;
        for (let j = Math.max(0, oldest - firstCached); j < e.cache.entries; j++) mask[row + j] = 0;
        for (let j = 0; j <= i; j++) if (query - i + j >= oldest) mask[row + past + j] = 0;
      }
    });
    for (let b = this.entries.length; b < batch; b++) for (let i = 0; i < seq; i++) mask[(b * seq + i) * total + past + i] = 0; // padding entries
    return mask;
  }

  /**
   * One layer's past keys or values [B, kv_heads, P, head_dim]; a lone sequence's buffer as is.
   * @param layer in [0, shape.layers): the runtime loads only stores with that many layer graphs
   */
  pastTensor(layer: number, kind: 'keys' | 'values'): Float32Array {
    // No batched past means a batch of one: exactly one entry.
    if (!this.batchedPast) return this.entries[0]!.cache[kind][layer]!;
    // Batches: each valid prefix at its entry's rows; unused slots stay zero (masked).
    return this.batchedPast[layer * 2 + (kind === 'values' ? 1 : 0)]!;
  }

  /**
   * Takes one layer's new keys or values [B, kv_heads, S, head_dim]. Nothing changes in the caches
   * until `commit`, so a step that fails half-way (a bad expert file in layer 7) leaves every
   * sequence as it was.
   */
  store(layer: number, kind: 'keys' | 'values', rows: Float32Array): void {
    this.pending.push({ layer, kind, rows });
  }

  /** Appends the stored rows, advances each sequence and compacts sliding-window caches. */
  commit(): void {
    const { kvHeads, headDim, window } = this.shape;
    const { seq } = this;
    for (const { cache, tokens } of this.entries) cache.reserve(cache.entries + tokens.length);
    for (const { layer, kind, rows } of this.pending) {
      this.entries.forEach(({ cache, tokens }, b) => {
        const buffer = cache[kind][layer]!; // layer < shape.layers, as for pastTensor
        for (let h = 0; h < kvHeads; h++) {
          const from = (b * kvHeads + h) * seq * headDim;
          buffer.set(rows.subarray(from, from + tokens.length * headDim), (h * cache.capacity + cache.entries) * headDim);
        }
      });
    }
    this.pending = [];
    for (const { cache, tokens } of this.entries) {
      cache.length += tokens.length;
      cache.entries += tokens.length;
      if (window !== null && cache.entries > window - 1 + TRIM_SLACK) cache.compact(window - 1);
    }
  }
}
