/**
 * onnxruntime sessions on the chosen device. CPU is always there; CUDA needs onnxruntime's CUDA
 * execution provider (onnxruntime-node installed with its CUDA binaries on a host with a GPU) and
 * otherwise fails with a clear message rather than silently running on the CPU.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { modelError } from '../errors.ts';

export type Device = 'cpu' | 'cuda';

export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

export interface SessionSettings {
  device: Device;
  threads: number;
}

function sessionOptions({ device, threads }: SessionSettings): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: device === 'cuda' ? ['cuda'] : ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    // Spinning worker threads win microseconds on an idle machine but collapse when two sidecars
    // or other work share these 2 cores (tiny Mixtral decode step: 2.8 ms without, 21 ms with).
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
}

const CUDA_HELP =
  "it needs an NVIDIA GPU with CUDA 12 and onnxruntime-node's CUDA binaries (npm install with --onnxruntime-node-install=cuda12), or use --device cpu";

/**
 * onnxruntime-node loads the CUDA provider from a library beside its native binding; when the
 * package was installed without it, say so before onnxruntime prints a low-level load failure.
 */
function cudaProviderInstalled(): boolean {
  const binding = join(
    dirname(createRequire(import.meta.url).resolve('onnxruntime-node')),
    '..',
    'bin',
    'napi-v6',
    process.platform,
    process.arch,
  );
  return existsSync(join(binding, process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so'));
}

/** Creates a session from a graph file (a path, so its external weight file resolves beside it). */
export async function createSession(path: string, settings: SessionSettings): Promise<ort.InferenceSession> {
  if (!DEVICES.includes(settings.device)) throw modelError(`unknown device "${settings.device}" (expected cpu or cuda)`);
  if (settings.device === 'cuda' && !cudaProviderInstalled()) {
    throw modelError(`the CUDA execution provider is not installed in this onnxruntime-node; ${CUDA_HELP}`);
  }
  try {
    return await ort.InferenceSession.create(path, sessionOptions(settings));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (settings.device === 'cuda') {
      throw modelError(`the CUDA execution provider is not available (${reason.split('\n')[0]}); ${CUDA_HELP}`, error);
    }
    throw modelError(`cannot load graph ${path}: ${reason}`, error);
  }
}

let int8DotProductCache: boolean | undefined;

/**
 * Whether this CPU multiplies unsigned by signed 8-bit integers without saturating. onnxruntime's
 * u8×s8 GEMM on x86 without VNNI sums pairs of products into int16 (`vpmaddubsw`), which saturates
 * when full-range int8 weights meet activations near 255: up to 36% error on an expert's output
 * (measured on an AVX2-only EPYC). VNNI (`vpdpbusd`) and AMX accumulate in int32; Arm's dot
 * products are exact too. Unknown x86 hosts (no /proc/cpuinfo) are treated as unsafe.
 */
export function cpuHasExactInt8DotProduct(): boolean {
  if (int8DotProductCache !== undefined) return int8DotProductCache;
  if (process.arch !== 'x64' && process.arch !== 'ia32') {
    int8DotProductCache = true;
    return true;
  }
  let flags = '';
  try {
    flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
  } catch {
    // not Linux: assume the saturating path
  }
  int8DotProductCache = /\b(avx512_vnni|avx_vnni|amx_int8)\b/.test(flags);
  return int8DotProductCache;
}
