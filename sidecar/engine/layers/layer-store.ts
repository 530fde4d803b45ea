/**
 * A quantised Mixtral store's native layer files: per layer, everything up to the experts (the
 * attention sublayer, the FFN norm and the router) with its matrices in Q8_0 blocks, for the native
 * attention layer (engine/native/attention-layer.cc); the token embeddings, which that path looks
 * up itself; and the head (final norm and lm_head) for native-head.ts. Written at conversion next to
 * the ONNX layer and head graphs, which stay the path where the native addon is absent.
 *
 * Folder `<store>/layers-q8_0/` (LAYER_FORMAT below; the reader takes the manifest's format):
 *   L<layer>.bin      header (64 B): magic "SIRLAYR1", u32 version, layer, dim, heads, kvHeads, headDim,
 *                     experts, crc32(payload), payload bytes; then attention_norm f32[dim], ffn_norm
 *                     f32[dim], gate f32[experts·dim], Q|K|V blocks [(heads + 2·kvHeads)·headDim, dim],
 *                     wo blocks [dim, heads·headDim], both with rows interleaved four at a time
 *                     (formats/blocks.ts, interleaveQ8_0Rows: one read stream for the native product).
 *   embeddings.bin    header (64 B): magic "SIREMBD1", u32 version, vocab, dim, crc32(payload), payload
 *                     bytes; then tok_embeddings f32[vocab, dim].
 *   head.bin          header (64 B): magic "SIRHEAD1", u32 version, vocab, dim, crc32(payload), payload
 *                     bytes; then norm f32[dim], output blocks [vocab, dim], rows interleaved as above.
 * Q and K rows are in the rotate-half layout, as the ONNX graphs have them.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { modelError } from '../../errors.ts';
import { BLOCK, type BlockFormat, blockMatrixBytes, interleaveQ8_0Rows, quantizeBlocks } from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';
import type { WeightSource } from '../../graph/transformer.ts';

const LAYER_MAGIC = 'SIRLAYR1';
const EMBEDDINGS_MAGIC = 'SIREMBD1';
const HEAD_MAGIC = 'SIRHEAD1';
/** 2: Q8_0 rows interleaved four at a time. */
const VERSION = 2;
const HEADER_BYTES = 64;
const EMBEDDINGS_FILE = 'embeddings.bin';
const HEAD_FILE = 'head.bin';

export type LayerShape = Pick<ModelConfig, 'dim' | 'nHeads' | 'nKvHeads' | 'headDim' | 'numExperts' | 'vocabSize' | 'nLayers'>;

export function layerStoreDir(format: BlockFormat): string {
  return `layers-${format}`;
}

function layerFileName(layer: number): string {
  return `L${layer}.bin`;
}

/** Rows of the stacked Q|K|V matrix. */
function qkvRows(shape: LayerShape): number {
  return (shape.nHeads + 2 * shape.nKvHeads) * shape.headDim;
}

/** Bytes of one layer file's payload. */
function layerPayloadBytes(shape: LayerShape, format: BlockFormat): number {
  const { dim, nHeads, headDim, numExperts } = shape;
  return 4 * (2 * dim + numExperts * dim) + blockMatrixBytes(format, qkvRows(shape), dim) + blockMatrixBytes(format, dim, nHeads * headDim);
}

/** Bytes of the head file's payload. */
function headPayloadBytes({ dim, vocabSize }: LayerShape, format: BlockFormat): number {
  return 4 * dim + blockMatrixBytes(format, vocabSize, dim);
}

/**
 * The layer files' block format at every precision: Q8_0, as the int4 graphs keep their lm_head at 8
 * bits. Measured on the golden Mixtral int4 store: Q4_0 attention (searched scales) agreed with fp32
 * on 46/58 top-1 positions at mean KL 4.9e-2, Q8_0 on 53/58 at 1.7e-2, for ~4% of decode speed on
 * the bench shape (the attention is ~1.5 MB of a ~100 MB token at Q4_0).
 */
export const LAYER_FORMAT: BlockFormat = 'q8_0';

/**
 * Whether a model's layers and head fit the layer files: every matrix's rows come in groups of four
 * and its columns in whole blocks. Other shapes keep only the ONNX layer and head graphs.
 */
