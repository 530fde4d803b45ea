/**
 * Checkpoint folder or GGUF file → store. A folder that is already a store is used as it is; a raw
 * checkpoint (Mistral's or Hugging Face's layout, or a GGUF file) is converted once into the store cache, keyed by its
 * content hash and precision, and reused from then on. The engine itself only runs stores.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type LoadOptions, loadModel, type ModelRuntime } from '../engine/index.ts';
import { openModelSource } from '../formats/open-model-source.ts';
import type { Precision } from '../formats/quantize.ts';
import { isStore, readManifest } from '../formats/store-manifest.ts';
import { convertCheckpoint } from './convert.ts';
import { storeCacheDir } from './paths.ts';

/** Precision a raw checkpoint is converted to when the caller names none. */
export const DEFAULT_CHECKPOINT_PRECISION: Precision = 'int4';

/** The store for `dir`: `dir` itself when it is one, else the checkpoint's converted store in the cache. */
export async function storeFor(dir: string, precision: Precision = DEFAULT_CHECKPOINT_PRECISION): Promise<string> {
  if (await isStore(dir)) return dir;
  const checkpoint = await openModelSource(dir);
  let hash: string;
  try {
    hash = await checkpoint.sourceHash();
  } finally {
    await checkpoint.close();
  }
  const target = join(storeCacheDir(), `${hash}-${precision}`);
  if (await isStore(target)) {
    try {
      await readManifest(target);
      return target;
    } catch {
      await rm(target, { recursive: true, force: true }); // stale format or damaged: rebuild
    }
  }
  try {
    await convertCheckpoint({ from: dir, to: target, precision });
  } catch (error) {
    if (!(await isStore(target))) throw error; // else another process converted it first
  }
  return target;
}

/** Loads a store or a raw checkpoint (converted once, at `options.precision`, default int4). */
export async function openModel(dir: string, options: LoadOptions = {}): Promise<ModelRuntime> {
  return loadModel(await storeFor(dir, options.precision), options);
}
