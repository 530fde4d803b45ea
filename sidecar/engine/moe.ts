/**
 * Mixtral's sparse FFN run from JS: top-k routing on fp32 router logits (softmax over the chosen k,
 * as mistral-inference does), then each chosen expert runs once per step on all its rows and the
 * weighted outputs are summed. Experts come from an `ExpertProvider`: every expert resident
 * (`ResidentExpertProvider`) or paged from disk through a budgeted cache (experts/paged-experts.ts).
 */
import * as ort from 'onnxruntime-node';
import { modelError } from '../errors.ts';
import { MIN_MATMUL_ROWS } from '../formats/quantize.ts';
import { IO } from '../graph/models.ts';
import { createSession, type SessionSettings } from './device.ts';

export interface Expert {
  /** x [rows, dim] → expert(x) [rows, dim]. */
  run(x: Float32Array, rows: number): Promise<Float32Array>;
  /**
   * Row counts this expert's kernel must get a multiple of (default MIN_MATMUL_ROWS: onnxruntime's
   * kernels round a lone row differently, see runExperts); 1 for a kernel that treats every row alone.
   */
  rowMultiple?: number;
  /**
   * Optional: this expert and `other` at once (a paged expert runs them one per kernel thread);
   * the same outputs as `run` on each.
   */
  runWith?(other: Expert, x: Float32Array, rows: number, otherX: Float32Array, otherRows: number): Promise<[Float32Array, Float32Array]>;
}

/** One routed expert's rows for `ExpertProvider.runResident`. */
export interface ExpertJob {
  expert: number;
  /** Its rows of the layer's input [rows, dim]. */
  x: Float32Array;
  rows: number;
}

export interface ExpertProvider {
  /**
   * Optional: called before a layer's experts run with the routed ids and the layer's
   * post-attention hidden state [rows, dim], so a paging provider can load ahead and prefetch
   * the next layer's experts (experts/paged-experts.ts).
   */
  beginLayer?(layer: number, experts: ArrayLike<number>, hidden: { data: Float32Array; rows: number }): void;
  get(layer: number, expert: number): Promise<Expert>;
  /**
   * Optional: a layer's routed experts (in this order) at once and without waiting, when every one
   * is in memory now, each with the outputs `get(…).run` gives; null when any is not (the caller then
   * goes through `get`). Its kernel treats every row alone (no padding rows).
   */
  runResident?(layer: number, jobs: readonly ExpertJob[]): Float32Array[] | null;
  dispose(): Promise<void>;
}

/** Every expert's session created up front and kept. */
export class ResidentExpertProvider implements ExpertProvider {
  private constructor(
    private readonly experts: Expert[][],
    private readonly sessions: ort.InferenceSession[],
  ) {}

  static async load(graphPaths: string[][], dim: number, settings: SessionSettings): Promise<ResidentExpertProvider> {
    const sessions: ort.InferenceSession[] = [];
    const experts: Expert[][] = [];
    try {
      for (const layer of graphPaths) {
        const row: Expert[] = [];
        for (const path of layer) {
          const session = await createSession(path, settings);
          sessions.push(session);
          row.push(sessionExpert(session, dim));
        }
        experts.push(row);
      }
    } catch (error) {
      await Promise.all(sessions.map((s) => s.release()));
      throw error;
    }
    return new ResidentExpertProvider(experts, sessions);
  }

  async get(layer: number, expert: number): Promise<Expert> {
    const found = this.experts[layer]?.[expert];
    if (!found) throw modelError(`expert ${expert} of layer ${layer} does not exist in this store`);
    return found;
  }

  async dispose(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.release()));
  }
}

/** Wraps an expert FFN session (input `x`, output `y`). */
export function sessionExpert(session: ort.InferenceSession, dim: number): Expert {
  return {
    async run(x, rows) {
      const out = await session.run({ [IO.expertIn]: new ort.Tensor('float32', x, [rows, dim]) });
      const y = out[IO.expertOut];
      if (!y) throw modelError(`an expert graph returned no ${IO.expertOut} output; convert the checkpoint again`);
      return y.data as Float32Array;
    },
  };
}

export interface Routing {
  /** [rows × k] expert ids, highest router logit first (ties: lower id). */
  experts: Int32Array;
  /** [rows × k] softmax over the chosen k logits. */
  weights: Float32Array;
}

/**
 * Top-k of each row's router logits, softmax over those k (computed in float64).
 * `logits` holds rows × numExperts values and 1 ≤ k ≤ numExperts (model-config.ts checks it), so
 * every index below is in range.
 */
