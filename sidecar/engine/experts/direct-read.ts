/**
 * Whole-file reads that bypass the OS page cache (O_DIRECT), for expert page-ins: the expert cache
 * already holds the bytes it wants kept, so a second copy in the page cache only competes with the
 * cache budget for RAM (docs/expert-paging.md).
 *
 * O_DIRECT's contract, which the caller keeps:
 *   - The destination's memory address must be aligned to DIRECT_IO_ALIGNMENT. JavaScript cannot
 *     see an address, but a WebAssembly.Memory's buffer starts on a page boundary, so a view into
 *     one at a byteOffset that is a multiple of 4096 is aligned. A plain ArrayBuffer, Buffer or
 *     SharedArrayBuffer is NOT (measured on Linux/glibc: large ones sit 16 bytes past a page, from
 *     malloc's chunk header); a read into one fails with EINVAL and falls back to a buffered read.
 *   - The destination must hold `bytes` rounded up to 4096: the last read asks for the whole final
 *     block, so the bytes past `bytes` up to that boundary may be overwritten (with the file's
 *     bytes there, if it is longer).
 *   - A WebAssembly.Memory must not grow while a read is in flight: growing detaches the view the
 *     read and onSlice use.
 * readWhole checks what it can (byteOffset and capacity) and throws a RangeError otherwise. Where
 * the file system refuses O_DIRECT (EINVAL at open or read: some overlay and network file systems,
 * tmpfs before Linux 6.6) or the platform has none, the read is a normal buffered one and the result
 * says `direct: false`, so callers can report which ran.
 */
import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';

/** Memory address, file offset and length granularity of an O_DIRECT read (the largest common block size). */
export const DIRECT_IO_ALIGNMENT = 4096;
/** Slice size: large enough that one read keeps the device's queue full, small enough to checksum while the next lands. */
const DEFAULT_SLICE_BYTES = 8 * 1024 * 1024;
/**
 * Slices in flight at once: the next is already queued while one is awaited, so the device always
 * has a request (measured on a virtio disk: ≈ 800 MiB/s with one, ≈ 1050 MiB/s with two, no gain
 * from four).
 */
const READ_DEPTH = 2;

export interface ReadWholeOptions {
  /** Bypass the page cache (default: true on Linux, where O_DIRECT exists). */
  direct?: boolean;
  /** Called in order after each slice [from, to) has landed, while the next slice is being read. */
  onSlice?: (from: number, to: number) => void;
  /** Bytes per read; a multiple of DIRECT_IO_ALIGNMENT when direct (default 8 MiB). */
  sliceBytes?: number;
}

/** A read or open that O_DIRECT cannot serve here; the read resumes buffered at `resumeAt`. */
class DirectUnsupported extends Error {
  constructor(readonly resumeAt: number) {
    super('O_DIRECT is not supported here');
  }
}

/**
 * Reads exactly `bytes` bytes of the file at `path` into `into[0, bytes)`. A file shorter than
 * `bytes` throws an Error with code 'ESHORT' and `bytesRead`; open and read errors propagate as is.
 */
