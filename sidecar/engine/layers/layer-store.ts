/**
 * A quantised Mixtral store's native layer files: per layer, everything up to the experts (the
 * attention sublayer, the FFN norm and the router) in the experts' block format, for the native
 * attention layer (engine/native/attention-layer.cc); and the token embeddings, which that path looks up
 * itself. Written at conversion next to the ONNX layer graphs, which stay the path where the native
 * addon is absent.
 *
 * Folder `<store>/layers-q4_0/` (or `layers-q8_0/`):
 *   L<layer>.bin      header (64 B): magic "SIRLAYR1", u32 version, layer, dim, heads, kvHeads, headDim,
 *                     experts, crc32(payload), payload bytes; then attention_norm f32[dim], ffn_norm
 *                     f32[dim], gate f32[experts·dim], Q|K|V blocks [(heads + 2·kvHeads)·headDim, dim],
 *                     wo blocks [dim, heads·headDim], both in the expert files' layout of the format.
 *   embeddings.bin    header (64 B): magic "SIREMBD1", u32 version, vocab, dim, crc32(payload), payload
 *                     bytes; then tok_embeddings f32[vocab, dim].
 * Q and K rows are in the rotate-half layout, as the ONNX graphs have them.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { modelError } from '../../errors.ts';
import {
  BLOCK,
  BLOCK_BYTES,
  type BlockFormat,
  blockMatrixBytes,
  fromFloat16Bits,
  interleaveQ4_0Rows,
  quantizeBlocks,
  toFloat16Bits,
} from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';

const LAYER_MAGIC = 'SIRLAYR1';
const EMBEDDINGS_MAGIC = 'SIREMBD1';
const VERSION = 1;
const HEADER_BYTES = 64;
const EMBEDDINGS_FILE = 'embeddings.bin';

export type LayerShape = Pick<ModelConfig, 'dim' | 'nHeads' | 'nKvHeads' | 'headDim' | 'numExperts' | 'vocabSize' | 'nLayers'>;

export function layerStoreDir(format: BlockFormat): string {
  return `layers-${format}`;
}

function layerFileName(layer: number): string {
  return `L${layer}.bin`;
}

/** Rows of the stacked Q|K|V matrix. */
export function qkvRows(shape: LayerShape): number {
  return (shape.nHeads + 2 * shape.nKvHeads) * shape.headDim;
}

/** Bytes of one layer file's payload. */
export function layerPayloadBytes(shape: LayerShape, format: BlockFormat): number {
  const { dim, nHeads, headDim, numExperts } = shape;
  return 4 * (2 * dim + numExperts * dim) + blockMatrixBytes(format, qkvRows(shape), dim) + blockMatrixBytes(format, dim, nHeads * headDim);
}

/**
 * Q4_0 blocks with error-minimising scales (formats/quantize.ts's search, as the int4 graphs use)
 * rather than ggml's absmax rounding: any fp16 scale is valid Q4_0, and on the golden Mixtral the
 * search keeps int4 closer to fp32 (absmax attention measured mean KL 6.2e-2, over the 0.06 bar).
 */
