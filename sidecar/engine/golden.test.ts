/**
 * fp32 parity with the reference logits (test/fixtures/golden, float64 maths on the same weights):
 * every case, both checkpoint layouts, within 1e-4 × max|logit|; the 16-token greedy continuation
 * identical (decoded step by step through the KV cache); Mixtral's expert choices identical.
 */

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointDir, fullPass, greedy, LAYOUTS, loadGolden, MODELS, relativeError, tempDir } from '../../test/support/golden.ts';
import { convertCheckpoint } from '../convert/convert.ts';
import { loadModel, type ModelRuntime, type RoutingEvent } from './model-runtime.ts';

const work = tempDir('golden');
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe.each(MODELS.flatMap((model) => LAYOUTS.map((layout) => ({ model, layout }))))(
  '$model ($layout layout), fp32',
  ({ model, layout }) => {
    const golden = loadGolden(model);
    let runtime: ModelRuntime;
    const routing: RoutingEvent[] = [];

    beforeAll(async () => {
      const store = join(work, `${model}-${layout}`);
      await convertCheckpoint({ from: checkpointDir(model, layout), to: store, precision: 'fp32' });
      runtime = await loadModel(store, { onRouting: (event) => routing.push(event) });
    });
    afterAll(() => runtime?.dispose());

    it('reports the model it loaded', () => {
      expect(runtime.info).toMatchObject({
        architecture: model === 'tiny-mixtral' ? 'mixtral' : 'mistral',
        vocabSize: 512,
        slidingWindow: model === 'tiny-mistral' ? 8 : null,
        bosId: 1,
        eosId: 2,
        precision: 'fp32',
      });
    });

    it.each(golden.cases.map((c, i) => ({ i, c })))('case $i: logits at every position within 1e-4 of the reference', async ({ c }) => {
      routing.length = 0;
      const logits = await fullPass(runtime, c.tokens);
      expect(logits.length).toBe(c.tokens.length * 512);
      expect(relativeError(logits, c.logits)).toBeLessThan(1e-4);

      if (c.experts) {
        expect(routing.map((event) => event.layer)).toEqual([0, 1]);
        for (const event of routing) expect(event.experts[0]).toEqual(c.experts[event.layer]);
      } else {
        expect(routing).toEqual([]);
      }
    });

    it('greedy continuation matches the reference token for token', async () => {
      expect(await greedy(runtime, golden.greedy.prompt, 16)).toEqual(golden.greedy.continuation);
    });
  },
);
