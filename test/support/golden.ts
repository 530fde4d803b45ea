/** Shared helpers for the engine tests: the golden fixtures and small numeric checks. */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModelRuntime } from '../../sidecar/engine/index.ts';

export const GOLDEN_DIR = new URL('../fixtures/golden/', import.meta.url).pathname;
export const MODELS = ['tiny-mistral', 'tiny-mixtral'] as const;
export const LAYOUTS = ['native', 'hf'] as const;

export interface GoldenCase {
  tokens: number[];
  logits: number[][];
  experts?: number[][][];
}

export interface Golden {
  cases: GoldenCase[];
  greedy: { prompt: number[]; continuation: number[] };
}

export function loadGolden(model: string): Golden {
  return JSON.parse(readFileSync(join(GOLDEN_DIR, model, 'golden.json'), 'utf8')) as Golden;
}

export function checkpointDir(model: string, layout: string): string {
  return join(GOLDEN_DIR, model, layout);
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `sirocco-${prefix}-`));
}

/** max |a - b| over max |b|, row-major logits [positions × vocab] against reference rows. */
export function relativeError(actual: Float32Array, reference: number[][]): number {
  const vocab = reference[0]?.length ?? 0;
  if (actual.length !== reference.length * vocab)
    throw new RangeError(`${actual.length} logits for ${reference.length}×${vocab} reference values`);
  let maxRef = 0;
  let maxErr = 0;
  for (const [t, row] of reference.entries()) {
    for (const [i, v] of row.entries()) {
      maxRef = Math.max(maxRef, Math.abs(v));
      maxErr = Math.max(maxErr, Math.abs(v - actual[t * vocab + i]!));
    }
  }
  return maxErr / maxRef;
}

export function argmax(values: ArrayLike<number>, offset = 0, length = values.length - offset): number {
  let best = offset;
  for (let i = offset; i < offset + length; i++) if (values[i]! > values[best]!) best = i;
  return best - offset;
}

/** Prefill the prompt, then decode `count` tokens greedily one step at a time (uses the KV cache). */
export async function greedy(runtime: ModelRuntime, prompt: number[], count: number): Promise<number[]> {
  const sequence = runtime.createSequence();
  const out: number[] = [];
  let [logits] = await runtime.forward([{ sequence, tokens: prompt }]);
  while (out.length < count) {
    const token = argmax(logits!);
    out.push(token);
    if (out.length < count) [logits] = await runtime.forward([{ sequence, tokens: [token] }]);
  }
  runtime.releaseSequence(sequence);
  return out;
}

/** All-position logits of one full causal pass. */
export async function fullPass(runtime: ModelRuntime, tokens: number[]): Promise<Float32Array> {
  const sequence = runtime.createSequence();
  const [logits] = await runtime.forward([{ sequence, tokens }], { allPositions: true });
  runtime.releaseSequence(sequence);
  if (!logits) throw new Error('the engine returned no logits');
  return logits;
}
