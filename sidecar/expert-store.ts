/**
 * The on-disk paged expert store: every Mixtral expert quantised to int8 with one fp32 scale per
 * output column, laid out so that a page-in is ONE sequential read of one file into a reusable
 * buffer — no parsing, no copying, no onnxruntime session per expert.
 *
 * Why int8 per column (docs/expert-paging.md): onnxruntime 1.30's DynamicQuantizeMatMul accepts
 * int8 weights as graph *inputs* at a few × the prepacked speed, whereas int4 MatMulNBits with
 * weights as inputs is ~130× slower and a session per expert costs 20–950 ms. The paged path uses
 * its own quantisation, so its output is identical for every cache budget (same bytes, same
 * kernel) but not identical to the resident int4 engine.
 *
 * Folder layout (`<store>/experts-int8/`):
 *   index.json            { formatVersion, quantization, dim, ffn, layers, experts, topK, normEps, fileBytes }
 *   routers.safetensors   per layer `layers.N.ffn_norm.weight` [dim] and `layers.N.feed_forward.gate.weight`
 *                         [experts, dim], fp32: what speculative prefetch needs to guess the next layer's experts
 *   L<layer>-E<expert>.bin one expert, little-endian:
 *     header (64 B): magic "SIRXPRT1", u32 version, u32 layer, u32 expert, u32 dim, u32 ffn,
 *                    u32 crc32(payload), u32 payload bytes, zero padding
 *     s13 f32[2·ffn]   column scales of w13 (w1 columns first, then w3)
 *     s2  f32[dim]     column scales of w2
 *     w13 i8[dim, 2·ffn] (w1ᵀ | w3ᵀ, row-major [in, out], the B operand of DynamicQuantizeMatMul)
 *     w2  i8[ffn, dim]   (w2ᵀ)
 *   Scales come first so every view is 4-byte aligned without padding.
 */
import { mkdir, open, readFile, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { modelError } from './errors.ts';
import { SafetensorsFile, writeSafetensors } from './safetensors.ts';

export const EXPERT_STORE_DIR = 'experts-int8';
const ROUTERS_FILE = 'routers.safetensors';
export const EXPERT_FORMAT_VERSION = 1;
const MAGIC = 'SIRXPRT1';
const HEADER_BYTES = 64;

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
  quantization: 'int8-per-column';
  /** Size of every expert file, header included. */
  fileBytes: number;
}

/** One expert's weights as views into a single buffer (the page-in destination). */
export interface ExpertWeights {
  s13: Float32Array;
  s2: Float32Array;
  w13: Int8Array;
  w2: Int8Array;
}

/** A quantised expert ready to be written. */
export type QuantizedExpert = ExpertWeights;

