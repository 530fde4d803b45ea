import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRECT_IO_ALIGNMENT, readWhole } from './direct-read.ts';

/** A WebAssembly.Memory's buffer starts on a page boundary: the aligned destination O_DIRECT needs. */
function alignedBuffer(bytes: number): Uint8Array {
  return new Uint8Array(new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) }).buffer);
}

const ODD_SIZE = 3 * DIRECT_IO_ALIGNMENT + 64 + 7;
const isLinux = process.platform === 'linux';

describe('readWhole', () => {
  let dir: string;
  let content: Buffer;
  let file: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sirocco-direct-read-'));
    content = randomBytes(ODD_SIZE);
    file = join(dir, 'expert.bin');
    await writeFile(file, content);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads exactly the asked bytes of a file whose size is not a multiple of the block size', async () => {
    const into = alignedBuffer(ODD_SIZE);
    into.fill(0xaa);
    const { direct } = await readWhole(file, into, ODD_SIZE);
    expect(Buffer.from(into.subarray(0, ODD_SIZE)).equals(content)).toBe(true);
    // This checkout's temporary folder is on a file system with O_DIRECT (ext4, or tmpfs from Linux 6.6).
    if (isLinux) expect(direct).toBe(true);
  });

  it('gives the same bytes from a buffered read, which needs neither alignment nor whole blocks', async () => {
    const into = new Uint8Array(ODD_SIZE + 1).subarray(1);
    expect(await readWhole(file, into, ODD_SIZE, { direct: false })).toEqual({ direct: false });
    expect(Buffer.from(into).equals(content)).toBe(true);
  });

  it('falls back to a buffered read when the memory behind the view is not aligned (EINVAL)', async () => {
    // A plain ArrayBuffer passes the byteOffset check but almost always sits off a page boundary
    // in memory (malloc aligns to 16 bytes); one in a few hundred lands on one, so try a few.
    const direct: boolean[] = [];
    for (let attempt = 0; attempt < 4; attempt++) {
      const into = new Uint8Array(new ArrayBuffer(4 * DIRECT_IO_ALIGNMENT));
      const slices: [number, number][] = [];
      const result = await readWhole(file, into, ODD_SIZE, {
        sliceBytes: DIRECT_IO_ALIGNMENT,
        onSlice: (from, to) => slices.push([from, to]),
      });
      expect(Buffer.from(into.subarray(0, ODD_SIZE)).equals(content)).toBe(true);
      expect(slices.at(-1)).toEqual([3 * DIRECT_IO_ALIGNMENT, ODD_SIZE]);
      expect(slices.length).toBe(4);
      direct.push(result.direct);
    }
    if (isLinux) expect(direct).toContain(false);
  });

  it('refuses a destination off a block boundary or too small for whole blocks', async () => {
    const memory = alignedBuffer(8 * DIRECT_IO_ALIGNMENT);
    await expect(readWhole(file, memory.subarray(64), ODD_SIZE, { direct: true })).rejects.toThrow(RangeError);
    await expect(readWhole(file, memory.subarray(64), ODD_SIZE, { direct: true })).rejects.toThrow(/4096-byte boundary, byteOffset is 64/);
    await expect(readWhole(file, memory.subarray(0, ODD_SIZE), ODD_SIZE, { direct: true })).rejects.toThrow(/need 16384 \(whole blocks\)/);
    await expect(readWhole(file, memory, ODD_SIZE, { direct: true, sliceBytes: 1000 })).rejects.toThrow(RangeError);
    await expect(readWhole(file, new Uint8Array(10), ODD_SIZE, { direct: false })).rejects.toThrow(RangeError);
  });

  it.each([true, false])('throws ESHORT with the bytes read when the file is shorter than asked (direct: %s)', async (direct) => {
    const into = alignedBuffer(2 * ODD_SIZE);
    const failure = readWhole(file, into, ODD_SIZE + 5000, { direct, sliceBytes: DIRECT_IO_ALIGNMENT });
    await expect(failure).rejects.toMatchObject({
      code: 'ESHORT',
      bytesRead: ODD_SIZE,
      message: `ended after ${ODD_SIZE} of ${ODD_SIZE + 5000} bytes`,
    });
  });

  it.each([true, false])('calls onSlice in order over [0, bytes) with the next slice already in flight (direct: %s)', async (direct) => {
    const into = alignedBuffer(ODD_SIZE);
    const slices: [number, number][] = [];
    await readWhole(file, into, ODD_SIZE, {
      direct,
      sliceBytes: DIRECT_IO_ALIGNMENT,
      onSlice: (from, to) => {
        // The slice has landed by the time it is reported.
        expect(Buffer.from(into.subarray(from, to)).equals(content.subarray(from, to))).toBe(true);
        slices.push([from, to]);
      },
    });
    expect(slices).toEqual([
      [0, 4096],
      [4096, 8192],
      [8192, 12288],
      [12288, ODD_SIZE],
    ]);
  });

  it('reads a prefix of a longer file and an empty range', async () => {
    const into = alignedBuffer(ODD_SIZE);
    await readWhole(file, into, 5000);
    expect(Buffer.from(into.subarray(0, 5000)).equals(content.subarray(0, 5000))).toBe(true);
    const slices: [number, number][] = [];
    await readWhole(file, into, 0, { onSlice: (from, to) => slices.push([from, to]) });
    expect(slices).toEqual([]);
  });

  it('lets an in-flight read land before an onSlice error propagates', async () => {
    const into = alignedBuffer(ODD_SIZE);
    const failure = readWhole(file, into, ODD_SIZE, {
      sliceBytes: DIRECT_IO_ALIGNMENT,
      onSlice: () => {
        throw new Error('checksum mismatch');
      },
    });
    await expect(failure).rejects.toThrow('checksum mismatch');
  });

  it('reports a missing file as the open error', async () => {
    await expect(readWhole(join(dir, 'missing.bin'), alignedBuffer(4096), 10)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
