/**
 * The benches' random-weight models, built once into `$SIROCCO_HOME/bench/<name>` and reused; a
 * store converted by an older build (its manifest no longer reads) is rebuilt. One builder, so
 * bench:engine and bench:sidecar measure the very same 1.0B store.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint, type Precision } from '../sidecar/convert/convert.ts';
import { siroccoHome } from '../sidecar/convert/paths.ts';
import { BENCH_1B_SHAPE, type ModelShape, writeRandomCheckpoint } from '../sidecar/convert/random-checkpoint.ts';
import type { ExpertBits } from '../sidecar/engine/index.ts';
import { isStore, readManifest } from '../sidecar/formats/store-manifest.ts';

export interface BenchModel {
  /** Folder name under `$SIROCCO_HOME/bench`. */
  name: string;
  shape: ModelShape;
  seed: number;
  precision: Precision;
  /** Mixtral: the paged experts' format (convert.ts's default when absent). */
  expertBits?: ExpertBits;
}

/** The Mistral-shaped 1.0B model llama.cpp's anchor was measured on (docs/engine-facts.md). */
export function bench1bModel(precision: Precision): BenchModel {
  return { name: `mistral-1b-${precision}`, shape: BENCH_1B_SHAPE, seed: 1, precision };
}

export async function ensureBenchStore(model: BenchModel): Promise<string> {
  const store = join(siroccoHome(), 'bench', model.name);
  if (await isStore(store)) {
    const current = await readManifest(store).then(
      () => true,
      () => false,
    );
    if (current) return store;
    console.error(`rebuilding ${store}: it was converted by an older build`);
    await rm(store, { recursive: true, force: true });
  }
  const source = join(siroccoHome(), 'bench', `${model.name}-source-${process.pid}`);
  console.error(`building the bench model ${model.name} once into ${store} (random weights, ${model.precision})…`);
  try {
    await writeRandomCheckpoint(source, model.shape, model.seed);
    let lastPrint = 0;
    await convertCheckpoint({
      from: source,
      to: store,
      precision: model.precision,
      expertBits: model.expertBits,
      name: model.name,
      onProgress: (done, total, label) => {
        if (Date.now() - lastPrint < 5_000 && done < total) return;
        lastPrint = Date.now();
        console.error(`  convert ${done}/${total} ${label}`);
      },
    });
  } finally {
    await rm(source, { recursive: true, force: true });
  }
  return store;
}
