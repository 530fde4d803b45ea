/**
 * The KV cache and the batch dimension give the same numbers as one full causal pass: decoding
 * token by token or in chunks (past the sliding window, where the cache is trimmed), and ragged
 * batches mixing sequences of different cached lengths and new-token counts. Bad calls get
 * invalid_request_error.
 */

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointDir, fullPass, MODELS, tempDir } from '../../test/support/golden.ts';
import { convertCheckpoint } from '../convert/convert.ts';
import { SidecarError } from '../errors.ts';
import { loadModel, type ModelRuntime } from './model-runtime.ts';

const work = tempDir('batching');
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Deterministic pseudo-random token ids in [3, 512). */
function tokens(count: number, seed: number): number[] {
  let state = seed;
  return Array.from({ length: count }, () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return 3 + (state % 509);
  });
}

function maxRelativeDifference(a: Float32Array, b: Float32Array): number {
  let maxRef = 0;
  let maxErr = 0;
  for (let i = 0; i < b.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(b[i]!));
    maxErr = Math.max(maxErr, Math.abs(a[i]! - b[i]!)); // a shorter `a` gives NaN: the comparison fails
  }
  return maxErr / maxRef;
}

describe.each(MODELS)('%s: cache and batching agree with a full pass', (model) => {
  let runtime: ModelRuntime;
  beforeAll(async () => {
    const store = join(work, model);
    await convertCheckpoint({ from: checkpointDir(model, 'hf'), to: store, precision: 'fp32' });
    runtime = await loadModel(store);
  });
  afterAll(() => runtime?.dispose());

  it('decoding 100 tokens one at a time and in chunks of 7 reproduces every position', async () => {
    const ids = tokens(100, 7);
    const reference = await fullPass(runtime, ids);
    for (const chunk of [1, 7]) {
      const sequence = runtime.createSequence();
      const collected = new Float32Array(reference.length);
      for (let start = 0; start < ids.length; start += chunk) {
        const part = ids.slice(start, start + chunk);
        const results = await runtime.forward([{ sequence, tokens: part }], { allPositions: true });
        expect(results).toHaveLength(1);
        collected.set(results[0]!, start * 512);
      }
      expect(sequence.length).toBe(100);
      expect(maxRelativeDifference(collected, reference)).toBeLessThan(1e-5);
      runtime.releaseSequence(sequence);
    }
  });

  it('a ragged batch returns what each sequence would get on its own', async () => {
    const entries = [
      { history: tokens(10, 1), step: tokens(1, 3) },
      { history: [], step: tokens(6, 4) },
      { history: tokens(3, 2), step: tokens(3, 5) },
    ].map((entry) => ({ ...entry, sequence: runtime.createSequence() }));
    for (const { history, sequence } of entries) if (history.length) await runtime.forward([{ sequence, tokens: history }]);

    const batched = await runtime.forward(
      entries.map(({ sequence, step }) => ({ sequence, tokens: step })),
      { allPositions: true },
    );
    const lastOnly = await runtime.forward(entries.map(({ sequence, step }) => ({ sequence, tokens: step.slice(0, 1) })));
    expect(lastOnly.map((l) => l.length)).toEqual([512, 512, 512]);
    expect(batched).toHaveLength(entries.length);

    for (const [i, { history, step, sequence }] of entries.entries()) {
      const alone = await fullPass(runtime, [...history, ...step]);
      const expected = alone.slice(history.length * 512);
      const logits = batched[i]!;
      expect(logits.length).toBe(step.length * 512);
      expect(maxRelativeDifference(logits, expected)).toBeLessThan(1e-5);
      expect(sequence.length).toBe(history.length + step.length + 1);
      runtime.releaseSequence(sequence);
    }
  });

  // Batch invariance (same seed + same request ⇒ same text, whatever else is in the batch):
  // a sequence's logits are bit-identical alone and batched, whether its batchmates hold shorter or
  // LONGER caches, wherever it sits in the batch (last of an odd batch included), over enough steps
  // that the caches cross KV-buffer growth boundaries (64-slot buckets).
  describe.each([
    {
      others: 'a shorter sequence joining mid-way, first in the batch',
      histories: [0],
      last: false,
      prompts: (i: number) => (i === 1 ? tokens(7, 10) : [50 + i]),
    },
    {
      others: 'longer sequences (150 and 70 cached tokens), last of three',
      histories: [150, 70],
      last: true,
      prompts: (i: number) => [60 + (i % 30)],
    },
  ])('bit-identical logits with $others (int4)', ({ histories, last, prompts }) => {
    let int4: ModelRuntime;
    beforeAll(async () => {
      const store = join(work, `${model}-int4-${histories.join('-')}`);
      await convertCheckpoint({ from: checkpointDir(model, 'hf'), to: store, precision: 'int4' });
      int4 = await loadModel(store);
    });
    afterAll(() => int4?.dispose());

    it('matches the sequence decoding alone at every step', async () => {
      const decode = async (withOthers: boolean) => {
        const main = int4.createSequence();
        const others = histories.map((cached) => ({ cached, sequence: int4.createSequence() }));
        await int4.forward([{ sequence: main, tokens: tokens(12, 9) }]);
        for (const [i, { cached, sequence }] of others.entries()) {
          if (cached > 0) await int4.forward([{ sequence, tokens: tokens(cached, 20 + i) }]);
        }
        const out: string[] = [];
        for (let i = 0; i < 60; i++) {
          const mates = withOthers ? others.map(({ sequence }) => ({ sequence, tokens: prompts(i) })) : [];
          const batch = last ? [...mates, { sequence: main, tokens: [40 + i] }] : [{ sequence: main, tokens: [40 + i] }, ...mates];
          const results = await int4.forward(batch);
          expect(results).toHaveLength(batch.length);
          const logits = results[last ? mates.length : 0]!;
          out.push(Buffer.from(logits.buffer, logits.byteOffset, logits.byteLength).toString('base64'));
        }
        expect(main.length).toBe(72); // crossed the first 64-slot bucket
        const [first] = others;
        if (withOthers && first && first.cached > 0) expect(first.sequence.length).toBe(first.cached + 60); // and the other its own
        for (const s of [main, ...others.map(({ sequence }) => sequence)]) int4.releaseSequence(s);
        return out;
      };
      expect(await decode(true)).toEqual(await decode(false));
    });
  });

  it('rejects bad calls with invalid_request_error', async () => {
    const sequence = runtime.createSequence();
    const bad = async (call: () => Promise<unknown>, fragment: string) => {
      const error = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SidecarError);
      expect((error as SidecarError).type).toBe('invalid_request_error');
      expect((error as Error).message).toContain(fragment);
    };
    await bad(() => runtime.forward([{ sequence, tokens: [1, 512] }]), 'token id 512 at position 1 is outside the vocabulary [0, 512)');
    await bad(() => runtime.forward([{ sequence, tokens: [-1] }]), 'token id -1');
    await bad(() => runtime.forward([{ sequence, tokens: [1.5] }]), 'token id 1.5');
    await bad(() => runtime.forward([{ sequence, tokens: [] }]), 'at least one token');
    await bad(() => runtime.forward([]), 'at least one sequence');
    await bad(
      () =>
        runtime.forward([
          { sequence, tokens: [1] },
          { sequence, tokens: [2] },
        ]),
      'twice',
    );
    await bad(() => runtime.forward([{ sequence, tokens: new Array(runtime.info.contextLength + 1).fill(5) }]), 'context length');
    expect(sequence.length).toBe(0); // nothing was applied
    runtime.releaseSequence(sequence);
    await bad(() => runtime.forward([{ sequence, tokens: [1] }]), 'not active');
  });
});