export function routeTopK(logits: Float32Array, rows: number, numExperts: number, k: number): Routing {
  const experts = new Int32Array(rows * k);
  const weights = new Float32Array(rows * k);
  const chosen: number[] = [];
  for (let r = 0; r < rows; r++) {
    const base = r * numExperts;
    chosen.length = 0;
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let e = 0; e < numExperts; e++) {
        if (chosen.includes(e)) continue;
        if (best === -1 || logits[base + e]! > logits[base + best]!) best = e;
      }
      chosen.push(best);
    }
    const top = logits[base + chosen[0]!]!;
    let sum = 0;
    const exps = chosen.map((e) => {
      const v = Math.exp(logits[base + e]! - top);
      sum += v;
      return v;
    });
    for (let j = 0; j < k; j++) {
      experts[r * k + j] = chosen[j]!;
      weights[r * k + j] = exps[j]! / sum;
    }
  }
  return { experts, weights };
}

/**
 * Σ weight · expert(x) for each row of `x` [rows, dim]. Rows are grouped by expert so each chosen
 * expert runs once on all of its rows.
 */
export async function runExperts(
  provider: ExpertProvider,
  layer: number,
  x: Float32Array,
  rows: number,
  dim: number,
  routing: Routing,
  k: number,
): Promise<Float32Array> {
  const byExpert = new Map<number, number[]>(); // expert → routing slots (row * k + j)
  for (let slot = 0; slot < rows * k; slot++) {
    const expert = routing.experts[slot]!;
    let slots = byExpert.get(expert);
    if (!slots) {
      slots = [];
      byExpert.set(expert, slots);
    }
    slots.push(slot);
  }
  const out = new Float32Array(rows * dim);
  /** The slots' rows of x, the last one repeated up to `padded` rows (slots is never empty). */
  const gather = (slots: number[], padded: number) => {
    // Every row once, in order (one expert, as a dense model's FFN): x itself.
    if (k === 1 && padded === rows && slots.length === rows && slots.every((slot, i) => slot === i)) return x.subarray(0, rows * dim);
    const input = new Float32Array(padded * dim);
    for (let i = 0; i < padded; i++) {
      const row = Math.floor(slots[Math.min(i, slots.length - 1)]! / k) * dim;
      input.set(x.subarray(row, row + dim), i * dim);
    }
    return input;
  };
  /** The expert's rows of x, a multiple of its kernel's row multiple. */
  const inputFor = (runner: Expert, slots: number[]) => {
    // A multiple of MIN_MATMUL_ROWS rows (the last one repeated): how many rows an expert gets
    // depends on what the rest of the batch routed to it, and MatMulNBits rounds a lone trailing
    // row differently (see BatchStep), which would make a token's output depend on its batchmates.
    const multiple = runner.rowMultiple ?? MIN_MATMUL_ROWS;
    const padded = Math.ceil(slots.length / multiple) * multiple;
    return { input: gather(slots, padded), padded };
  };
  const accumulate = (slots: number[], y: Float32Array) => {
    slots.forEach((slot, i) => {
      const row = Math.floor(slot / k) * dim;
      const weight = routing.weights[slot]!;
      for (let d = 0; d < dim; d++) out[row + d]! += weight * y[i * dim + d]!;
    });
  };
  // In expert order: all at once where the provider has them all in memory, else two at a time
  // where it can run them together. The sums happen in the same order every way.
  const jobs = [...byExpert].sort(([a], [b]) => a - b);
  const resident = provider.runResident?.(
    layer,
    jobs.map(([expert, slots]) => ({ expert, x: gather(slots, slots.length), rows: slots.length })),
  );
  if (resident) {
    for (const [j, [, slots]] of jobs.entries()) accumulate(slots, resident[j]!);
    return out;
  }
  for (let j = 0; j < jobs.length; j++) {
    const [expert, slots] = jobs[j]!;
    const runner = await provider.get(layer, expert);
    const { input, padded } = inputFor(runner, slots);
    const next = jobs[j + 1];
    if (runner.runWith && next) {
      const [nextExpert, nextSlots] = next;
      const nextRunner = await provider.get(layer, nextExpert);
      const nextInput = inputFor(nextRunner, nextSlots);
      const [y, nextY] = await runner.runWith(nextRunner, input, padded, nextInput.input, nextInput.padded);
      accumulate(slots, y);
      accumulate(nextSlots, nextY);
      j++;
    } else {
      accumulate(slots, await runner.run(input, padded));
    }
  }
  return out;
}
