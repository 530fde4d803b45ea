/**
 * The expert kernel against the machine's memory roofline: how fast this machine can read memory
 * from WebAssembly (one and two threads, 1 GiB, SIMD loads), and how fast one Mixtral 8x7B-sized
 * expert (dim 4096, FFN 14336: 94.5 MiB of Q4_0 blocks) goes through the block kernel for one
 * token and for a batch of 8, each as GB/s of expert bytes and as a share of the read bandwidth.
 * Experts are cycled through four buffers (378 MiB) so no product finds its weights in the caches.
 */
import { randomFillSync } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import wabtInit from 'wabt';
import {
  BlockExpertKernel,
  defaultKernelVariant,
  type KernelVariant,
  runnableKernelVariants,
} from '../sidecar/engine/experts/block-kernel.ts';
import { EXPERT_FORMATS, type ExpertBits, expertFileBytes, expertViews, setExpertScales } from '../sidecar/engine/experts/expert-store.ts';
import { toFloat16Bits } from '../sidecar/formats/blocks.ts';
import { percentile } from './stats.ts';

const MIXTRAL = { dim: 4096, ffn: 14336 };
const READ_BYTES = 1 << 30;

/** Sums the memory [p, end) with four independent SIMD accumulators (the loads are the work). */
const READ_LOOP = `(module (import "env" "memory" (memory 1 65535 shared))
  (func (export "read") (param $p i32) (param $end i32) (result i32) (local $a v128) (local $b v128) (local $c v128) (local $d v128)
    (loop $next
      (local.set $a (i32x4.add (local.get $a) (v128.load (local.get $p))))
      (local.set $b (i32x4.add (local.get $b) (v128.load offset=16 (local.get $p))))
      (local.set $c (i32x4.add (local.get $c) (v128.load offset=32 (local.get $p))))
      (local.set $d (i32x4.add (local.get $d) (v128.load offset=48 (local.get $p))))
      (br_if $next (i32.lt_u (local.tee $p (i32.add (local.get $p) (i32.const 64))) (local.get $end))))
    (i32x4.extract_lane 0 (i32x4.add (i32x4.add (local.get $a) (local.get $b)) (i32x4.add (local.get $c) (local.get $d))))))`;

type Read = (from: number, to: number) => number;

/** Best of `repeats` passes over 1 GiB: GB/s on one thread and on two (each reading half). */
export async function readBandwidth(repeats = 5): Promise<{ oneThreadGBps: number; twoThreadsGBps: number }> {
  const wabt = await wabtInit();
  const features = { simd: true, threads: true };
  const parsed = wabt.parseWat('read-loop.wat', READ_LOOP, features);
  const module = new WebAssembly.Module(new Uint8Array(parsed.toBinary({}).buffer));
  parsed.destroy();
  const pages = READ_BYTES / 65536 + 1;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  new Uint8Array(memory.buffer).fill(1); // touch every page: a first-touch fault is not a read
  const read = new WebAssembly.Instance(module, { env: { memory } }).exports.read as Read;
  const helper = new Worker(
    `const { parentPort, workerData: { module, memory, from, to } } = require('node:worker_threads');
     const read = new WebAssembly.Instance(module, { env: { memory } }).exports.read;
     parentPort.on('message', () => parentPort.postMessage(read(from, to)));`,
    { eval: true, workerData: { module, memory, from: READ_BYTES / 2, to: READ_BYTES } },
  );
  try {
    let one = 0;
    let two = 0;
    for (let i = 0; i < repeats; i++) {
      let started = performance.now();
      read(0, READ_BYTES);
      one = Math.max(one, READ_BYTES / (performance.now() - started) / 1e6);
      started = performance.now();
      const helperDone = new Promise((resolve) => helper.once('message', resolve));
      helper.postMessage(null);
      read(0, READ_BYTES / 2);
      await helperDone;
      two = Math.max(two, READ_BYTES / (performance.now() - started) / 1e6);
    }
    return { oneThreadGBps: one, twoThreadsGBps: two };
  } finally {
    await helper.terminate();
  }
}

export interface ExpertTiming {
  format: string;
  variant: KernelVariant;
  threads: number;
  rows: number;
  /** Median and best time of one expert (both products and the SwiGLU between them). */
  medianMs: number;
  bestMs: number;
  /** Expert bytes per second at the median. */
  gbPerSecond: number;
}

/** One token (and a batch of 8) through Mixtral-sized experts, median of `repeats` runs. */
export async function expertTimings(bits: ExpertBits, variants: KernelVariant[], repeats = 40): Promise<ExpertTiming[]> {
  const { dim, ffn } = MIXTRAL;
  const format = EXPERT_FORMATS[bits];
  const bytes = expertFileBytes(dim, ffn, bits);
  const timings: ExpertTiming[] = [];
  for (const variant of variants) {
    for (const threads of [1, 2]) {
      const kernel = await BlockExpertKernel.create({ dim, ffn, bufferBytes: bytes, expectedBuffers: 4, threads, variant });
      try {
        const experts = [0, 1, 2, 3].map(() => {
          const buffer = kernel.allocate();
          // Random blocks with one small scale: the values do not change the work, only finite outputs matter.
          randomFillSync(buffer.subarray(0, bytes));
          const weights = expertViews(buffer, dim, ffn, bits);
          setExpertScales(weights, toFloat16Bits(1 / 4096));
          return weights;
        });
        for (const rows of [1, 8]) {
          const x = Float32Array.from({ length: rows * dim }, (_, i) => Math.sin(i * 0.37));
          for (const expert of experts) kernel.run(x, rows, expert);
          const times: number[] = [];
          for (let i = 0; i < repeats; i++) {
            const started = performance.now();
            kernel.run(x, rows, experts[i % experts.length]!);
            times.push(performance.now() - started);
          }
          const medianMs = percentile(times, 50)!;
          timings.push({
            format,
            variant,
            threads,
            rows,
            medianMs,
            bestMs: Math.min(...times),
            gbPerSecond: bytes / medianMs / 1e6,
          });
        }
      } finally {
        await kernel.dispose();
      }
    }
  }
  return timings;
}

/** Both measurements, printed as a table; returned for the bench's JSON. */
export async function kernelRoofline() {
  const bandwidth = await readBandwidth();
  const { variant, note } = await defaultKernelVariant();
  // The default first, then the WebAssembly variants it is measured against.
  const variants = [...new Set<KernelVariant>([variant, ...(await runnableKernelVariants()).filter((v) => !v.startsWith('native-'))])];
  const timings = [...(await expertTimings(4, variants)), ...(await expertTimings(8, [...new Set<KernelVariant>([variant, 'simd'])]))];
  const roof = bandwidth.twoThreadsGBps;
  console.log(
    `read bandwidth (WebAssembly SIMD loads, 1 GiB): ${bandwidth.oneThreadGBps.toFixed(1)} GB/s on one thread, ` +
      `${roof.toFixed(1)} GB/s on two; kernel variant by default: ${variant}${note ? ` (${note})` : ''}`,
  );
  console.table(
    timings.map((t) => ({
      expert: `${t.format} ${t.variant}`,
      threads: t.threads,
      rows: t.rows,
      'ms (median / best)': `${t.medianMs.toFixed(2)} / ${t.bestMs.toFixed(2)}`,
      'GB/s': t.gbPerSecond.toFixed(1),
      'of read bandwidth': `${((t.gbPerSecond / roof) * 100).toFixed(0)}%`,
      'ms per row': (t.medianMs / t.rows).toFixed(2),
    })),
  );
  return { expertShape: MIXTRAL, bandwidth, defaultVariant: variant, variantNote: note, timings };
}
