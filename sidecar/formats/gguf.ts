/**
 * GGUF reader (llama.cpp's single-file format): metadata and tensor directory parsed by
 * @huggingface/gguf, tensor data read by byte range from a FileHandle, one tensor (or one slice of
 * one) at a time, so a 50 GB file is never in memory at once.
 *
 * Shapes are GGUF's own: ne0 first, ne0 being the innermost (contiguous) dimension, i.e. a
 * row-major [rows, cols] matrix is listed [cols, rows]. Data types read: F32, F16, BF16, Q8_0,
 * Q4_0 (blocks.ts) and the K-quants Q4_K, Q5_K, Q6_K (k-quants.ts); any other type is listed but
 * refused, naming file, tensor and type, when read.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { GGMLQuantizationType, gguf, type MetadataValue } from '@huggingface/gguf';
import { modelError } from '../errors.ts';
import { BLOCK, BLOCK_BYTES, type BlockFormat, dequantizeBlocks } from './blocks.ts';
import { dequantizeKQuant, K_BLOCK_BYTES, type KQuantFormat, QK_K } from './k-quants.ts';
import { decodeFloats } from './safetensors.ts';

export type GgufDType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K';

interface TypeLayout {
  dtype: GgufDType;
  /** Values per block (1 for plain floats). */
  blockValues: number;
  blockBytes: number;
}

const LAYOUTS = new Map<number, TypeLayout>([
  [GGMLQuantizationType.F32, { dtype: 'F32', blockValues: 1, blockBytes: 4 }],
  [GGMLQuantizationType.F16, { dtype: 'F16', blockValues: 1, blockBytes: 2 }],
  [GGMLQuantizationType.BF16, { dtype: 'BF16', blockValues: 1, blockBytes: 2 }],
  [GGMLQuantizationType.Q8_0, { dtype: 'Q8_0', blockValues: BLOCK, blockBytes: BLOCK_BYTES.q8_0 }],
  [GGMLQuantizationType.Q4_0, { dtype: 'Q4_0', blockValues: BLOCK, blockBytes: BLOCK_BYTES.q4_0 }],
  [GGMLQuantizationType.Q4_K, { dtype: 'Q4_K', blockValues: QK_K, blockBytes: K_BLOCK_BYTES.q4_k }],
  [GGMLQuantizationType.Q5_K, { dtype: 'Q5_K', blockValues: QK_K, blockBytes: K_BLOCK_BYTES.q5_k }],
  [GGMLQuantizationType.Q6_K, { dtype: 'Q6_K', blockValues: QK_K, blockBytes: K_BLOCK_BYTES.q6_k }],
]);

const BLOCK_FORMATS: Partial<Record<GgufDType, BlockFormat>> = { Q8_0: 'q8_0', Q4_0: 'q4_0' };
const K_FORMATS: Partial<Record<GgufDType, KQuantFormat>> = { Q4_K: 'q4_k', Q5_K: 'q5_k', Q6_K: 'q6_k' };

export interface GgufTensor {
  name: string;
  /** The type's name (GGML's), also for types this reader cannot decode. */
  typeName: string;
  /** Set when this reader can decode the type. */
  layout: TypeLayout | undefined;
  /** GGUF order: ne0 (innermost) first. */
  shape: number[];
  /** Absolute offset of the first byte in the file. */
  byteOffset: number;
  /** Bytes the shape and type imply (0 when the type is unknown to this reader). */
  byteLength: number;
}

/** Bytes of one row of `ne0` values of `layout` (ne0 a multiple of the block). */
export function rowBytes(layout: TypeLayout, ne0: number): number {
  return (ne0 / layout.blockValues) * layout.blockBytes;
}

function toNumber(value: bigint | number): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`${value} is too large`);
  return n;
}

