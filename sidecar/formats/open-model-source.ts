/** Opens a model source by what the path is: a GGUF file, or a checkpoint folder. */
import { stat } from 'node:fs/promises';
import { modelError } from '../errors.ts';
import { Checkpoint } from './checkpoint.ts';
import { GgufModel } from './gguf-model.ts';
import type { ModelSource } from './model-source.ts';

/** Opens a checkpoint folder or, for a file, a GGUF file (its magic bytes are checked, not its name). */
export async function openModelSource(path: string): Promise<ModelSource> {
  const stats = await stat(path).catch(() => undefined);
  if (stats?.isFile()) return GgufModel.open(path);
  if (!stats && path.toLowerCase().endsWith('.gguf')) throw modelError(`GGUF file ${path} does not exist`);
  return Checkpoint.open(path); // a missing folder is named by its message
}