function searchedQ4_0(values: Float32Array, rows: number, cols: number): Uint8Array {
  const out = new Uint8Array(blockMatrixBytes('q4_0', rows, cols));
  const levels = new Int8Array(BLOCK);
  const trial = new Int8Array(BLOCK);
  for (let block = 0; block < (rows * cols) / BLOCK; block++) {
    const x = values.subarray(block * BLOCK, (block + 1) * BLOCK);
    let extreme = 0;
    for (const v of x) if (Math.abs(v) > Math.abs(extreme)) extreme = v;
    let best = { gain: -1, scale: 0 };
    for (let step = -SEARCH_STEPS; step <= SEARCH_STEPS && extreme !== 0; step++) {
      const inverse = -(8 + step * SEARCH_STEP) / extreme;
      let xl = 0;
      let ll = 0;
      for (let j = 0; j < BLOCK; j++) {
        trial[j] = Math.max(-8, Math.min(7, Math.round(x[j]! * inverse)));
        xl += x[j]! * trial[j]!;
        ll += trial[j]! * trial[j]!;
      }
      // The least-squares scale for these levels, rounded to fp16 as stored; its error decides.
      const scale = ll === 0 ? 0 : fromFloat16Bits(toFloat16Bits(xl / ll));
      const gain = 2 * scale * xl - scale * scale * ll;
      if (gain > best.gain) {
        best = { gain, scale };
        levels.set(trial);
      }
    }
    const at = block * BLOCK_BYTES.q4_0;
    const half = toFloat16Bits(best.scale);
    out[at] = half & 0xff;
    out[at + 1] = half >>> 8;
    if (extreme === 0) levels.fill(0);
    for (let j = 0; j < BLOCK / 2; j++) out[at + 2 + j] = (levels[j]! + 8) | ((levels[j + BLOCK / 2]! + 8) << 4);
  }
  return out;
}

/** Candidate mappings of the block's extreme: −8 ± SEARCH_STEPS × SEARCH_STEP levels (as formats/quantize.ts; a
 * search three times finer measured the same on the golden Mixtral). */
const SEARCH_STEPS = 9;
const SEARCH_STEP = 0.1;

/** The expert files' layout of a row-major block matrix (formats/blocks.ts). */
function blockMatrix(format: BlockFormat, values: Float32Array, rows: number, cols: number): Uint8Array {
  if (format === 'q4_0') return interleaveQ4_0Rows(searchedQ4_0(values, rows, cols), rows, cols);
  const blocks = new Uint8Array(blockMatrixBytes(format, rows, cols));
  quantizeBlocks(format, values, rows, cols, blocks);
  return blocks;
}

function sealed(magic: string, fields: number[], payload: Uint8Array): Uint8Array {
  const file = new Uint8Array(HEADER_BYTES + payload.byteLength);
  const header = Buffer.from(file.buffer, 0, HEADER_BYTES);
  header.write(magic, 0, 'latin1');
  for (const [i, value] of [VERSION, ...fields, crc32(payload), payload.byteLength].entries()) header.writeUInt32LE(value >>> 0, 8 + 4 * i);
  file.set(payload, HEADER_BYTES);
  return file;
}

/** Reads canonical fp32 tensors, [out, in] (a model source, or a converter's weight reader). */
export interface LayerWeightSource {
  read(name: string): Promise<Float32Array>;
}