export class GgufFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
    readonly metadata: Record<string, MetadataValue>,
    readonly tensors: Map<string, GgufTensor>,
    /** Bytes before the tensor data: header, metadata and tensor directory. */
    readonly dataOffset: number,
  ) {}

  static async open(path: string): Promise<GgufFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      throw modelError(`cannot open GGUF file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, error);
    }
    try {
      const { size } = await handle.stat();
      const magic = Buffer.alloc(4);
      await handle.read(magic, 0, 4, 0);
      if (size < 4 || magic.toString('latin1') !== 'GGUF') {
        throw modelError(`${path} is not a GGUF file (it does not start with the "GGUF" magic bytes)`);
      }
      let parsed: Awaited<ReturnType<typeof gguf>>;
      try {
        parsed = await gguf(path, { allowLocalFile: true });
      } catch (error) {
        // The parser runs past the end of a file cut short inside its header.
        const why = error instanceof RangeError ? 'the header is truncated' : (error as Error).message;
        throw modelError(`${path} is not a valid GGUF file: ${why}`, error);
      }
      if (!parsed.littleEndian) throw modelError(`${path}: big-endian GGUF files are not supported`);
      const dataOffset = toNumber(parsed.tensorDataOffset);
      // The parser reads past the end of a short file as zeros rather than failing.
      if (parsed.tensorInfoByteRange[1] > size || dataOffset > size) {
        throw modelError(`${path} is truncated: the file ends (at byte ${size}) inside its header`);
      }
      const tensors = new Map<string, GgufTensor>();
      for (const info of parsed.tensorInfos) {
        const shape = info.shape.map(toNumber);
        const layout = LAYOUTS.get(info.dtype);
        const typeName = GGMLQuantizationType[info.dtype] ?? `type ${info.dtype}`;
        let byteLength = 0;
        if (layout) {
          const ne0 = shape[0] ?? 1;
          if (ne0 % layout.blockValues !== 0) {
            throw modelError(
              `${path}: tensor "${info.name}" is ${typeName} with rows of ${ne0} values, not a multiple of its ${layout.blockValues}-value blocks`,
            );
          }
          byteLength = rowBytes(layout, ne0) * shape.slice(1).reduce((a, b) => a * b, 1);
        }
        tensors.set(info.name, { name: info.name, typeName, layout, shape, byteOffset: dataOffset + toNumber(info.offset), byteLength });
      }
      checkExtents(path, size, [...tensors.values()]);
      return new GgufFile(path, handle, size, parsed.metadata as Record<string, MetadataValue>, tensors, dataOffset);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  info(name: string): GgufTensor {
    const info = this.tensors.get(name);
    if (!info) throw modelError(`${this.path}: tensor "${name}" is missing`);
    return info;
  }

  /** The layout of a tensor this reader can decode; else an error naming file, tensor and type. */
  layoutOf(name: string): TypeLayout {
    const info = this.info(name);
    if (!info.layout) {
      throw modelError(
        `${this.path}: tensor "${name}" has type ${info.typeName}, which Sirocco cannot read (supported: ${[...LAYOUTS.values()].map((l) => l.dtype).join(', ')})`,
      );
    }
    return info.layout;
  }

  /** `length` bytes of the file from `position` (header or data). */
  async readFileBytes(position: number, length: number): Promise<Uint8Array> {
    const bytes = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(bytes, done, length - done, position + done);
      if (bytesRead === 0) throw modelError(`${this.path} is truncated (the file ended at byte ${position + done})`);
      done += bytesRead;
    }
    return bytes;
  }

  /** Raw bytes: the whole tensor, or `length` bytes from byte `start` of it. */
  async readBytes(name: string, start = 0, length?: number): Promise<Uint8Array> {
    const info = this.info(name);
    const count = length ?? info.byteLength - start;
    if (start < 0 || start + count > info.byteLength) throw new RangeError(`bytes ${start}+${count} are outside tensor "${name}"`);
    const bytes = new Uint8Array(count);
    let done = 0;
    while (done < count) {
      const { bytesRead } = await this.handle.read(bytes, done, count - done, info.byteOffset + start + done);
      if (bytesRead === 0) throw modelError(`${this.path}: tensor "${name}" is truncated (the file ended while reading it)`);
      done += bytesRead;
    }
    return bytes;
  }

  /**
   * Values as float32 (dequantised): the whole tensor, or `rows` rows from row `firstRow`, a row
   * being ne0 values (a slice of a stacked tensor is a run of rows).
   */
  async readFloat32(name: string, firstRow = 0, rows?: number): Promise<Float32Array> {
    const info = this.info(name);
    const layout = this.layoutOf(name);
    const ne0 = info.shape[0] ?? 1;
    const perRow = rowBytes(layout, ne0);
    const count = rows ?? info.byteLength / perRow - firstRow;
    const bytes = await this.readBytes(name, firstRow * perRow, count * perRow);
    return decodeTensorBytes(layout.dtype, bytes, count * ne0);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** `count` values from bytes of `dtype`. */
export function decodeTensorBytes(dtype: GgufDType, bytes: Uint8Array, count: number): Float32Array {
  if (dtype === 'F32' || dtype === 'F16' || dtype === 'BF16') return decodeFloats(bytes, dtype);
  const block = BLOCK_FORMATS[dtype];
  if (block) return dequantizeBlocks(block, bytes, 1, count);
  return dequantizeKQuant(K_FORMATS[dtype] as KQuantFormat, bytes, count);
}

/** Every tensor lies inside the file, after the header, without overlapping the next one. */
function checkExtents(path: string, size: number, tensors: GgufTensor[]): void {
  const sorted = [...tensors].sort((a, b) => a.byteOffset - b.byteOffset);
  for (const [i, tensor] of sorted.entries()) {
    const end = tensor.byteOffset + tensor.byteLength;
    if (end > size) {
      throw modelError(
        `${path} is truncated: tensor "${tensor.name}" (${tensor.typeName} [${tensor.shape.join(', ')}]) needs bytes up to ${end}, the file has ${size}`,
      );
    }
    const next = sorted[i + 1];
    if (next && tensor.layout && next.byteOffset < end) {
      throw modelError(
        `${path}: tensor "${tensor.name}" (${tensor.typeName} [${tensor.shape.join(', ')}]) is ${tensor.byteLength} bytes, ` +
          `more than the ${next.byteOffset - tensor.byteOffset} before the next tensor "${next.name}": its shape or type does not match its data`,
      );
    }
  }
}