export function layerStoreFits(shape: LayerShape): boolean {
  const { dim, nHeads, headDim, vocabSize } = shape;
  return dim % BLOCK === 0 && (nHeads * headDim) % BLOCK === 0 && [qkvRows(shape), dim, vocabSize].every((rows) => rows % 4 === 0);
}

/** A [rows, cols] matrix's Q8_0 blocks, rows interleaved four at a time, into `out` at `at`; returns the byte after. */
function writeBlocks(values: ArrayLike<number>, rows: number, cols: number, out: Uint8Array, at: number): number {
  const rowOrder = new Uint8Array(blockMatrixBytes(LAYER_FORMAT, rows, cols));
  quantizeBlocks(LAYER_FORMAT, values, rows, cols, rowOrder);
  interleaveQ8_0Rows(rowOrder, rows, cols, out.subarray(at, at + rowOrder.length));
  return at + rowOrder.length;
}

function sealed(magic: string, fields: number[], payload: Uint8Array): Uint8Array {
  const file = new Uint8Array(HEADER_BYTES + payload.byteLength);
  const header = Buffer.from(file.buffer, 0, HEADER_BYTES);
  header.write(magic, 0, 'latin1');
  for (const [i, value] of [VERSION, ...fields, crc32(payload), payload.byteLength].entries()) header.writeUInt32LE(value >>> 0, 8 + 4 * i);
  file.set(payload, HEADER_BYTES);
  return file;
}

/** Writes `<storeDir>/layers-q8_0/`, through a temp folder renamed at the end. */
export async function writeLayerStore(source: WeightSource, storeDir: string, shape: LayerShape): Promise<void> {
  const format = LAYER_FORMAT;
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
      const qkvEnd = writeBlocks(qkv, qkvRows(shape), dim, payload, floats.byteLength);
      writeBlocks(wo!, dim, nHeads * headDim, payload, qkvEnd);
      const fields = [layer, dim, nHeads, nKvHeads, headDim, numExperts];
      await writeFile(join(tempDir, layerFileName(layer)), sealed(LAYER_MAGIC, fields, payload));
    }
    const embeddings = await source.read('tok_embeddings.weight');
    const payload = new Uint8Array(embeddings.buffer, embeddings.byteOffset, embeddings.byteLength);
    await writeFile(join(tempDir, EMBEDDINGS_FILE), sealed(EMBEDDINGS_MAGIC, [vocabSize, dim], payload));
    const [norm, output] = await Promise.all([source.read('norm.weight'), source.read('output.weight')]);
    const head = new Uint8Array(headPayloadBytes(shape, format));
    new Float32Array(head.buffer, 0, dim).set(norm!);
    writeBlocks(output!, vocabSize, dim, head, 4 * dim);
    await writeFile(join(tempDir, HEAD_FILE), sealed(HEAD_MAGIC, [vocabSize, dim], head));
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
  /** The final norm f32[dim], then lm_head's blocks [vocab, dim]. */
  head: Uint8Array;
}

/** Reads and checks every layer file, the embeddings and the head. */
export async function readLayerStore(storeDir: string, shape: LayerShape, format: BlockFormat): Promise<LayerStore> {
  const { dim, nHeads, nKvHeads, headDim, numExperts, nLayers, vocabSize } = shape;
  const dir = join(storeDir, layerStoreDir(format));
  const layers: Uint8Array[] = [];
  for (let layer = 0; layer < nLayers; layer++) {
    const fields = [layer, dim, nHeads, nKvHeads, headDim, numExperts];
    layers.push(await readSealed(join(dir, layerFileName(layer)), LAYER_MAGIC, fields, layerPayloadBytes(shape, format)));
  }
  const embeddingBytes = await readSealed(join(dir, EMBEDDINGS_FILE), EMBEDDINGS_MAGIC, [vocabSize, dim], 4 * vocabSize * dim);
  const head = await readSealed(join(dir, HEAD_FILE), HEAD_MAGIC, [vocabSize, dim], headPayloadBytes(shape, format));
  return { format, layers, embeddings: new Float32Array(embeddingBytes.buffer, embeddingBytes.byteOffset, vocabSize * dim), head };
}
