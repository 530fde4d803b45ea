/**
 * The on-disk paged expert store: every Mixtral expert quantised with one fp32 scale per output
 * column, laid out so that a page-in is ONE sequential read of one file into a reusable buffer —
 * no parsing, no copying, no onnxruntime session per expert.
 *
 * Why per-column int8 weights (docs/expert-paging.md): onnxruntime 1.30's DynamicQuantizeMatMul
 * accepts int8 weights as graph *inputs* at a few × the prepacked speed, whereas int4 MatMulNBits
 * with weights as inputs is ~130× slower and a session per expert costs 20–950 ms. Two formats:
 *   int8-per-column  (`experts-int8/`, int8/fp32 stores): the bytes the graph runs on.
 *   int4-per-column  (`experts-int4/`, int4 stores): half the bytes on disk and in the cache; each
 *                    byte holds two signed nibbles, which our WebAssembly kernel multiplies as
 *                    16·q with two bit operations (expert-kernel.ts).
 * The paged path uses its own quantisation, so its output is identical for every cache budget
 * (same bytes, same kernel) but not identical to the resident int4 engine.
 *
 * Folder layout (`<store>/experts-int8/` or `<store>/experts-int4/`):
 *   index.json            { formatVersion, quantization, dim, ffn, layers, experts, topK, normEps, fileBytes }
 *   routers.safetensors   per layer `layers.N.ffn_norm.weight` [dim] and `layers.N.feed_forward.gate.weight`
 *                         [experts, dim], fp32: what speculative prefetch needs to guess the next layer's experts
 *   L<layer>-E<expert>.bin one expert, little-endian:
 *     header (64 B): magic "SIRXPRT1", u32 version, u32 layer, u32 expert, u32 dim, u32 ffn,
 *                    u32 crc32(payload), u32 payload bytes, u32 bits (8 or 4), zero padding
 *     s13 f32[2·ffn]   column scales of w13 (w1 columns first, then w3); int4: already divided by 16
 *     s2  f32[dim]     column scales of w2 (int4: divided by 16)
 *     int8:  w13 i8[dim, 2·ffn] (w1ᵀ | w3ᵀ, row-major [in, out], the B operand of DynamicQuantizeMatMul)
 *            w2  i8[ffn, dim]   (w2ᵀ)
 *     int4:  p13 u8[dim, ffn]   lo nibble = w1ᵀ column c, hi nibble = w3ᵀ column c
 *            p2  u8[ffn, dim/2] lo nibble = w2ᵀ column c, hi nibble = column c + dim/2
 *   Scales come first so every view is 4-byte aligned without padding.
 */
