/**
 * The loader: a raw checkpoint folder is converted once into the store cache (keyed by its content
 * hash and precision), reused afterwards, and two processes racing on it share one conversion.
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkpointDir, fullPass, loadGolden, relativeError, tempDir } from '../../test/support/golden.ts';
import { openModel } from './loader.ts';

const work = tempDir('loader');
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('raw checkpoint folders are converted once into the store cache', () => {
  it('loads a checkpoint folder directly, then reuses the converted store', async () => {
    const home = join(work, 'home');
    const previous = process.env.SIROCCO_HOME;
    process.env.SIROCCO_HOME = home;
    try {
      const [golden] = loadGolden('tiny-mistral').cases;
      if (!golden) throw new Error('the tiny-mistral golden fixture has no cases');
      const first = await openModel(checkpointDir('tiny-mistral', 'hf'), { precision: 'fp32' });
      expect(first.dir.startsWith(join(home, 'stores'))).toBe(true);
      expect(relativeError(await fullPass(first, golden.tokens), golden.logits)).toBeLessThan(1e-4);
      await first.dispose();
      const second = await openModel(checkpointDir('tiny-mistral', 'hf'), { precision: 'fp32' });
      expect(second.dir).toBe(first.dir);
      await second.dispose();

      // Two loads racing on a checkpoint never converted: one conversion wins, both get the store.
      const racing = await Promise.all([0, 1].map(() => openModel(checkpointDir('tiny-mixtral', 'native'), { precision: 'int8' })));
      const [dir, otherDir] = racing.map((r) => r.dir);
      expect(dir).toBe(otherDir);
      expect(readdirSync(join(home, 'stores')).filter((f) => f.includes('.partial-'))).toEqual([]);
      await Promise.all(racing.map((r) => r.dispose()));
    } finally {
      if (previous === undefined) delete process.env.SIROCCO_HOME;
      else process.env.SIROCCO_HOME = previous;
    }
  });
});
