/**
 * The on-disk expert store: every Mixtral expert in GGUF's Q4_0 or Q8_0 blocks (formats/blocks.ts),
 * one file per expert, laid out so that a page-in is ONE sequential read of one file into a
 * reusable buffer — no parsing, no copying, no onnxruntime session per expert. The same bytes run
 * in the same kernel (block-kernel.ts) whether an expert is paged in or kept resident, so logits
 * do not depend on the cache budget; and a GGUF file's Q4_0 / Q8_0 expert tensors are these
 * blocks already.
 *
 * Folder layout (`<store>/experts-int4/` for Q4_0 or `<store>/experts-int8/` for Q8_0):
 *   index.json            { formatVersion, quantization, dim, ffn, layers, experts, topK, normEps, fileBytes }
 *   routers.safetensors   per layer `layers.N.ffn_norm.weight` [dim] and `layers.N.feed_forward.gate.weight`
 *                         [experts, dim], fp32: what speculative prefetch needs to guess the next layer's experts
 *   L<layer>-E<expert>.bin one expert, little-endian:
 *     header (64 B): magic "SIRXPRT1", u32 version, u32 layer, u32 expert, u32 dim, u32 ffn,
 *                    u32 crc32(payload), u32 payload bytes, u32 bits (4: Q4_0, 8: Q8_0), zero padding
 *     w13  blocks of [2·ffn, dim]: w1's rows, then w3's (one product computes both)
 *     w2   blocks of [dim, ffn]
 *   Rows run along the input dimension, as in the checkpoints and in GGUF. Q8_0 rows are in GGUF's
 *   order; Q4_0 rows are interleaved four at a time (formats/blocks.ts, Q4_0X4): the same blocks,
 *   reordered so the kernel reads four rows per load (`placeExpertBlocks` / `expertBlocksInRowOrder`).
 */
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { modelError, SidecarError } from '../../errors.ts';
import {
  BLOCK,
  BLOCK_BYTES,
  type BlockFormat,
  blockMatrixBytes,
  deinterleaveQ4_0Rows,
  interleaveQ4_0Rows,
  Q4_0X4_GROUP_BYTES,
  Q4_0X4_ROWS,
  quantizeBlocks,
} from '../../formats/blocks.ts';
import type { ExpertBlocks } from '../../formats/model-source.ts';
import { SafetensorsFile, writeSafetensors } from '../../formats/safetensors.ts';
import { DIRECT_IO_ALIGNMENT, directReadCapacity, readWhole } from './direct-read.ts';

export type ExpertBits = 4 | 8;
export type ExpertQuantization = BlockFormat;
/** The block format of each `--expert-bits`. */
export const EXPERT_FORMATS: Record<ExpertBits, BlockFormat> = { 4: 'q4_0', 8: 'q8_0' };
/** The store's expert folder for each format. */
export const EXPERT_STORE_DIRS: Record<ExpertBits, string> = { 8: 'experts-int8', 4: 'experts-int4' };
const ROUTERS_FILE = 'routers.safetensors';
/**
 * 5: Q4_0 rows interleaved four at a time in bands of 16 rows (formats/blocks.ts), Q8_0 in row
 * order. Earlier versions (4: groups of four one after the other; 3: Q4_0 in row order; 2:
 * per-column int4 / int8) are refused with "convert again"; the caches rebuild.
 */
export const EXPERT_FORMAT_VERSION = 5;
const MAGIC = 'SIRXPRT1';
const HEADER_BYTES = 64;
/** Read and checksum slice: ≈ 3–6 ms of CRC on the event loop, while the next slice is read. */
const CHECKSUM_SLICE_BYTES = 8 * 1024 * 1024;

export interface ExpertShape {
  /** Model width (the expert's input and output size). */
  dim: number;
  /** Expert hidden size (w1/w3 rows). */
  ffn: number;
  layers: number;
  experts: number;
  /** Experts routed per token (Mixtral: 2). */
  topK: number;
  /** RMSNorm epsilon of the FFN norm (used by the prefetch router). */
  normEps: number;
}

/** Per layer: the FFN norm weight [dim] and the router [experts, dim], fp32. */
export interface RouterWeights {
  norm: Float32Array[];
  gate: Float32Array[];
}

