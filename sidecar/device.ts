/**
 * onnxruntime sessions on the chosen device. CPU is always there; CUDA needs onnxruntime's CUDA
 * execution provider (onnxruntime-node installed with its CUDA binaries on a host with a GPU) and
 * otherwise fails with a clear message rather than silently running on the CPU.
 */
import * as ort from 'onnxruntime-node';
import { modelError } from './errors.ts';

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
  };
}

/** Creates a session from a graph file (a path, so its external weight file resolves beside it). */
export async function createSession(path: string, settings: SessionSettings): Promise<ort.InferenceSession> {
  if (!DEVICES.includes(settings.device)) throw modelError(`unknown device "${settings.device}" (expected cpu or cuda)`);
  try {
    return await ort.InferenceSession.create(path, sessionOptions(settings));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (settings.device === 'cuda') {
      throw modelError(
        `the CUDA execution provider is not available (${reason.split('\n')[0]}); it needs an NVIDIA GPU with CUDA 12 and onnxruntime-node's CUDA binaries (npm install with --onnxruntime-node-install=cuda12), or use --device cpu`,
        error,
      );
    }
    throw modelError(`cannot load graph ${path}: ${reason}`, error);
  }
}
