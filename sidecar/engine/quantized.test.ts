/**
 * Quantized stores judged against the fp32 engine on the golden inputs. int8 (MatMulNBits, 8 bits,
 * block 32): the golden greedy continuation is identical and top-1 agrees almost everywhere.
 * int4 (4 bits, block 128, error-minimising scales, lm_head kept at int8): top-1 agreement and
 * mean KL(fp32 ‖ int4) are printed and bounded.
 *
 * Why the int4 bar is 74% and not 90%: these tiny random models (dim 64) have top-2
 * logit gaps of 0.01–0.1 at many positions, while 4-bit weights carry ≈7–8% relative RMS error per
 * matrix. With everything else at int8, quantizing any ONE class of matrices to int4 (QKV, wo,
 * w1|w3, w2 or lm_head) already costs 2–13 of the 58 positions per model, so no 4-bit scheme
 * reaches 90% here. Measured (tiny-mistral / tiny-mixtral): plain RTN absmax with an int4 lm_head
 * 38/58 and 47/58, KL 6.7e-2 / 7.9e-2; this scheme 45/58 and 48/58, KL 4.4e-2 / 5.2e-2. The native
 * layers (engine/layers/) keep attention at 8 bits, as the lm_head: 53/58, KL 1.7e-2 on the Mixtral,
 * and 52/58, KL 1.8e-2 on the Mistral where its int4 store runs natively (AVX2 without VNNI).
 */

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { argmax, checkpointDir, fullPass, greedy, loadGolden, MODELS, tempDir } from '../../test/support/golden.ts';
import { convertCheckpoint, type Manifest, type Precision } from '../convert/convert.ts';
import { loadModel, type ModelRuntime } from './model-runtime.ts';

const work = tempDir('quantized');
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** KL(p ‖ q) between the softmax distributions of two logit rows, in nats. */
function klDivergence(p: Float32Array, q: Float32Array): number {
  const logSoftmax = (row: Float32Array) => {
    const max = Math.max(...row);
    const logSum = Math.log(row.reduce((sum, v) => sum + Math.exp(v - max), 0)) + max;
    return Array.from(row, (v) => v - logSum);
  };
  const lp = logSoftmax(p);
  const lq = logSoftmax(q);
  return lp.reduce((sum, v, i) => sum + Math.exp(v) * (v - lq[i]!), 0); // rows of one vocabulary
}

describe.each(MODELS)('%s quantized against fp32', (model) => {
  const golden = loadGolden(model);
  const runtimes = {} as Record<Precision, ModelRuntime>;
  const manifests = {} as Record<Precision, Manifest>;

  beforeAll(async () => {
    for (const precision of ['fp32', 'int8', 'int4'] as const) {
      const store = join(work, `${model}-${precision}`);
      manifests[precision] = await convertCheckpoint({ from: checkpointDir(model, 'native'), to: store, precision });
      runtimes[precision] = await loadModel(store);
    }
  });
  afterAll(async () => {
    for (const runtime of Object.values(runtimes)) await runtime.dispose();
  });

  it('int8: the greedy continuation of the golden prompt is identical to fp32 (and to the reference)', async () => {
    const continuation = await greedy(runtimes.int8, golden.greedy.prompt, 16);
    expect(continuation).toEqual(await greedy(runtimes.fp32, golden.greedy.prompt, 16));
    expect(continuation).toEqual(golden.greedy.continuation);
  });

  it('int8: top-1 agrees with fp32 on at least 95% of golden positions', async () => {
    let positions = 0;
    let agree = 0;
    for (const c of golden.cases) {
      const reference = await fullPass(runtimes.fp32, c.tokens);
      const quantized = await fullPass(runtimes.int8, c.tokens);
      for (let t = 0; t < c.tokens.length; t++, positions++)
        if (argmax(reference, t * 512, 512) === argmax(quantized, t * 512, 512)) agree++;
    }
    expect(agree / positions).toBeGreaterThanOrEqual(0.95);
  });

  it('the manifest records how the weights were quantized: int4 keeps the lm_head at int8', () => {
    expect(manifests.fp32.quantization).toBeUndefined();
    expect(manifests.int8.quantization).toEqual({ linears: { bits: 8, blockSize: 32, mode: 'absmax' }, overrides: {} });
    expect(manifests.int4.quantization).toEqual({
      linears: { bits: 4, blockSize: 128, mode: 'search' },
      overrides: { 'output.weight': { bits: 8, blockSize: 32, mode: 'absmax' } },
    });
  });

  it('int4: top-1 agrees with fp32 on at least 74% of golden positions, mean KL(fp32‖int4) below 0.06 nats', async () => {
    let positions = 0;
    let agree = 0;
    let klSum = 0;
    for (const c of golden.cases) {
      const reference = await fullPass(runtimes.fp32, c.tokens);
      const quantized = await fullPass(runtimes.int4, c.tokens);
      for (let t = 0; t < c.tokens.length; t++) {
        const row = (logits: Float32Array) => logits.subarray(t * 512, (t + 1) * 512);
        positions++;
        if (argmax(reference, t * 512, 512) === argmax(quantized, t * 512, 512)) agree++;
        klSum += klDivergence(row(reference), row(quantized));
      }
    }
    console.log(
      `${model}: int4 top-1 agreement ${agree}/${positions} (${((100 * agree) / positions).toFixed(1)}%), mean KL(fp32‖int4) = ${(klSum / positions).toExponential(3)} nats`,
    );
    expect(agree / positions).toBeGreaterThanOrEqual(0.74);
    expect(klSum / positions).toBeLessThan(0.06);
  });

  it('int8 and int4 logits stay close to fp32 but are not identical (the weights really are quantized)', async () => {
    const [first] = golden.cases;
    if (!first) throw new Error(`the ${model} golden fixture has no cases`);
    const { tokens } = first;
    const reference = await fullPass(runtimes.fp32, tokens);
    for (const precision of ['int8', 'int4'] as const) {
      const logits = await fullPass(runtimes[precision], tokens);
      let maxRef = 0;
      let maxErr = 0;
      for (let i = 0; i < reference.length; i++) {
        maxRef = Math.max(maxRef, Math.abs(reference[i]!));
        maxErr = Math.max(maxErr, Math.abs(reference[i]! - logits[i]!));
      }
      expect(maxErr).toBeGreaterThan(0);
      expect(maxErr / maxRef).toBeLessThan(precision === 'int8' ? 0.05 : 0.5);
    }
    expect(runtimes.int4.info.precision).toBe('int4');
  });
});
