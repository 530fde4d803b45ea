/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors#format).
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: {...} }`, then the data
 * block; offsets are relative to the data block. The reader validates the whole header up front
 * and then reads one tensor at a time, so a 15 GB checkpoint is never in memory at once.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { basename } from 'node:path';
import { modelError } from '../errors.ts';

export type DType = 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I32' | 'I64';

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute offset of the tensor's first byte in the file. */
  byteOffset: number;
  byteLength: number;
  file: string;
}

const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, I8: 1, U8: 1, I32: 4, I64: 8 };

/** Headers larger than this are not real checkpoints (HF caps headers at 100 MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_BYTES, value);
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      throw modelError(`cannot open safetensors file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, error);
    }
    try {
      const { tensors, metadata } = await readHeader(path, handle);
      return new SafetensorsFile(path, handle, tensors, metadata);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw modelError(`tensor "${name}" not found in ${this.path}`);
    return info;
  }

  /** The tensor's raw bytes, exactly as stored (or `length` of them from byte `start`). */
  async readBytes(name: string, start = 0, length?: number): Promise<Uint8Array> {
    const info = this.info(name);
    const count = Math.max(0, Math.min(length ?? info.byteLength, info.byteLength - start));
    const bytes = new Uint8Array(count);
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await this.handle.read(bytes, done, bytes.length - done, info.byteOffset + start + done);
      if (bytesRead === 0) throw modelError(`${this.path}: tensor "${name}" is truncated (file ended while reading it)`);
      done += bytesRead;
    }
    return bytes;
  }

  /** Reads one floating-point tensor as Float32Array, converting F16/BF16. */
  async readFloat32(name: string): Promise<Float32Array> {
    const info = this.info(name);
    if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16') {
      throw modelError(`${this.path}: tensor "${name}" has unsupported dtype ${info.dtype} (expected F32, F16 or BF16)`);
    }
    const bytes = await this.readBytes(name);
    return decodeFloats(bytes, info.dtype);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

async function readHeader(path: string, handle: FileHandle) {
  const file = basename(path);
  const { size } = await handle.stat();
  const corrupt = (why: string) => modelError(`${path} is not a valid safetensors file: ${why}`);
  if (size < 8) throw corrupt(`file is ${size} bytes, too short for a header`);

  const prefix = Buffer.alloc(8);
  await handle.read(prefix, 0, 8, 0);
  const headerLength = prefix.readBigUInt64LE(0);
  if (headerLength > BigInt(Math.min(size - 8, MAX_HEADER_BYTES))) {
    throw corrupt(`header length ${headerLength} exceeds the file (${size} bytes); the file is truncated or corrupt`);
  }
  const headerBytes = Buffer.alloc(Number(headerLength));
  await handle.read(headerBytes, 0, headerBytes.length, 8);

  let header: unknown;
  try {
    header = JSON.parse(headerBytes.toString('utf8'));
  } catch (error) {
    throw corrupt(`header is not valid JSON (${(error as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw corrupt('header is not a JSON object');

  const dataStart = 8 + headerBytes.length;
  const dataSize = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = (entry ?? {}) as Record<string, string>;
      continue;
    }
    const bad = (why: string) => modelError(`${path}: tensor "${name}" ${why}`);
    if (typeof entry !== 'object' || entry === null) throw bad('has a malformed header entry');
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDType(dtype)) throw bad(`has unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw bad(`has an invalid shape ${JSON.stringify(shape)}`);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      throw bad(`has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) throw bad(`has ${end - begin} bytes but dtype ${dtype} and shape [${shape.join(', ')}] need ${expected}`);
    if (end > dataSize) throw bad(`lies beyond the end of ${file} (offset ${end} > ${dataSize} data bytes): the file is truncated`);
    tensors.set(name, { name, dtype, shape: shape as number[], byteOffset: dataStart + begin, byteLength: expected, file: path });
  }
  return { tensors, metadata };
}

// ---- float conversions -------------------------------------------------------------------------

let halfTable: Float32Array | undefined;

/** All 65536 half-precision values decoded once; decoding becomes a table lookup. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0) halfTable[h] = sign * mantissa * 2 ** -24;
    else if (exponent === 31) halfTable[h] = mantissa ? NaN : sign * Infinity;
    else halfTable[h] = sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
  }
  return halfTable;
}

export function decodeFloats(bytes: Uint8Array, dtype: 'F32' | 'F16' | 'BF16'): Float32Array {
  // Copying into a fresh aligned buffer: the file's offsets need not be aligned.
  if (dtype === 'F32') return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const count = bytes.byteLength / 2;
  const halves = new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const out = new Float32Array(count);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) bits[i] = halves[i]! << 16;
  } else {
    const table = halfToFloatTable();
    for (let i = 0; i < count; i++) out[i] = table[halves[i]!]!;
  }
  return out;
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** float32 → bfloat16 bits, round to nearest even (NaN stays NaN). */
function floatToBf16(value: number): number {
  scratch[0] = value;
  const bits = scratchBits[0]!; // one-element views of the same four bytes
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 → IEEE half bits, round to nearest even, overflow to infinity, subnormals kept. */
function floatToHalf(value: number): number {
  scratch[0] = value;
  const bits = scratchBits[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const rounded = (mantissa + (1 << (shift - 1)) - 1 + ((mantissa >>> shift) & 1)) >>> shift;
    return sign | rounded;
  }
  const rounded = ((e << 10) | (mantissa >>> 13)) + (((mantissa & 0x1fff) + ((mantissa >>> 13) & 1) + 0xfff) >>> 13);
  return sign | rounded;
}

function encodeFloats(data: Float32Array, dtype: 'F32' | 'F16' | 'BF16'): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  const convert = dtype === 'BF16' ? floatToBf16 : floatToHalf;
  for (let i = 0; i < data.length; i++) out[i] = convert(data[i]!);
  return new Uint8Array(out.buffer);
}

// ---- writer -----------------------------------------------------------------------------------

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  data: Float32Array;
}

/** Writes a safetensors file, converting each tensor to its dtype; tensors are written in order. */
export async function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const tensor of tensors) {
    const elements = tensor.shape.reduce((a, b) => a * b, 1);
    if (elements !== tensor.data.length) {
      throw modelError(
        `writeSafetensors ${path}: tensor "${tensor.name}" has ${tensor.data.length} values but shape [${tensor.shape.join(', ')}]`,
      );
    }
    const length = elements * DTYPE_BYTES[tensor.dtype];
    header[tensor.name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + length] };
    offset += length;
  }
  // Pad the header with spaces so the data block starts 8-byte aligned, as the reference writer does.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  const handle = await open(path, 'w');
  try {
    await handle.write(prefix);
    await handle.write(headerBytes);
    for (const tensor of tensors) await handle.write(encodeFloats(tensor.data, tensor.dtype));
  } finally {
    await handle.close();
  }
}
