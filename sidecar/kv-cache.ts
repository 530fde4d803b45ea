/**
 * Per-sequence KV cache kept in JS, and the per-step batch layout built from it: padded past
 * tensors, the additive attention mask (causality, sliding window, batch padding) and the RoPE
 * tables for each token's absolute position.
 *
 * Layout of one step with B entries: past slots [0, P) hold each entry's cached keys (left-aligned,
 * zero padded to P = the longest cache), new slots [P, P+S) hold its new tokens (padded to S = the
 * most new tokens). A sliding-window model never reads keys older than W-1 positions behind the
 * newest query, so its cache is trimmed (in batches of TRIM_SLACK to avoid copying every step).
 */

export interface CacheShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Sliding window W (keys a query sees, itself included), or null for full attention. */
  window: number | null;
}

const TRIM_SLACK = 64;

export class SequenceCache {
  /** Tokens processed so far (absolute position of the next token). */
  length = 0;
  /** Entries held per layer; the oldest is at absolute position `length - entries`. */
  entries = 0;
  keys: Float32Array[];
  values: Float32Array[];

  constructor(
    readonly id: number,
    readonly shape: CacheShape,
  ) {
    this.keys = Array.from({ length: shape.layers }, () => new Float32Array(0));
    this.values = Array.from({ length: shape.layers }, () => new Float32Array(0));
  }

  /** Bytes held by this sequence's cache. */
  get bytes(): number {
    return this.keys.reduce((sum, k, i) => sum + k.byteLength + this.values[i].byteLength, 0);
  }

  release(): void {
    this.keys = this.keys.map(() => new Float32Array(0));
    this.values = this.values.map(() => new Float32Array(0));
    this.entries = 0;
  }
}

export interface StepEntry {
  cache: SequenceCache;
  tokens: number[];
}

export class BatchStep {
  readonly batch: number;
  /** Padded new-token count S. */
  readonly seq: number;
  /** Padded past length P. */
  readonly past: number;
  private pending: Array<{ cache: SequenceCache; layer: number; kind: 'keys' | 'values'; data: Float32Array }> = [];

  constructor(
    readonly entries: StepEntry[],
    private readonly shape: CacheShape,
  ) {
    this.batch = entries.length;
    this.seq = Math.max(...entries.map((e) => e.tokens.length));
    this.past = Math.max(...entries.map((e) => e.cache.entries));
  }

  get total(): number {
    return this.past + this.seq;
  }

  /** Token ids [B, S], padding with 0 (masked out and never read back). */
  inputIds(): BigInt64Array {
    const ids = new BigInt64Array(this.batch * this.seq);
    this.entries.forEach((e, b) => e.tokens.forEach((t, i) => (ids[b * this.seq + i] = BigInt(t))));
    return ids;
  }

  /** cos/sin [B, S, head_dim/2] for rotate-half RoPE, computed in float64 per absolute position. */
  rope(theta: number): { cos: Float32Array; sin: Float32Array } {
    const half = this.shape.headDim / 2;
    const cos = new Float32Array(this.batch * this.seq * half);
    const sin = new Float32Array(cos.length);
    const inverseFrequency = Array.from({ length: half }, (_, i) => theta ** ((-2 * i) / this.shape.headDim));
    this.entries.forEach((e, b) => {
      for (let i = 0; i < this.seq; i++) {
        const position = e.cache.length + i;
        const base = (b * this.seq + i) * half;
        for (let f = 0; f < half; f++) {
          const angle = position * inverseFrequency[f];
          cos[base + f] = Math.cos(angle);
          sin[base + f] = Math.sin(angle);
        }
      }
    });
    return { cos, sin };
  }

  /**
   * Additive mask [B, 1, S, P+S]: 0 where a query may attend, -inf elsewhere. A padding query row
   * attends only to its own slot so no row is all -inf (which would produce NaN).
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
        for (let j = 0; j < e.cache.entries; j++) if (firstCached + j >= oldest) mask[row + j] = 0;
        for (let j = 0; j <= i; j++) if (query - i + j >= oldest) mask[row + past + j] = 0;
      }
    });
    return mask;
  }

  /** One layer's past keys or values [B, kv_heads, P, head_dim], zero padded. */
  pastTensor(layer: number, kind: 'keys' | 'values'): Float32Array {
    const { kvHeads, headDim } = this.shape;
    if (this.batch === 1) return this.entries[0].cache[kind][layer];
    const out = new Float32Array(this.batch * kvHeads * this.past * headDim);
    this.entries.forEach((e, b) => {
      const source = e.cache[kind][layer];
      const rows = e.cache.entries * headDim;
      for (let h = 0; h < kvHeads; h++) {
        out.set(source.subarray(h * rows, (h + 1) * rows), (b * kvHeads + h) * this.past * headDim);
      }
    });
    return out;
  }

  /**
   * Takes one layer's present [B, kv_heads, P+S, head_dim] for each sequence: its cached slots plus
   * its real new tokens, contiguous per head. Nothing changes in the caches until `commit`, so a
   * step that fails half-way (a bad expert file in layer 7) leaves every sequence as it was.
   */
  store(layer: number, kind: 'keys' | 'values', present: Float32Array): void {
    const { kvHeads, headDim } = this.shape;
    const { past, total } = this;
    this.entries.forEach((e, b) => {
      const kept = e.cache.entries + e.tokens.length;
      let out: Float32Array;
      if (this.batch === 1 && kept === total) out = present; // the common single-sequence case: no copy
      else {
        out = new Float32Array(kvHeads * kept * headDim);
        for (let h = 0; h < kvHeads; h++) {
          const head = (b * kvHeads + h) * total * headDim;
          out.set(present.subarray(head, head + e.cache.entries * headDim), h * kept * headDim);
          out.set(present.subarray(head + past * headDim, head + (past + e.tokens.length) * headDim), (h * kept + e.cache.entries) * headDim);
        }
      }
      this.pending.push({ cache: e.cache, layer, kind, data: out });
    });
  }

  /** Applies the stored presents, advances each sequence past its new tokens and trims what the sliding window can never see. */
  commit(): void {
    const { kvHeads, headDim, window } = this.shape;
    for (const { cache, layer, kind, data } of this.pending) cache[kind][layer] = data;
    this.pending = [];
    for (const { cache, tokens } of this.entries) {
      cache.length += tokens.length;
      cache.entries += tokens.length;
      if (window === null || cache.entries <= window - 1 + TRIM_SLACK) continue;
      const keep = window - 1;
      const drop = cache.entries - keep;
      const trim = (data: Float32Array) => {
        const out = new Float32Array(kvHeads * keep * headDim);
        for (let h = 0; h < kvHeads; h++) {
          const from = (h * cache.entries + drop) * headDim;
          out.set(data.subarray(from, from + keep * headDim), h * keep * headDim);
        }
        return out;
      };
      cache.keys = cache.keys.map(trim);
      cache.values = cache.values.map(trim);
      cache.entries = keep;
    }
  }
}