describe.each(MODELS)('%s: KV memory reserved at load', (model) => {
  const stores: ModelRuntime[] = [];
  afterAll(() => Promise.all(stores.map((runtime) => runtime.dispose())));

  it('backs the caches and changes no logit, across capacity steps and a batch that changes', async () => {
    const store = join(work, `${model}-int4-reserve`);
    await convertCheckpoint({ from: checkpointDir(model, 'hf'), to: store, precision: 'int4' });
    const decode = async (runtime: ModelRuntime) => {
      const [a, b, c] = [runtime.createSequence(), runtime.createSequence(), runtime.createSequence()];
      await runtime.forward([
        { sequence: a, tokens: tokens(20, 1) },
        { sequence: b, tokens: tokens(3, 2) },
      ]);
      const out: string[] = [];
      for (let i = 0; i < 80; i++) {
        // c joins after 30 steps and a leaves after 60: the batch's past tensors are rebuilt.
        const batch = [...(i < 60 ? [a] : []), b, ...(i >= 30 ? [c] : [])].map((sequence) => ({ sequence, tokens: [30 + i] }));
        for (const logits of await runtime.forward(batch))
          out.push(Buffer.from(logits.buffer, logits.byteOffset, logits.byteLength).toString('base64'));
        if (i === 59) runtime.releaseSequence(a);
      }
      const inUse = runtime.kvReserve?.().inUse ?? 0;
      for (const sequence of [b, c]) runtime.releaseSequence(sequence);
      return { out, inUse };
    };
    const plain = await loadModel(store);
    const reserved = await loadModel(store, { kvCacheMb: 4 });
    stores.push(plain, reserved);
    expect(reserved.kvReserve?.()).toEqual({ bytes: 4 * 2 ** 20, inUse: 0 });
    expect(plain.kvReserve?.().bytes).toBe(0);
    const [withReserve, without] = [await decode(reserved), await decode(plain)];
    expect(withReserve.inUse).toBeGreaterThan(0);
    expect(withReserve.out).toEqual(without.out);
  });
});