import { type FileHandle, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { modelError, SidecarError } from '../../errors.ts';
import { SafetensorsFile, writeSafetensors } from '../../formats/safetensors.ts';

export type ExpertBits = 4 | 8;
export type ExpertQuantization = 'int8-per-column' | 'int4-per-column';
const QUANTIZATION: Record<ExpertBits, ExpertQuantization> = { 8: 'int8-per-column', 4: 'int4-per-column' };
/** The store's expert folder for each format. */
export const EXPERT_STORE_DIRS: Record<ExpertBits, string> = { 8: 'experts-int8', 4: 'experts-int4' };
const ROUTERS_FILE = 'routers.safetensors';
export const EXPERT_FORMAT_VERSION = 2;
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

/** An expert as the graph runs it: int8 weights and per-column scales. */
export interface Int8ExpertWeights {
  bits: 8;
  s13: Float32Array;
  s2: Float32Array;
  w13: Int8Array;
  w2: Int8Array;
}

/** An int4 expert as stored and cached: two signed nibbles per byte (see the module comment). */
export interface Int4ExpertWeights {
  bits: 4;
  s13: Float32Array;
  s2: Float32Array;
  p13: Uint8Array;
  p2: Uint8Array;
}

/** One expert's weights as views into a single buffer (the page-in destination). */
export type ExpertWeights = Int8ExpertWeights | Int4ExpertWeights;

/** fp32 weights in the checkpoints' [out, in] layout: w1, w3 [ffn, dim], w2 [dim, ffn]. */
export interface ExpertFloatWeights {
  w1: Float32Array;
  w3: Float32Array;
  w2: Float32Array;
}

export function expertPayloadBytes(dim: number, ffn: number, bits: ExpertBits): number {
  return 4 * (2 * ffn + dim) + ((dim * 2 * ffn + ffn * dim) * bits) / 8;
}

export function expertFileBytes(dim: number, ffn: number, bits: ExpertBits): number {
  return HEADER_BYTES + expertPayloadBytes(dim, ffn, bits);
}

export function expertFileName(layer: number, expert: number): string {
  return `L${layer}-E${expert}.bin`;
}

/** Views over `bytes` (a whole expert file) in the documented order. */
function viewsOf(bytes: Uint8Array, dim: number, ffn: number, bits: 8): Int8ExpertWeights;
function viewsOf(bytes: Uint8Array, dim: number, ffn: number, bits: 4): Int4ExpertWeights;
function viewsOf(bytes: Uint8Array, dim: number, ffn: number, bits: ExpertBits): ExpertWeights;
function viewsOf(bytes: Uint8Array, dim: number, ffn: number, bits: ExpertBits): ExpertWeights {
  let offset = bytes.byteOffset + HEADER_BYTES;
  const take = <T>(make: (buffer: ArrayBuffer, offset: number, length: number) => T, length: number, width: number): T => {
    const view = make(bytes.buffer as ArrayBuffer, offset, length);
    offset += length * width;
    return view;
  };
  const s13 = take((b, o, n) => new Float32Array(b, o, n), 2 * ffn, 4);
  const s2 = take((b, o, n) => new Float32Array(b, o, n), dim, 4);
  if (bits === 4) {
    const p13 = take((b, o, n) => new Uint8Array(b, o, n), dim * ffn, 1);
    const p2 = take((b, o, n) => new Uint8Array(b, o, n), (ffn * dim) / 2, 1);
    return { bits, s13, s2, p13, p2 };
  }
  const w13 = take((b, o, n) => new Int8Array(b, o, n), dim * 2 * ffn, 1);
  const w2 = take((b, o, n) => new Int8Array(b, o, n), ffn * dim, 1);
  return { bits, s13, s2, w13, w2 };
}

/**
 * Symmetric per-output-column int8: column n of Bᵀ is row n of `w` ([out, in]); scale = max|row|/127.
 * Writes the transposed int8 values into `into` (row-major [in, outTotal]) at column `columnOffset`.
 */
function quantizeRowsAsColumns(
  w: Float32Array,
  out: number,
  inner: number,
  into: Int8Array,
  scales: Float32Array,
  outTotal: number,
  columnOffset: number,
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

const INT4_MAX = 7;
/** Clip ratios tried for each int4 column (llama.cpp-style search; the least-squares scale wins). */
const INT4_CLIP_RATIOS = [1, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65];

/**
 * Symmetric per-output-column int4 (q ∈ [-7, 7]) with a searched scale: for each clip ratio the
 * values are rounded, the least-squares scale Σwq/Σq² is taken, and the ratio with the smallest
 * squared error is kept. Row n of `w` ([out, in]) becomes packed column `n % half` of `packed`
 * (row-major [in, half]), in the low nibble for n < half and the high nibble above; the stored
 * scale is divided by 16 because the kernel multiplies 16·q (expert-kernel.ts).
 */
function quantizeRowsAsInt4Columns(
  w: Float32Array,
  out: number,
  inner: number,
  packed: Uint8Array,
  scales: Float32Array,
  scaleOffset: number,
): void {
  const half = out / 2;
  const q = new Int8Array(inner);
  const best = new Int8Array(inner);
  for (let n = 0; n < out; n++) {
    const row = n * inner;
    let max = 0;
    for (let k = 0; k < inner; k++) max = Math.max(max, Math.abs(w[row + k]!));
    let bestGain = -1;
    let bestScale = 0;
    if (max > 0) {
      for (const ratio of INT4_CLIP_RATIOS) {
        const inverse = INT4_MAX / (max * ratio);
        let wq = 0;
        let qq = 0;
        for (let k = 0; k < inner; k++) {
          const value = Math.max(-INT4_MAX, Math.min(INT4_MAX, Math.round(w[row + k]! * inverse)));
          q[k] = value;
          wq += w[row + k]! * value;
          qq += value * value;
        }
        // Squared error at the least-squares scale is Σw² − (Σwq)²/Σq²: maximise the second term.
        const gain = qq > 0 ? (wq * wq) / qq : 0;
        if (gain > bestGain) {
          bestGain = gain;
          bestScale = qq > 0 ? wq / qq : 0;
          best.set(q);
        }
      }
    } else best.fill(0);
    scales[scaleOffset + n] = (bestScale > 0 ? bestScale : 1) / 16;
    const column = n % half;
    const high = n >= half;
    for (let k = 0; k < inner; k++) {
      const index = k * half + column;
      const nibble = best[k]! & 0x0f;
      packed[index] = high ? (packed[index]! & 0x0f) | (nibble << 4) : (packed[index]! & 0xf0) | nibble;
    }
  }
}

/** Allocates one expert file's bytes (header zeroed) and returns it with its weight views. */
export function allocateExpert(dim: number, ffn: number, bits: 8): { bytes: Uint8Array; weights: Int8ExpertWeights };
export function allocateExpert(dim: number, ffn: number, bits: 4): { bytes: Uint8Array; weights: Int4ExpertWeights };
export function allocateExpert(dim: number, ffn: number, bits: ExpertBits): { bytes: Uint8Array; weights: ExpertWeights };
export function allocateExpert(dim: number, ffn: number, bits: ExpertBits): { bytes: Uint8Array; weights: ExpertWeights } {
  if (bits === 4 && dim % 2 !== 0) throw modelError(`int4 paged experts need an even model width, not ${dim}`);
  const bytes = new Uint8Array(expertFileBytes(dim, ffn, bits));
  return { bytes, weights: viewsOf(bytes, dim, ffn, bits) };
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
  const q = image.weights;
  if (q.bits === 4) {
    // w1 and w3 share bytes (lo / hi nibble of the same column): one [2·ffn, dim] "row" matrix.
    const w13 = new Float32Array(2 * ffn * dim);
    w13.set(weights.w1, 0);
    w13.set(weights.w3, ffn * dim);
    quantizeRowsAsInt4Columns(w13, 2 * ffn, dim, q.p13, q.s13, 0);
    quantizeRowsAsInt4Columns(weights.w2, dim, ffn, q.p2, q.s2, 0);
  } else {
    quantizeRowsAsColumns(weights.w1, ffn, dim, q.w13, q.s13, 2 * ffn, 0);
    quantizeRowsAsColumns(weights.w3, ffn, dim, q.w13, q.s13, 2 * ffn, ffn);
    quantizeRowsAsColumns(weights.w2, dim, ffn, q.w2, q.s2, dim, 0);
  }
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
    const index: ExpertStoreIndex = { formatVersion: EXPERT_FORMAT_VERSION, quantization: QUANTIZATION[bits], ...shape, fileBytes };
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

/** Quantises every expert of a Mixtral checkpoint into `<storeDir>/experts-int{bits}/`, one at a time. */
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
  return writeExpertStore(
    storeDir,
    { dim, ffn, layers, experts, topK, normEps },
    bits,
    routers,
    async (layer, expert) => {
      const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
      const [w1, w3, w2] = await Promise.all(['w1', 'w3', 'w2'].map((w) => source.read(`${prefix}.${w}.weight`)));
      return quantizeExpert({ w1: w1!, w3: w3!, w2: w2! }, dim, ffn, bits).bytes;
    },
    onProgress,
  );
}

function validateIndex(index: Partial<ExpertStoreIndex>, indexPath: string, bits: ExpertBits): ExpertStoreIndex {
  const positive = (key: keyof ExpertShape) => Number.isInteger(index[key]) && (index[key] as number) > 0;
  if (index.formatVersion !== EXPERT_FORMAT_VERSION || index.quantization !== QUANTIZATION[bits]) {
    throw modelError(
      `expert store index ${indexPath}: unsupported format (formatVersion ${String(index.formatVersion)}, quantization ${String(index.quantization)}; ` +
        `this build reads version ${EXPERT_FORMAT_VERSION}, ${QUANTIZATION[bits]}); convert the checkpoint again`,
    );
  }
  for (const key of ['dim', 'ffn', 'layers', 'experts', 'topK'] as const) {
    if (!positive(key)) throw modelError(`expert store index ${indexPath}: field "${key}" must be a positive integer`);
  }
  if (typeof index.normEps !== 'number' || !(index.normEps > 0))
    throw modelError(`expert store index ${indexPath}: field "normEps" must be a positive number`);
  const full = index as ExpertStoreIndex;
  if (bits === 4 && full.dim % 2 !== 0)
    throw modelError(`expert store index ${indexPath}: int4 experts need an even "dim", not ${full.dim}`);
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
   * Pages one expert into `into` (from `allocate`) with one positioned read on the libuv pool —
   * the event loop stays free. A missing, truncated or corrupt file throws a modelError naming it.
   */
  async read(layer: number, expert: number, into: Uint8Array): Promise<ExpertWeights> {
    const { dim, ffn, fileBytes } = this.index;
    const path = this.path(layer, expert);
    if (into.byteLength !== fileBytes) throw new RangeError(`expert buffer is ${into.byteLength} bytes, expected ${fileBytes}`);
    // The checksum costs about as much as the read itself, so each version of a file is verified
    // once per process, slice by slice while the next slice is being read; the stat that every
    // page-in makes anyway tells whether the file changed since. Corruption below the file system
    // (a disk's bit rot) leaves the stamp unchanged and is not caught after the first read.
    const key = layer * this.index.experts + expert;
    let verify = true;
    let stamp: FileStamp | undefined;
    let checksum = 0;
    let handle: FileHandle | undefined;
    try {
      handle = await open(path, 'r');
      const stat = await handle.stat({ bigint: true });
      stamp = { dev: stat.dev, ino: stat.ino, size: stat.size, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs };
      const verifiedStamp = this.verified.get(key);
      verify = verifiedStamp === undefined || !sameStamp(verifiedStamp, stamp);
      if (verify) this.verified.delete(key);
      const size = Number(stat.size);
      if (size !== fileBytes)
        throw expertFileError(path, layer, expert, `is ${size} bytes, expected ${fileBytes} (truncated or from another model)`);
      const file = handle;
      const readRange = async (from: number, to: number): Promise<number> => {
        for (let done = from; done < to; ) {
          const { bytesRead } = await file.read(into, done, to - done, done);
          if (bytesRead === 0) throw expertFileError(path, layer, expert, `ended after ${done} of ${fileBytes} bytes`);
          done += bytesRead;
        }
        return to;
      };
      const slice = verify ? CHECKSUM_SLICE_BYTES : fileBytes;
      let next = readRange(0, Math.min(slice, fileBytes));
      for (let done = 0; done < fileBytes; ) {
        const start = done;
        done = await next;
        if (done < fileBytes) next = readRange(done, Math.min(done + slice, fileBytes));
        if (verify) checksum = crc32(into.subarray(Math.max(start, HEADER_BYTES), done), checksum);
      }
    } catch (error) {
      if (error instanceof Error && error.name === 'SidecarError') throw error;
      const reason = (error as NodeJS.ErrnoException).code ?? (error instanceof Error ? error.name : 'unknown error');
      throw expertFileError(path, layer, expert, `cannot be read: ${reason}`, error);
    } finally {
      await handle?.close();
    }
    this.checkHeader(path, into, layer, expert, verify ? checksum >>> 0 : null);
    if (verify) this.verified.set(key, stamp);
    return viewsOf(into, dim, ffn, this.bits);
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
      payloadBytes !== bytes.byteLength - HEADER_BYTES ||
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