/** Writes `<storeDir>/layers-<format>/`, through a temp folder renamed at the end. */
export async function writeLayerStore(source: LayerWeightSource, storeDir: string, shape: LayerShape, format: BlockFormat): Promise<void> {
  const { dim, nHeads, nKvHeads, headDim, numExperts, nLayers, vocabSize } = shape;
  const finalDir = join(storeDir, layerStoreDir(format));
  const tempDir = `${finalDir}.tmp-${process.pid}`;
  await rm(tempDir, { recursive: true, force: true });
  await mkdir(tempDir, { recursive: true });
  try {
    for (let layer = 0; layer < nLayers; layer++) {
      const p = `layers.${layer}`;
      const [attentionNorm, ffnNorm, gate, wq, wk, wv, wo] = await Promise.all(
        [
          'attention_norm.weight',
          'ffn_norm.weight',
          'feed_forward.gate.weight',
          'attention.wq.weight',
          'attention.wk.weight',
          'attention.wv.weight',
          'attention.wo.weight',
        ].map((name) => source.read(`${p}.${name}`)),
      );
      const qkv = new Float32Array(qkvRows(shape) * dim);
      qkv.set(wq!, 0);
      qkv.set(wk!, nHeads * headDim * dim);
      qkv.set(wv!, (nHeads + nKvHeads) * headDim * dim);
      const payload = new Uint8Array(layerPayloadBytes(shape, format));
      const floats = new Float32Array(payload.buffer, 0, 2 * dim + numExperts * dim);
      floats.set(attentionNorm!, 0);
      floats.set(ffnNorm!, dim);
      floats.set(gate!, 2 * dim);
      const qkvBlocks = blockMatrix(format, qkv, qkvRows(shape), dim);
      payload.set(qkvBlocks, floats.byteLength);
      payload.set(blockMatrix(format, wo!, dim, nHeads * headDim), floats.byteLength + qkvBlocks.byteLength);
      const fields = [layer, dim, nHeads, nKvHeads, headDim, numExperts];
      await writeFile(join(tempDir, layerFileName(layer)), sealed(LAYER_MAGIC, fields, payload));
    }
    const embeddings = await source.read('tok_embeddings.weight');
    const payload = new Uint8Array(embeddings.buffer, embeddings.byteOffset, embeddings.byteLength);
    await writeFile(join(tempDir, EMBEDDINGS_FILE), sealed(EMBEDDINGS_MAGIC, [vocabSize, dim], payload));
    await rm(finalDir, { recursive: true, force: true });
    await rename(tempDir, finalDir);
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

/** A checked file's payload (4-byte aligned), or a "convert again" error naming what is wrong. */
async function readSealed(path: string, magic: string, fields: number[], payloadBytes: number): Promise<Uint8Array> {
  let file: Buffer;
  try {
    file = await readFile(path);
  } catch (error) {
    throw modelError(`cannot read native layer file ${path}: ${(error as Error).message}; convert the checkpoint again`, error);
  }
  const problem = (what: string) => modelError(`native layer file ${path}: ${what}; convert the checkpoint again`);
  if (file.byteLength < HEADER_BYTES || file.toString('latin1', 0, 8) !== magic) throw problem('not a layer file (bad magic)');
  const expected = [VERSION, ...fields];
  for (const [i, value] of expected.entries()) {
    if (file.readUInt32LE(8 + 4 * i) !== value) throw problem(`header field ${i} is ${file.readUInt32LE(8 + 4 * i)}, expected ${value}`);
  }
  const crcAt = 8 + 4 * expected.length;
  if (file.readUInt32LE(crcAt + 4) !== payloadBytes || file.byteLength !== HEADER_BYTES + payloadBytes)
    throw problem(`truncated or of the wrong size (${file.byteLength} bytes, expected ${HEADER_BYTES + payloadBytes})`);
  // The float views need 4-byte alignment: a large file's buffer starts at 0 (a small one may sit in Node's pool).
  const payload =
    (file.byteOffset + HEADER_BYTES) % 4 === 0
      ? new Uint8Array(file.buffer, file.byteOffset + HEADER_BYTES, payloadBytes)
      : Uint8Array.from(file.subarray(HEADER_BYTES));
  if (crc32(payload) !== file.readUInt32LE(crcAt)) throw problem('checksum mismatch (damaged)');
  return payload;
}

export interface LayerStore {
  format: BlockFormat;
  /** Per layer, the payload the native attention layer takes. */
  layers: Uint8Array[];
  /** tok_embeddings [vocab, dim]. */
  embeddings: Float32Array;
}

/** Reads and checks every layer file and the embeddings. */
export async function readLayerStore(storeDir: string, shape: LayerShape, format: BlockFormat): Promise<LayerStore> {
  const { dim, nHeads, nKvHeads, headDim, numExperts, nLayers, vocabSize } = shape;
  const dir = join(storeDir, layerStoreDir(format));
  const layers: Uint8Array[] = [];
  for (let layer = 0; layer < nLayers; layer++) {
    const fields = [layer, dim, nHeads, nKvHeads, headDim, numExperts];
    layers.push(await readSealed(join(dir, layerFileName(layer)), LAYER_MAGIC, fields, layerPayloadBytes(shape, format)));
  }
  const embeddingBytes = await readSealed(join(dir, EMBEDDINGS_FILE), EMBEDDINGS_MAGIC, [vocabSize, dim], 4 * vocabSize * dim);
  return { format, layers, embeddings: new Float32Array(embeddingBytes.buffer, embeddingBytes.byteOffset, vocabSize * dim) };
}