export interface ExpertStoreIndex extends ExpertShape {
  formatVersion: number;
  quantization: ExpertQuantization;
  /** Size of every expert file, header included. */
  fileBytes: number;
}

/** One expert's weights as views into a single buffer (the page-in destination). */
export interface ExpertWeights {
  format: BlockFormat;
  /** w1's rows then w3's: [2·ffn, dim] in blocks. */
  w13: Uint8Array;
  /** [dim, ffn] in blocks. */
  w2: Uint8Array;
}

/** fp32 weights in the checkpoints' [out, in] layout: w1, w3 [ffn, dim], w2 [dim, ffn]. */
export interface ExpertFloatWeights {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

export function expertPayloadBytes(dim: number, ffn: number, bits: ExpertBits): number {
  const format = EXPERT_FORMATS[bits];
  return blockMatrixBytes(format, 2 * ffn, dim) + blockMatrixBytes(format, dim, ffn);
}

export function expertFileBytes(dim: number, ffn: number, bits: ExpertBits): number {
  return HEADER_BYTES + expertPayloadBytes(dim, ffn, bits);
}

export function expertFileName(layer: number, expert: number): string {
  return `L${layer}-E${expert}.bin`;
}

/** Views over `bytes` (a whole expert file image) in the documented order. */
export function expertViews(bytes: Uint8Array, dim: number, ffn: number, bits: ExpertBits): ExpertWeights {
  const format = EXPERT_FORMATS[bits];
  const w13Bytes = blockMatrixBytes(format, 2 * ffn, dim);
  const start = HEADER_BYTES;
  return {
    format,
    w13: bytes.subarray(start, start + w13Bytes),
    w2: bytes.subarray(start + w13Bytes, start + w13Bytes + blockMatrixBytes(format, dim, ffn)),
  };
}

function checkBlockShape(dim: number, ffn: number): void {
  if (dim % BLOCK !== 0 || ffn % BLOCK !== 0) {
    throw modelError(`block-quantised experts need a model width and expert size that are multiples of ${BLOCK}, not ${dim} and ${ffn}`);
  }
}

/** Allocates one expert file's bytes (header zeroed) and returns it with its weight views. */
export function allocateExpert(dim: number, ffn: number, bits: ExpertBits): { bytes: Uint8Array; weights: ExpertWeights } {
  checkBlockShape(dim, ffn);
  const bytes = new Uint8Array(expertFileBytes(dim, ffn, bits));
  return { bytes, weights: expertViews(bytes, dim, ffn, bits) };
}

/** One matrix in the file layout of `format` (see the header comment). */
function placeMatrix(format: BlockFormat, blocks: Uint8Array, rows: number, cols: number, into: Uint8Array): void {
  if (format === 'q4_0') interleaveQ4_0Rows(blocks, rows, cols, into);
  else into.set(blocks);
}

/** Writes an expert's row-order blocks into an image's views, in the file layout. */
export function placeExpertBlocks(weights: ExpertWeights, blocks: ExpertBlocks, dim: number, ffn: number): void {
  const { format, w13, w2 } = weights;
  const half = blockMatrixBytes(format, ffn, dim);
  if (blocks.w1.byteLength !== half || blocks.w3.byteLength !== half || blocks.w2.byteLength !== w2.byteLength) {
    throw modelError(`expert blocks have the wrong size for ${format} [${ffn}, ${dim}] and [${dim}, ${ffn}]`);
  }
  placeMatrix(format, blocks.w1, ffn, dim, w13.subarray(0, half));
  placeMatrix(format, blocks.w3, ffn, dim, w13.subarray(half));
  placeMatrix(format, blocks.w2, dim, ffn, w2);
}

/** An image's matrices back in GGUF's row order: w13 [2·ffn, dim], w2 [dim, ffn]. */
export function expertBlocksInRowOrder(weights: ExpertWeights, dim: number, ffn: number): { w13: Uint8Array; w2: Uint8Array } {
  const { format, w13, w2 } = weights;
  if (format !== 'q4_0') return { w13: w13.slice(), w2: w2.slice() };
  return { w13: deinterleaveQ4_0Rows(w13, 2 * ffn, dim), w2: deinterleaveQ4_0Rows(w2, dim, ffn) };
}

/** Sets every block's fp16 scale in an image to `half` (for generated images: random weights, one scale). */
export function setExpertScales(weights: ExpertWeights, half: number): void {
  const { format } = weights;
  // A Q4_0 group block (72-byte units, in any band order) starts with its four rows' scales; a Q8_0 block with its own.
  const [step, count] = format === 'q4_0' ? [Q4_0X4_GROUP_BYTES, Q4_0X4_ROWS] : [BLOCK_BYTES.q8_0, 1];
  for (const matrix of [weights.w13, weights.w2]) {
    for (let at = 0; at < matrix.length; at += step) {
      for (let lane = 0; lane < count; lane++) {
        matrix[at + 2 * lane] = half & 0xff;
        matrix[at + 2 * lane + 1] = half >>> 8;
      }
    }
  }
}

/** Quantises an expert from fp32 checkpoint weights into a freshly allocated file image. */
export function quantizeExpert(
  weights: ExpertFloatWeights,
  dim: number,
  ffn: number,
  bits: ExpertBits,
): { bytes: Uint8Array; weights: ExpertWeights } {
  const expected = ffn * dim;
  for (const name of ['w1', 'w3', 'w2'] as const) {
    if (weights[name].length !== expected) {
      throw modelError(`expert ${name} has ${weights[name].length} values, expected ${expected} (dim ${dim} × ffn ${ffn})`);
    }
  }
  const image = allocateExpert(dim, ffn, bits);
  const { format } = image.weights;
  const quantized = (values: Float32Array, rows: number, cols: number) => {
    const blocks = new Uint8Array(blockMatrixBytes(format, rows, cols));
    quantizeBlocks(format, values, rows, cols, blocks);
    return blocks;
  };
  const blocks = { w1: quantized(weights.w1, ffn, dim), w3: quantized(weights.w3, ffn, dim), w2: quantized(weights.w2, dim, ffn) };
  placeExpertBlocks(image.weights, blocks, dim, ffn);
  return image;
}

/** Fills the header of an expert file image (magic, shape, checksum of the payload). */
export function sealExpert(bytes: Uint8Array, layer: number, expert: number, dim: number, ffn: number, bits: ExpertBits): Uint8Array {
  const header = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  header.fill(0);
  header.write(MAGIC, 0, 'latin1');
  const payload = bytes.subarray(HEADER_BYTES);
  const fields = [EXPERT_FORMAT_VERSION, layer, expert, dim, ffn, crc32(payload), payload.byteLength, bits];
  for (const [i, value] of fields.entries()) header.writeUInt32LE(value >>> 0, 8 + 4 * i);
  return bytes;
}

/**
 * Writes a complete expert store in the `bits` format. `expertImage(layer, expert)` returns a file
 * image from `quantizeExpert` (or a directly generated quantised one); it is sealed and written in
 * turn, so only one expert is in memory at a time. Written to a temp folder, renamed at the end.
 */
export async function writeExpertStore(
  storeDir: string,
  shape: ExpertShape,
  bits: ExpertBits,
  routers: RouterWeights,
  expertImage: (layer: number, expert: number) => Promise<Uint8Array> | Uint8Array,
  onProgress?: (done: number, total: number) => void,
): Promise<ExpertStoreIndex> {
  checkBlockShape(shape.dim, shape.ffn);
  const finalDir = join(storeDir, EXPERT_STORE_DIRS[bits]);
  const tempDir = `${finalDir}.tmp-${process.pid}`;
  await rm(tempDir, { recursive: true, force: true });
  await mkdir(tempDir, { recursive: true });
  const fileBytes = expertFileBytes(shape.dim, shape.ffn, bits);
  const total = shape.layers * shape.experts;
  try {
    for (let layer = 0; layer < shape.layers; layer++) {
      for (let expert = 0; expert < shape.experts; expert++) {
        const image = await expertImage(layer, expert);
        if (image.byteLength !== fileBytes)
          throw modelError(`expert L${layer} E${expert} image is ${image.byteLength} bytes, expected ${fileBytes}`);
        await writeFile(join(tempDir, expertFileName(layer, expert)), sealExpert(image, layer, expert, shape.dim, shape.ffn, bits));
        onProgress?.(layer * shape.experts + expert + 1, total);
      }
    }
    await writeSafetensors(
      join(tempDir, ROUTERS_FILE),
      Array.from({ length: shape.layers }, (_, layer) => [
        { name: `layers.${layer}.ffn_norm.weight`, dtype: 'F32' as const, shape: [shape.dim], data: routers.norm[layer]! },
        {
          name: `layers.${layer}.feed_forward.gate.weight`,
          dtype: 'F32' as const,
          shape: [shape.experts, shape.dim],
          data: routers.gate[layer]!,
        },
      ]).flat(),
    );
    const index: ExpertStoreIndex = { formatVersion: EXPERT_FORMAT_VERSION, quantization: EXPERT_FORMATS[bits], ...shape, fileBytes };
    await writeFile(join(tempDir, 'index.json'), JSON.stringify(index, null, 2));
    await rm(finalDir, { recursive: true, force: true });
    await rename(tempDir, finalDir);
    return index;
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

/** What `buildExpertStore` needs from a model source (formats/model-source.ts's `ModelSource` fits). */
export interface ExpertSource {
  config: { dim: number; hiddenDim: number; nLayers: number; numExperts: number; expertsPerToken: number; normEps: number };
  /** Where it was read from, for messages. */
  path?: string;
  /** A tensor by canonical (Mistral native) name as float32, [out, in]. */
  read(name: string): Promise<Float32Array>;
  /** An expert's matrices when the source already holds them as `format` blocks (a GGUF file's), else undefined. */
  expertBlocks?(layer: number, expert: number, format: BlockFormat): Promise<ExpertBlocks | undefined>;
}

/**
 * Writes every expert of a Mixtral source into `<storeDir>/experts-int{bits}/`, one at a time.
 * Experts the source already holds in the store's block format keep their blocks bit for bit (so
 * they run exactly as llama.cpp runs them, not quantised a second time); others are quantised from fp32.
 */
export async function buildExpertStore(
  source: ExpertSource,
  storeDir: string,
  bits: ExpertBits,
  onProgress?: (done: number, total: number) => void,
): Promise<ExpertStoreIndex> {
  const { dim, hiddenDim: ffn, nLayers: layers, numExperts: experts, expertsPerToken: topK, normEps } = source.config;
  if (experts <= 0) throw modelError('cannot build an expert store for a dense model (no experts in its config)');
  const routers: RouterWeights = { norm: [], gate: [] };
  for (let layer = 0; layer < layers; layer++) {
    routers.norm.push(await source.read(`layers.${layer}.ffn_norm.weight`));
    routers.gate.push(await source.read(`layers.${layer}.feed_forward.gate.weight`));
  }
  const expertImage = async (layer: number, expert: number): Promise<Uint8Array> => {
    const blocks = await source.expertBlocks?.(layer, expert, EXPERT_FORMATS[bits]);
    if (!blocks) {
      const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
      const [w1, w3, w2] = await Promise.all(['w1', 'w3', 'w2'].map((w) => source.read(`${prefix}.${w}.weight`)));
      return quantizeExpert({ w1: w1!, w3: w3!, w2: w2! }, dim, ffn, bits).bytes;
    }
    const image = allocateExpert(dim, ffn, bits);
    try {
      placeExpertBlocks(image.weights, blocks, dim, ffn);
    } catch (error) {
      throw modelError(`${source.path ?? 'the source'}: expert ${expert} of layer ${layer}: ${(error as Error).message}`);
    }
    return image.bytes;
  };
  return writeExpertStore(storeDir, { dim, ffn, layers, experts, topK, normEps }, bits, routers, expertImage, onProgress);
}

function validateIndex(index: Partial<ExpertStoreIndex>, indexPath: string, bits: ExpertBits): ExpertStoreIndex {
  const positive = (key: keyof ExpertShape) => Number.isInteger(index[key]) && (index[key] as number) > 0;
  if (index.formatVersion !== EXPERT_FORMAT_VERSION || index.quantization !== EXPERT_FORMATS[bits]) {
    throw modelError(
      `expert store index ${indexPath}: unsupported format (formatVersion ${String(index.formatVersion)}, quantization ${String(index.quantization)}; ` +
        `this build reads version ${EXPERT_FORMAT_VERSION}, ${EXPERT_FORMATS[bits]}); convert the checkpoint again`,
    );
  }
  for (const key of ['dim', 'ffn', 'layers', 'experts', 'topK'] as const) {
    if (!positive(key)) throw modelError(`expert store index ${indexPath}: field "${key}" must be a positive integer`);
  }
  if (typeof index.normEps !== 'number' || !(index.normEps > 0))
    throw modelError(`expert store index ${indexPath}: field "normEps" must be a positive number`);
  const full = index as ExpertStoreIndex;
  if (full.dim % BLOCK !== 0 || full.ffn % BLOCK !== 0)
    throw modelError(`expert store index ${indexPath}: "dim" and "ffn" must be multiples of ${BLOCK}`);
  if (full.fileBytes !== expertFileBytes(full.dim, full.ffn, bits))
    throw modelError(`expert store index ${indexPath}: fileBytes does not match dim/ffn`);
  return full;
}

/**
 * A page-in failure: the operator's message names the file, the client's names the expert (its
 * layer and index) and never the server's paths.
 */
function expertFileError(path: string, layer: number, expert: number, problem: string, cause?: unknown): SidecarError {
  return new SidecarError('model_error', `expert file ${path} ${problem}`, {
    cause,
    publicMessage: `the file of expert ${expert} in layer ${layer} ${problem}`,
  });
}

/**
 * What identifies one version of a file without reading it: a file written in place changes its
 * mtime and ctime (ctime cannot be set back from user space), a replaced one its inode.
 */
interface FileStamp {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

const sameStamp = (a: FileStamp, b: FileStamp): boolean =>
  a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;

/** Reads a paged expert store: validates the index once, then pages experts in on demand. */
export class ExpertStore {
  /**
   * Per expert, the file version whose checksum was verified. A page-in of the same version only
   * checks header and size; a changed file (rewritten, replaced) is verified again before use.
   */
  private readonly verified = new Map<number, FileStamp>();
  /** Page-ins that bypassed the page cache, and those that could not (buffer or file system). */
  readonly reads = { direct: 0, buffered: 0 };

  private constructor(
    readonly dir: string,
    readonly index: ExpertStoreIndex,
    readonly bits: ExpertBits,
  ) {}

  /** Opens the store's expert folder: `experts-int4/` if present, else `experts-int8/`. */
  static async open(storeDir: string): Promise<ExpertStore> {
    let missing: unknown;
    for (const bits of [4, 8] as const) {
      const dir = join(storeDir, EXPERT_STORE_DIRS[bits]);
      const indexPath = join(dir, 'index.json');
      let parsed: unknown;
      try {
        parsed = JSON.parse(await readFile(indexPath, 'utf8'));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
          missing = error;
          continue;
        }
        throw modelError(`cannot read expert store index ${indexPath}: ${error instanceof Error ? error.message : String(error)}`, error);
      }
      return new ExpertStore(dir, validateIndex(parsed as Partial<ExpertStoreIndex>, indexPath, bits), bits);
    }
    throw modelError(
      `store ${storeDir} has no paged expert files (${EXPERT_STORE_DIRS[4]}/ or ${EXPERT_STORE_DIRS[8]}/index.json) for --expert-cache-mb: ` +
        'it is not a Mixtral store or was converted before expert paging existed; convert the checkpoint again',
      missing,
    );
  }

  /** The per-layer FFN norm and router weights (small: read whole). */
  async readRouters(): Promise<RouterWeights> {
    const file = await SafetensorsFile.open(join(this.dir, ROUTERS_FILE));
    try {
      const routers: RouterWeights = { norm: [], gate: [] };
      for (let layer = 0; layer < this.index.layers; layer++) {
        routers.norm.push(await file.readFloat32(`layers.${layer}.ffn_norm.weight`));
        routers.gate.push(await file.readFloat32(`layers.${layer}.feed_forward.gate.weight`));
      }
      return routers;
    } finally {
      await file.close();
    }
  }

  get expertBytes(): number {
    return this.index.fileBytes;
  }

  path(layer: number, expert: number): string {
    return join(this.dir, expertFileName(layer, expert));
  }

  /** A buffer that `read` can fill (one expert file image). */
  allocate(): Uint8Array {
    return new Uint8Array(this.index.fileBytes);
  }

  /**
   * Pages one expert into `into` (from `allocate`, or a kernel buffer) with one whole-file read on
   * the libuv pool — the event loop stays free. Where `into` allows it (4096-aligned, room for the
   * last whole block: the kernel's buffers) the read bypasses the OS page cache, so the cache
   * budget is the only copy in RAM (direct-read.ts). A missing, truncated or corrupt file throws a
   * modelError naming it.
   */
  async read(layer: number, expert: number, into: Uint8Array): Promise<ExpertWeights> {
    const { dim, ffn, fileBytes } = this.index;
    const path = this.path(layer, expert);
    if (into.byteLength < fileBytes) throw new RangeError(`expert buffer is ${into.byteLength} bytes, expected ${fileBytes}`);
    // The checksum costs about as much as the read itself, so each version of a file is verified
    // once per process, slice by slice while the next slice is being read; the stat that every
    // page-in makes anyway tells whether the file changed since. Corruption below the file system
    // (a disk's bit rot) leaves the stamp unchanged and is not caught after the first read.
    const key = layer * this.index.experts + expert;
    let verify = true;
    let checksum = 0;
    let stamp: FileStamp;
    try {
      const stats = await stat(path, { bigint: true });
      stamp = { dev: stats.dev, ino: stats.ino, size: stats.size, mtimeNs: stats.mtimeNs, ctimeNs: stats.ctimeNs };
      const verifiedStamp = this.verified.get(key);
      verify = verifiedStamp === undefined || !sameStamp(verifiedStamp, stamp);
      if (verify) this.verified.delete(key);
      const size = Number(stats.size);
      if (size !== fileBytes)
        throw expertFileError(path, layer, expert, `is ${size} bytes, expected ${fileBytes} (truncated or from another model)`);
      const direct = into.byteOffset % DIRECT_IO_ALIGNMENT === 0 && into.byteLength >= directReadCapacity(fileBytes);
      const result = await readWhole(path, into, fileBytes, {
        direct,
        sliceBytes: verify ? CHECKSUM_SLICE_BYTES : directReadCapacity(fileBytes),
        onSlice: verify ? (from, to) => (checksum = crc32(into.subarray(Math.max(from, HEADER_BYTES), to), checksum)) : undefined,
      });
      this.reads[result.direct ? 'direct' : 'buffered']++;
    } catch (error) {
      if (error instanceof Error && error.name === 'SidecarError') throw error;
      const { code, bytesRead } = error as NodeJS.ErrnoException & { bytesRead?: number };
      if (code === 'ESHORT') throw expertFileError(path, layer, expert, `ended after ${bytesRead} of ${fileBytes} bytes`, error);
      const reason = code ?? (error instanceof Error ? error.name : 'unknown error');
      throw expertFileError(path, layer, expert, `cannot be read: ${reason}`, error);
    }
    this.checkHeader(path, into, layer, expert, verify ? checksum >>> 0 : null);
    if (verify) this.verified.set(key, stamp);
    return expertViews(into, dim, ffn, this.bits);
  }

  /** Header fields against the slot; `checksum` (of the payload, when verified this time) against the header's. */
  private checkHeader(path: string, bytes: Uint8Array, layer: number, expert: number, checksum: number | null): void {
    const { dim, ffn } = this.index;
    const header = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
    const fields = Array.from({ length: 8 }, (_, i) => header.readUInt32LE(8 + 4 * i));
    const [version, fileLayer, fileExpert, fileDim, fileFfn, expected, payloadBytes, bits] = fields as [
      number,
      number,
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    if (header.toString('latin1', 0, 8) !== MAGIC || version !== EXPERT_FORMAT_VERSION)
      throw expertFileError(path, layer, expert, 'is corrupt: bad magic or version');
    if (
      fileLayer !== layer ||
      fileExpert !== expert ||
      fileDim !== dim ||
      fileFfn !== ffn ||
      payloadBytes !== this.index.fileBytes - HEADER_BYTES ||
      bits !== this.bits
    ) {
      throw expertFileError(
        path,
        layer,
        expert,
        `is corrupt: header says layer ${fileLayer} expert ${fileExpert} dim ${fileDim} ffn ${fileFfn} int${bits}, ` +
          `expected layer ${layer} expert ${expert} dim ${dim} ffn ${ffn} int${this.bits}`,
      );
    }
    if (checksum !== null && checksum !== expected) throw expertFileError(path, layer, expert, 'is corrupt: checksum mismatch');
  }
}
