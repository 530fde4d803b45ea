/**
 * A converted model store on disk: manifest.json + ONNX graphs + their weight files + tokenizer
 * files. This module owns the manifest format and finding a store's files.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { modelError } from '../errors.ts';
import type { BlockFormat } from './blocks.ts';
import type { Architecture, ModelConfig } from './model-config.ts';
import type { Precision, QuantizationPlan } from './quantize.ts';

export const MANIFEST_FILE = 'manifest.json';
/**
 * Bump when graphs or file layout change: stores of another version are rebuilt, not misread.
 * 2: graphs return only the step's new keys/values (new_key.N), not the concatenated cache.
 * 3: attention flattens each KV head's query group into matmul rows (batch-invariant kernels).
 * 4: int4 stores: error-minimising scales, lm_head at int8; the manifest records the quantization.
 * 5: Mixtral int4 stores page int4 experts (experts-int4/); expert files carry their bit width.
 * 6: Mixtral expert files hold Q4_0 / Q8_0 blocks; int4 and int8 stores have no per-expert graphs
 *    (their experts run in the block kernel, resident or paged).
 * 7: Q4_0 expert files interleave rows four at a time (formats/blocks.ts, Q4_0X4).
 * 8: attention graphs take a RoPE table and positions (one fused RotaryEmbedding for Q and K).
 * 9: Q4_0 expert files store their groups of four rows in bands of 16 (formats/blocks.ts).
 * 10: quantised Mixtral stores also hold native layer files (engine/layers/layer-store.ts).
 * 11: …in Q8_0 at int4 too.
 * 12: …and the head (final norm and lm_head in Q8_0), for the native head.
 * 13: the native layer and head files' Q8_0 rows interleaved four at a time.
 * 14: int4 dense stores hold them too, and expert files, for the model as one expert
 *     (model-config.ts `asOneExpert`).
 */
export const FORMAT_VERSION = 14;

export interface GraphEntry {
  graph: string;
  data: string;
}

export interface Manifest {
  formatVersion: number;
  name: string;
  sourceHash: string;
  precision: Precision;
  /** How the linear weights were quantized (absent at fp32). */
  quantization?: QuantizationPlan;
  architecture: Architecture;
  config: ModelConfig;
  /** Canonical tensor name → shape, as read from the source checkpoint. */
  tensors: Record<string, number[]>;
  graphs: {
    /** Dense models. */
    decoder?: GraphEntry;
    /** Mixtral: per-layer attention graphs, per-layer-per-expert FFN graphs (fp32 stores only), the head. */
    layers?: GraphEntry[];
    experts?: GraphEntry[][];
    head?: GraphEntry;
  };
  /**
   * Quantised stores: each layer up to its experts in the experts' block format, for the native
   * attention layer (engine/layers/layer-store.ts); an int4 dense model's as a one-expert
   * Mixtral's, its FFN then in the expert files.
   */
  nativeLayers?: { format: BlockFormat };
  /** Every file in the store with its size, manifest excluded. */
  files: Array<{ path: string; bytes: number }>;
}

export async function isStore(dir: string): Promise<boolean> {
  try {
    return (await stat(join(dir, MANIFEST_FILE))).isFile();
  } catch {
    return false;
  }
}

/** Reads and checks a store's manifest, and that the files it lists are all there. */
export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST_FILE);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await readFile(path, 'utf8')) as Manifest;
  } catch (error) {
    throw modelError(`cannot read store manifest ${path}: ${(error as Error).message}`, error);
  }
  if (manifest.formatVersion !== FORMAT_VERSION) {
    throw modelError(
      `${path}: store format version ${manifest.formatVersion} is not supported (this build reads version ${FORMAT_VERSION}); convert the checkpoint again`,
    );
  }
  if (!manifest.config || !manifest.graphs || !Array.isArray(manifest.files))
    throw modelError(`${path}: manifest is incomplete (config, graphs or files missing)`);
  for (const file of manifest.files) {
    const size = await stat(join(dir, file.path)).then(
      (s) => s.size,
      () => -1,
    );
    if (size === -1) throw modelError(`store ${dir} is missing ${file.path} (listed in ${MANIFEST_FILE})`);
    if (size !== file.bytes)
      throw modelError(
        `store file ${join(dir, file.path)} is ${size} bytes, ${MANIFEST_FILE} says ${file.bytes}: the store is damaged; convert again`,
      );
  }
  return manifest;
}