export async function readWhole(
  path: string,
  into: Uint8Array,
  bytes: number,
  options: ReadWholeOptions = {},
): Promise<{ direct: boolean }> {
  const { onSlice, sliceBytes = DEFAULT_SLICE_BYTES } = options;
  const wantDirect = options.direct ?? process.platform === 'linux';
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`bytes must be a non-negative integer, got ${bytes}`);
  if (!Number.isSafeInteger(sliceBytes) || sliceBytes <= 0)
    throw new RangeError(`sliceBytes must be a positive integer, got ${sliceBytes}`);
  if (into.byteLength < bytes) throw new RangeError(`destination holds ${into.byteLength} bytes, ${bytes} asked for`);
  if (wantDirect) {
    if (into.byteOffset % DIRECT_IO_ALIGNMENT !== 0)
      throw new RangeError(
        `direct read destination must start on a ${DIRECT_IO_ALIGNMENT}-byte boundary, byteOffset is ${into.byteOffset}`,
      );
    const capacity = directReadCapacity(bytes);
    if (into.byteLength < capacity)
      throw new RangeError(`direct read destination holds ${into.byteLength} bytes; ${bytes} bytes need ${capacity} (whole blocks)`);
    if (sliceBytes % DIRECT_IO_ALIGNMENT !== 0)
      throw new RangeError(`sliceBytes must be a multiple of ${DIRECT_IO_ALIGNMENT} for a direct read, got ${sliceBytes}`);
  }

  let resumeAt = 0;
  // Undefined where the platform has no O_DIRECT (macOS, Windows).
  const oDirect: number | undefined = constants.O_DIRECT;
  if (wantDirect && oDirect !== undefined) {
    const handle = await openDirect(path, oDirect);
    if (handle) {
      try {
        await pump(handle, into, bytes, 0, sliceBytes, true, onSlice);
        return { direct: true };
      } catch (error) {
        if (!(error instanceof DirectUnsupported)) throw error;
        resumeAt = error.resumeAt;
      } finally {
        await handle.close();
      }
    }
  }
  const handle = await open(path, 'r');
  try {
    await pump(handle, into, bytes, resumeAt, sliceBytes, false, onSlice);
  } finally {
    await handle.close();
  }
  return { direct: false };
}

async function openDirect(path: string, oDirect: number): Promise<FileHandle | null> {
  try {
    return await open(path, constants.O_RDONLY | oDirect);
  } catch (error) {
    if (isEinval(error)) return null;
    throw error;
  }
}

/**
 * Reads [start, bytes) slice by slice, READ_DEPTH slices in flight, so the next slices are read
 * while `onSlice` handles the one that landed. `start` is a slice boundary, so a buffered resume reports the same slices.
 */
async function pump(
  handle: FileHandle,
  into: Uint8Array,
  bytes: number,
  start: number,
  sliceBytes: number,
  direct: boolean,
  onSlice: ReadWholeOptions['onSlice'],
): Promise<void> {
  const sliceEnd = (from: number): number => Math.min(from + sliceBytes, bytes);
  /** Reads [from, to) and returns how far the file went (< to only at end of file). */
  const readSlice = async (from: number, to: number): Promise<number> => {
    let at = from;
    while (at < to) {
      // Direct reads ask for whole blocks; only the file's last block comes back short.
      const length = direct ? directReadCapacity(to - at) : to - at;
      let bytesRead: number;
      try {
        ({ bytesRead } = await handle.read(into, at, length, at));
      } catch (error) {
        if (direct && isEinval(error)) throw new DirectUnsupported(from);
        throw error;
      }
      if (bytesRead === 0) break;
      at += bytesRead;
      // A direct read that ends inside a block has reached the end of the file.
      if (direct && at % DIRECT_IO_ALIGNMENT !== 0) break;
    }
    return Math.min(at, to);
  };

  // Reads in flight, oldest first; each already has a no-op handler so a failure behind the one
  // being awaited is not an unhandled rejection (it surfaces when its turn comes).
  const inFlight: Promise<number>[] = [];
  let issued = start;
  const issue = (): void => {
    if (issued >= bytes) return;
    const read = readSlice(issued, sliceEnd(issued));
    read.catch(() => undefined);
    inFlight.push(read);
    issued = sliceEnd(issued);
  };
  try {
    for (let depth = 0; depth < READ_DEPTH; depth++) issue();
    for (let from = start; from < bytes; ) {
      const to = sliceEnd(from);
      // The queue always holds the read of [from, to) here; `?? from` only satisfies the type.
      const reached = (await inFlight.shift()) ?? from;
      if (reached < to) throw Object.assign(new Error(`ended after ${reached} of ${bytes} bytes`), { code: 'ESHORT', bytesRead: reached });
      issue();
      onSlice?.(from, to);
      from = to;
    }
  } finally {
    // Reads still in flight (a failure or onSlice threw) write into `into` and use the handle: let
    // them land before the caller closes the one or reuses the other.
    await Promise.allSettled(inFlight);
  }
}

/** Bytes a destination must hold for a direct read of `bytes`: whole DIRECT_IO_ALIGNMENT blocks. */
export function directReadCapacity(bytes: number): number {
  return Math.ceil(bytes / DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT;
}

function isEinval(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'EINVAL';
}
