/**
 * A minimal GGUF (v3, little-endian) writer for tests: build files the fixtures do not cover (tied
 * output, old per-expert Mixtral layout, unsupported types…) or rewrite a fixture with one change.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { gguf, type MetadataValue } from '@huggingface/gguf';

/** GGUF metadata value types. */
const T = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10 } as const;

export interface GgufTensorSpec {
  name: string;
  /** ne0 first. */
  shape: number[];
  /** GGML type id (0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 12 Q4_K…). */
  type: number;
  data: Uint8Array;
}

class Out {
  private readonly parts: Buffer[] = [];
  length = 0;
  push(buffer: Buffer): void {
    this.parts.push(buffer);
    this.length += buffer.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  str(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  value(v: MetadataValue, type?: number): void {
    if (Array.isArray(v)) {
      // Strings, or numbers: f32 when any is fractional, else i32.
      const isFloat = v.some((x) => typeof x === 'number' && !Number.isInteger(x));
      const sub = typeof v[0] === 'string' ? T.string : isFloat ? T.f32 : T.i32;
      this.u32(sub);
      this.u64(v.length);
      for (const x of v) this.scalar(x as MetadataValue, sub);
      return;
    }
    this.scalar(v, type ?? this.typeOf(v));
  }
  typeOf(v: MetadataValue): number {
    if (typeof v === 'string') return T.string;
    if (typeof v === 'boolean') return T.bool;
    if (typeof v === 'bigint') return T.u64;
    return Number.isInteger(v) ? T.u32 : T.f32;
  }
  scalar(v: MetadataValue, type: number): void {
    if (type === T.string) {
      this.str(String(v));
      return;
    }
    const b = Buffer.alloc(type === T.u64 ? 8 : type === T.bool ? 1 : 4);
    if (type === T.bool) b.writeUInt8(v ? 1 : 0);
    else if (type === T.f32) b.writeFloatLE(Number(v));
    else if (type === T.i32) b.writeInt32LE(Number(v));
    else if (type === T.u64) b.writeBigUInt64LE(BigInt(v as number | bigint));
    else b.writeUInt32LE(Number(v));
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Writes a GGUF file; metadata values keep their JS type (integers → u32, fractions → f32, bigint → u64). */
export function writeGguf(path: string, metadata: Record<string, MetadataValue>, tensors: GgufTensorSpec[]): void {
  const out = new Out();
  out.push(Buffer.from('GGUF', 'latin1'));
  out.u32(3);
  out.u64(tensors.length);
  const entries = Object.entries(metadata).filter(([key]) => !['version', 'tensor_count', 'kv_count'].includes(key));
  out.u64(entries.length);
  for (const [key, value] of entries) {
    out.str(key);
    out.u32(Array.isArray(value) ? T.array : out.typeOf(value));
    out.value(value);
  }
  let offset = 0;
  const align = (n: number) => Math.ceil(n / 32) * 32;
  for (const tensor of tensors) {
    out.str(tensor.name);
    out.u32(tensor.shape.length);
    for (const d of tensor.shape) out.u64(d);
    out.u32(tensor.type);
    out.u64(offset);
    offset = align(offset + tensor.data.byteLength);
  }
  out.push(Buffer.alloc(align(out.length) - out.length));
  for (const tensor of tensors) {
    out.push(Buffer.from(tensor.data));
    out.push(Buffer.alloc(align(tensor.data.byteLength) - tensor.data.byteLength));
  }
  writeFileSync(path, out.concat());
}

/** A GGUF file's metadata and tensors (with their data), to rewrite with changes. */
export async function readGguf(path: string): Promise<{ metadata: Record<string, MetadataValue>; tensors: GgufTensorSpec[] }> {
  const parsed = await gguf(path, { allowLocalFile: true });
  const bytes = readFileSync(path);
  const start = Number(parsed.tensorDataOffset);
  const infos = parsed.tensorInfos.map((t) => ({
    name: t.name,
    shape: t.shape.map(Number),
    type: t.dtype,
    offset: start + Number(t.offset),
  }));
  const sorted = [...infos].sort((a, b) => a.offset - b.offset);
  const tensors = infos.map((info) => {
    const next = sorted.find((t) => t.offset > info.offset);
    return { name: info.name, shape: info.shape, type: info.type, data: bytes.subarray(info.offset, next ? next.offset : bytes.length) };
  });
  return { metadata: parsed.metadata as Record<string, MetadataValue>, tensors };
}
