/**
 * `--expert-cache-mb auto`: the expert cache budget this machine can afford, worked out once at
 * load from the memory the kernel says is available.
 *
 * Budget = MemAvailable (or a container's memory limit less its usage, when lower)
 *          − headroom − the dense weights still to be loaded,
 * rounded down to whole experts, at most every expert.
 *
 * Headroom = max(1 GiB, 20% of MemTotal). It is what the process needs beyond the weights and does
 * not know at load: onnxruntime's arenas and activations (tens to hundreds of MiB per session), the
 * KV caches (they grow with the batch and the context), the JS heap and event loop, and the rest of
 * the machine (the kernel does not count its own reserves and the other processes' growth in
 * MemAvailable). 1 GiB covers a small machine's working set; 20% keeps a machine away from reclaim
 * pressure, where the kernel would evict the pages the cache relies on (page tables, the graphs'
 * mapped files) and swap or OOM-kill first. Measured on a 23 GiB VM with the full Mixtral 8x7B
 * shape: page-ins took three times as long (p50 13–15 → 37–39 ms) and decode fell from 1.8–2.0 to
 * 1.3 tokens/s once the process held 19.1 GiB (budgets of 17000–18000 MiB) instead of 18.1 GiB
 * (16000 MiB); 10% would have chosen 18.5 GiB of experts there, 20% chooses ~16. Too small a
 * budget costs a few hit-rate points, too large a one a third of the speed or the process.
 * Page cache counts as available: expert page-ins read with O_DIRECT (experts/direct-read.ts), so
 * the cache's bytes are not mirrored there and the kernel may reclaim what is cached.
 */
import { readFileSync } from 'node:fs';
import { freemem, totalmem } from 'node:os';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** Floor of the headroom: a small machine's OS, runtime arenas and KV caches. */
export const MIN_HEADROOM_BYTES = GiB;
/** Share of MemTotal kept free on a large machine. */
export const HEADROOM_FRACTION = 0.2;

export interface AutoExpertCacheOptions {
  /** Bytes one expert takes in the cache. */
  expertBytes: number;
  /** Every expert of every layer (layers × experts per layer). */
  totalExperts: number;
  /** Bytes the dense part of the model (attention, norms, embeddings, head) will still allocate; 0 when already loaded. */
  residentBytes: number;
  /** /proc/meminfo's text (tests); default: read it, else os.freemem() and os.totalmem(). */
  meminfo?: string;
  /**
   * The container's memory limit and usage in bytes (tests); default: read from cgroup v2 or v1.
   * null: no limit.
   */
  cgroup?: { limitBytes: number; usageBytes: number } | null;
}

/** The auto budget in bytes (0 when not even one expert fits) and a sentence saying how it came about. */
export function autoExpertCacheBytes(options: AutoExpertCacheOptions): { bytes: number; reason: string } {
  const { expertBytes, totalExperts, residentBytes } = options;
  if (!(Number.isFinite(expertBytes) && expertBytes > 0)) throw new RangeError(`expertBytes must be a positive number, got ${expertBytes}`);
  if (!(Number.isSafeInteger(totalExperts) && totalExperts > 0))
    throw new RangeError(`totalExperts must be a positive integer, got ${totalExperts}`);
  if (!(Number.isFinite(residentBytes) && residentBytes >= 0))
    throw new RangeError(`residentBytes must be a non-negative number, got ${residentBytes}`);

  const memory = readMemory(options.meminfo);
  const cgroup = options.cgroup === undefined ? readCgroup() : options.cgroup;
  let available = memory.availableBytes;
  let total = memory.totalBytes;
  let source = 'available';
  if (cgroup && cgroup.limitBytes - cgroup.usageBytes < available) {
    available = Math.max(0, cgroup.limitBytes - cgroup.usageBytes);
    // The container's limit is its machine: 10% of the host's memory could exceed the whole limit.
    total = Math.min(total, cgroup.limitBytes);
    source = `available under the container's ${gib(cgroup.limitBytes)} limit`;
  }
  const headroom = Math.max(MIN_HEADROOM_BYTES, HEADROOM_FRACTION * total);
  const usable = Math.max(0, available - headroom - residentBytes);
  const allBytes = totalExperts * expertBytes;
  const dense = residentBytes > 0 ? ` and ${gib(residentBytes)} of dense weights` : '';
  const why = `${gib(available)} ${source} less ${gib(headroom)} headroom${dense}`;
  if (usable >= allBytes) return { bytes: allBytes, reason: `all ${totalExperts} experts fit (${gib(allBytes)}): ${why}` };
  // The cache holds whole experts; a remainder would never be used.
  const experts = Math.floor(usable / expertBytes);
  const bytes = experts * expertBytes;
  return { bytes, reason: `${experts} of ${totalExperts} experts (${gib(bytes)} of ${gib(allBytes)}): ${why}` };
}

interface Memory {
  availableBytes: number;
  totalBytes: number;
}

/** MemAvailable and MemTotal from /proc/meminfo's text; os.freemem()/totalmem() for what it lacks. */
function readMemory(meminfo: string | undefined): Memory {
  let text = meminfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/meminfo', 'utf8');
    } catch {
      text = ''; // not Linux
    }
  }
  const field = (name: string): number | undefined => {
    const kib = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1];
    return kib === undefined ? undefined : Number(kib) * 1024;
  };
  return { availableBytes: field('MemAvailable') ?? freemem(), totalBytes: field('MemTotal') ?? totalmem() };
}

/** This process's cgroup memory limit and usage (v2, else v1), or null where there is no limit. */
function readCgroup(): { limitBytes: number; usageBytes: number } | null {
  const read = (path: string): string | null => {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      return null;
    }
  };
  for (const [dir, limitFile, usageFile, inactiveFile] of [
    ['/sys/fs/cgroup', 'memory.max', 'memory.current', 'inactive_file'],
    ['/sys/fs/cgroup/memory', 'memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file'],
  ] as const) {
    const limit = Number(read(`${dir}/${limitFile}`)); // "max" (v2) is NaN: no limit
    const usage = Number(read(`${dir}/${usageFile}`));
    // Usage counts the page cache charged to the container; its inactive part is reclaimable, as in MemAvailable.
    const stat = read(`${dir}/memory.stat`) ?? '';
    const inactive = Number(new RegExp(`^${inactiveFile} (\\d+)$`, 'm').exec(stat)?.[1] ?? 0);
    // v1 reports "no limit" as a huge number near 2^63; such a limit never wins against MemAvailable.
    if (Number.isFinite(limit) && limit > 0 && Number.isFinite(usage))
      return { limitBytes: limit, usageBytes: Math.max(0, usage - inactive) };
  }
  return null;
}

/** Bytes in GiB with one decimal, or in MiB below 1 GiB (the tiny test models' experts are KiB to MiB). */
function gib(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${(bytes / MiB).toFixed(1)} MiB`;
}