/** fp32 weights in the checkpoints' [out, in] layout: w1, w3 [ffn, dim], w2 [dim, ffn]. */
export interface ExpertFloatWeights {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

export function expertPayloadBytes(dim: number, ffn: number): number {
  return 4 * (2 * ffn + dim) + dim * 2 * ffn + ffn * dim;
}

export function expertFileBytes(dim: number, ffn: number): number {
  return HEADER_BYTES + expertPayloadBytes(dim, ffn);
}

export function expertFileName(layer: number, expert: number): string {
  return `L${layer}-E${expert}.bin`;
}

/** Views over `bytes` (a whole expert file) in the documented order. */
function viewsOf(bytes: Uint8Array, dim: number, ffn: number): ExpertWeights {
  let offset = bytes.byteOffset + HEADER_BYTES;
  const take = <T>(make: (buffer: ArrayBuffer, offset: number, length: number) => T, length: number, width: number): T => {
    const view = make(bytes.buffer as ArrayBuffer, offset, length);
    offset += length * width;
    return view;
  };
  const s13 = take((b, o, n) => new Float32Array(b, o, n), 2 * ffn, 4);
  const s2 = take((b, o, n) => new Float32Array(b, o, n), dim, 4);
  const w13 = take((b, o, n) => new Int8Array(b, o, n), dim * 2 * ffn, 1);
  const w2 = take((b, o, n) => new Int8Array(b, o, n), ffn * dim, 1);
  return { s13, s2, w13, w2 };
}

/**
 * Symmetric per-output-column int8: column n of Bᵀ is row n of `w` ([out, in]); scale = max|row|/127.
 * Writes the transposed int8 values into `into` (row-major [in, outTotal]) at column `columnOffset`.
 */
function quantizeRowsAsColumns(
  w: Float32Array, out: number, inner: number, into: Int8Array, scales: Float32Array, outTotal: number, columnOffset: number,
): void {
  for (let n = 0; n < out; n++) {
    let max = 0;
    const row = n * inner;
    for (let k = 0; k < inner; k++) max = Math.max(max, Math.abs(w[row + k]!));
    const scale = max === 0 ? 1 : max / 127;
    scales[columnOffset + n] = scale;
    for (let k = 0; k < inner; k++) {
      into[k * outTotal + columnOffset + n] = Math.max(-127, Math.min(127, Math.round(w[row + k]! / scale)));
    }
  }
}

/** Allocates one expert file's bytes (header zeroed) and returns it with its weight views. */
export function allocateExpert(dim: number, ffn: number): { bytes: Uint8Array; weights: ExpertWeights } {
  const bytes = new Uint8Array(expertFileBytes(dim, ffn));
  return { bytes, weights: viewsOf(bytes, dim, ffn) };
}

/** Quantises an expert from fp32 checkpoint weights into a freshly allocated file image. */
export function quantizeExpert(weights: ExpertFloatWeights, dim: number, ffn: number): { bytes: Uint8Array; weights: QuantizedExpert } {
  const expected = ffn * dim;
  for (const name of ['w1', 'w3', 'w2'] as const) {
    if (weights[name].length !== expected) {
      throw modelError(`expert ${name} has ${weights[name].length} values, expected ${expected} (dim ${dim} × ffn ${ffn})`);
    }
  }
  const image = allocateExpert(dim, ffn);
  const q = image.weights;
  quantizeRowsAsColumns(weights.w1, ffn, dim, q.w13, q.s13, 2 * ffn, 0);
  quantizeRowsAsColumns(weights.w3, ffn, dim, q.w13, q.s13, 2 * ffn, ffn);
  quantizeRowsAsColumns(weights.w2, dim, ffn, q.w2, q.s2, dim, 0);
  return image;
}

/** Fills the header of an expert file image (magic, shape, checksum of the payload). */
export function sealExpert(bytes: Uint8Array, layer: number, expert: number, dim: number, ffn: number): Uint8Array {
  const header = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  header.fill(0);
  header.write(MAGIC, 0, 'latin1');
  const payload = bytes.subarray(HEADER_BYTES);
  [EXPERT_FORMAT_VERSION, layer, expert, dim, ffn, crc32(payload), payload.byteLength].forEach((value, i) => header.writeUInt32LE(value >>> 0, 8 + 4 * i));
  return bytes;
}

/**
 * Writes a complete expert store. `expertImage(layer, expert)` returns a file image from
 * `quantizeExpert` (or a directly generated quantised one); it is sealed and written in turn, so
 * only one expert is in memory at a time. Written to a temp folder, renamed at the end.
 */
export async function writeExpertStore(
  storeDir: string,
  shape: ExpertShape,
  routers: RouterWeights,
  expertImage: (layer: number, expert: number) => Promise<Uint8Array> | Uint8Array,
  onProgress?: (done: number, total: number) => void,
): Promise<ExpertStoreIndex> {
  const finalDir = join(storeDir, EXPERT_STORE_DIR);
  const tempDir = `${finalDir}.tmp-${process.pid}`;
  await rm(tempDir, { recursive: true, force: true });
  await mkdir(tempDir, { recursive: true });
  const fileBytes = expertFileBytes(shape.dim, shape.ffn);
  const total = shape.layers * shape.experts;
  try {
    for (let layer = 0; layer < shape.layers; layer++) {
      for (let expert = 0; expert < shape.experts; expert++) {
        const image = await expertImage(layer, expert);
        if (image.byteLength !== fileBytes) throw modelError(`expert L${layer} E${expert} image is ${image.byteLength} bytes, expected ${fileBytes}`);
        await writeFile(join(tempDir, expertFileName(layer, expert)), sealExpert(image, layer, expert, shape.dim, shape.ffn));
        onProgress?.(layer * shape.experts + expert + 1, total);
      }
    }
    await writeSafetensors(join(tempDir, ROUTERS_FILE), Array.from({ length: shape.layers }, (_, layer) => [
      { name: `layers.${layer}.ffn_norm.weight`, dtype: 'F32' as const, shape: [shape.dim], data: routers.norm[layer]! },
      { name: `layers.${layer}.feed_forward.gate.weight`, dtype: 'F32' as const, shape: [shape.experts, shape.dim], data: routers.gate[layer]! },
    ]).flat());
    const index: ExpertStoreIndex = { formatVersion: EXPERT_FORMAT_VERSION, quantization: 'int8-per-column', ...shape, fileBytes };
    await writeFile(join(tempDir, 'index.json'), JSON.stringify(index, null, 2));
    await rm(finalDir, { recursive: true, force: true });
    await rename(tempDir, finalDir);
    return index;
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

/** What `buildExpertStore` needs from a checkpoint (sidecar/checkpoint.ts `Checkpoint` fits). */
export interface ExpertSource {
  config: { dim: number; hiddenDim: number; nLayers: number; numExperts: number; expertsPerToken: number; normEps: number };
  /** A tensor by canonical (Mistral native) name as float32, [out, in]. */
  read(name: string): Promise<Float32Array>;
}

/** Quantises every expert of a Mixtral checkpoint into `<storeDir>/experts-int8/`, one at a time. */
export async function buildExpertStore(
  source: ExpertSource, storeDir: string, onProgress?: (done: number, total: number) => void,
): Promise<ExpertStoreIndex> {
  const { dim, hiddenDim: ffn, nLayers: layers, numExperts: experts, expertsPerToken: topK, normEps } = source.config;
  if (experts <= 0) throw modelError('cannot build an expert store for a dense model (no experts in its config)');
  const routers: RouterWeights = { norm: [], gate: [] };
  for (let layer = 0; layer < layers; layer++) {
    routers.norm.push(await source.read(`layers.${layer}.ffn_norm.weight`));
    routers.gate.push(await source.read(`layers.${layer}.feed_forward.gate.weight`));
  }
  return writeExpertStore(storeDir, { dim, ffn, layers, experts, topK, normEps }, routers, async (layer, expert) => {
    const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
    const [w1, w3, w2] = await Promise.all(['w1', 'w3', 'w2'].map((w) => source.read(`${prefix}.${w}.weight`)));
    return quantizeExpert({ w1: w1!, w3: w3!, w2: w2! }, dim, ffn).bytes;
  }, onProgress);
}

/** Reads a paged expert store: validates the index once, then pages experts in on demand. */
export class ExpertStore {
  /** Experts whose checksum has been verified once; later page-ins only check header and size. */
  private readonly verified = new Set<number>();

  private constructor(readonly dir: string, readonly index: ExpertStoreIndex) {}

  static async open(storeDir: string): Promise<ExpertStore> {
    const dir = join(storeDir, EXPERT_STORE_DIR);
    const indexPath = join(dir, 'index.json');
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw modelError(
          `store ${storeDir} has no paged expert files (${EXPERT_STORE_DIR}/index.json) for --expert-cache-mb: ` +
            'it is not a Mixtral store or was converted before expert paging existed; convert the checkpoint again',
          error,
        );
      }
      throw modelError(`cannot read expert store index ${indexPath}: ${error instanceof Error ? error.message : String(error)}`, error);
    }
    const index = parsed as Partial<ExpertStoreIndex>;
    const positive = (key: keyof ExpertShape) => Number.isInteger(index[key]) && (index[key] as number) > 0;
    if (index.formatVersion !== EXPERT_FORMAT_VERSION || index.quantization !== 'int8-per-column') {
      throw modelError(`expert store index ${indexPath}: unsupported format (formatVersion ${String(index.formatVersion)}, quantization ${String(index.quantization)})`);
    }
    for (const key of ['dim', 'ffn', 'layers', 'experts', 'topK'] as const) {
      if (!positive(key)) throw modelError(`expert store index ${indexPath}: field "${key}" must be a positive integer`);
    }
    if (typeof index.normEps !== 'number' || !(index.normEps > 0)) throw modelError(`expert store index ${indexPath}: field "normEps" must be a positive number`);
    const full = index as ExpertStoreIndex;
    if (full.fileBytes !== expertFileBytes(full.dim, full.ffn)) throw modelError(`expert store index ${indexPath}: fileBytes does not match dim/ffn`);
    return new ExpertStore(dir, full);
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
   * Pages one expert into `into` (from `allocate`) with one positioned read on the libuv pool —
   * the event loop stays free. A missing, truncated or corrupt file throws a modelError naming it.
   */
  async read(layer: number, expert: number, into: Uint8Array): Promise<ExpertWeights> {
    const { dim, ffn, fileBytes } = this.index;
    const path = this.path(layer, expert);
    if (into.byteLength !== fileBytes) throw new RangeError(`expert buffer is ${into.byteLength} bytes, expected ${fileBytes}`);
    let handle: FileHandle | undefined;
    try {
      handle = await open(path, 'r');
      const { size } = await handle.stat();
      if (size !== fileBytes) throw modelError(`expert file ${path} is ${size} bytes, expected ${fileBytes} (truncated or from another model)`);
      let done = 0;
      while (done < fileBytes) {
        const { bytesRead } = await handle.read(into, done, fileBytes - done, done);
        if (bytesRead === 0) throw modelError(`expert file ${path} ended after ${done} of ${fileBytes} bytes`);
        done += bytesRead;
      }
    } catch (error) {
      if (error instanceof Error && error.name === 'SidecarError') throw error;
      throw modelError(`cannot read expert file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, error);
    } finally {
      await handle?.close();
    }
    await this.checkHeader(path, into, layer, expert);
    return viewsOf(into, dim, ffn);
  }

  private async checkHeader(path: string, bytes: Uint8Array, layer: number, expert: number): Promise<void> {
    const { dim, ffn } = this.index;
    const header = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
    const fields = Array.from({ length: 7 }, (_, i) => header.readUInt32LE(8 + 4 * i));
    const [version, fileLayer, fileExpert, fileDim, fileFfn, checksum, payloadBytes] = fields as [number, number, number, number, number, number, number];
    const payload = bytes.subarray(HEADER_BYTES);
    if (header.toString('latin1', 0, 8) !== MAGIC || version !== EXPERT_FORMAT_VERSION) throw modelError(`expert file ${path} is corrupt: bad magic or version`);
    if (fileLayer !== layer || fileExpert !== expert || fileDim !== dim || fileFfn !== ffn || payloadBytes !== payload.byteLength) {
      throw modelError(`expert file ${path} is corrupt: header says layer ${fileLayer} expert ${fileExpert} dim ${fileDim} ffn ${fileFfn}, expected layer ${layer} expert ${expert} dim ${dim} ffn ${ffn}`);
    }
    // The checksum costs about as much as the read itself, so each file is verified once per process.
    const key = layer * this.index.experts + expert;
    if (!this.verified.has(key)) {
      if ((await chunkedCrc32(payload)) !== checksum) throw modelError(`expert file ${path} is corrupt: checksum mismatch`);
      this.verified.add(key);
    }
  }
}

/** CRC-32 in 4 MiB slices, yielding between them: a 176 MB expert must not stall other streams. */
async function chunkedCrc32(bytes: Uint8Array): Promise<number> {
  const slice = 4 * 1024 * 1024;
  let crc = 0;
  for (let offset = 0; offset < bytes.byteLength; offset += slice) {
    crc = crc32(bytes.subarray(offset, offset + slice), crc);
    if (offset + slice < bytes.byteLength) await yieldToEventLoop();
  }
  return crc >>> 0;
}
