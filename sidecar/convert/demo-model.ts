/**
 * The embedded demo models: tiny Mistral and Mixtral checkpoints with deterministic random weights
 * and Mistral's real v1 vocabulary, so that everything runs on a fresh machine with no download.
 * Their output is nonsense; they exist to exercise the whole stack.
 *
 * Built on first use under demoModelsDir() and reused after. The folder name carries the generator
 * version and the store format, so a change to either builds new models instead of misreading old
 * ones. Building happens in a private temporary folder that is renamed into place: two processes
 * starting at once both build, one rename wins, and the other uses the winner's identical store.
 */
import { mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FORMAT_VERSION, isStore } from '../formats/store-manifest.ts';
import { mistralV1TokenizerJson } from '../text/tokenizer.ts';
import { convertCheckpoint, type Precision } from './convert.ts';
import { demoModelsDir } from './paths.ts';
import { type ModelShape, writeRandomCheckpoint } from './random-checkpoint.ts';

export type DemoModelName = 'mistral-tiny' | 'mistral-small';

/** The names that stand for a demo model wherever a model folder is asked for (`--model demo`). */
const DEMO_MODEL_ALIASES: Record<string, DemoModelName> = {
  demo: 'mistral-tiny',
  'demo-tiny': 'mistral-tiny',
  'demo-small': 'mistral-small',
};

export const DEMO_MODEL_ALIAS_NAMES = Object.keys(DEMO_MODEL_ALIASES);

/** The demo model a `--model` value names, or undefined when it is a folder. */
export function demoModelNamed(model: string): DemoModelName | undefined {
  return Object.hasOwn(DEMO_MODEL_ALIASES, model) ? DEMO_MODEL_ALIASES[model] : undefined;
}

/** Bump when shapes, seeds, the weight generator or the generated tokenizer.json change. */
const DEMO_VERSION = 1;

/** int4 is the product's path (MatMulNBits block 32); every linear dimension is a multiple of 32. */
export const DEFAULT_DEMO_PRECISION: Precision = 'int4';

/** Both demo models share Mistral's attention layout at toy size and the real 32k vocabulary. */
const DEMO_ATTENTION = { dim: 256, nLayers: 4, nHeads: 8, nKvHeads: 2, headDim: 32, vocabSize: 32000, contextLength: 8192 };

export const DEMO_SHAPES: Record<DemoModelName, { shape: ModelShape; seed: number }> = {
  // Dense Mistral: GQA 8 heads / 2 KV heads, sliding window.
  'mistral-tiny': {
    seed: 7,
    shape: { ...DEMO_ATTENTION, hiddenDim: 768, slidingWindow: 4096, ropeTheta: 10000 },
  },
  // Mixtral: 8 experts, top-2, full causal attention, rope_theta 1e6.
  'mistral-small': {
    seed: 8,
    shape: { ...DEMO_ATTENTION, hiddenDim: 512, slidingWindow: null, ropeTheta: 1e6, numExperts: 8, expertsPerToken: 2 },
  },
};

/** Where the demo store for `name` at `precision` lives (whether or not it is built yet). */
export function demoModelDir(name: DemoModelName, precision: Precision = DEFAULT_DEMO_PRECISION): string {
  return join(demoModelsDir(), `v${DEMO_VERSION}-store${FORMAT_VERSION}`, precision, name);
}

/** Writes the raw native checkpoint of a demo model (params.json, safetensors, tokenizer.json). */
export async function writeDemoCheckpoint(name: DemoModelName, dir: string): Promise<void> {
  const { shape, seed } = DEMO_SHAPES[name];
  await writeRandomCheckpoint(dir, shape, seed);
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(await mistralV1TokenizerJson()));
}

const BUILD_PREFIX = '.build-';
/** A build takes seconds; a build folder this old was left by a process that died. */
const ABANDONED_BUILD_MS = 60 * 60 * 1000;

async function removeAbandonedBuilds(): Promise<void> {
  for (const entry of await readdir(demoModelsDir())) {
    if (!entry.startsWith(BUILD_PREFIX)) continue;
    const path = join(demoModelsDir(), entry);
    const age = Date.now() - (await stat(path).catch(() => ({ mtimeMs: Date.now() }))).mtimeMs;
    // Best effort: another process may be clearing the same folder right now.
    if (age > ABANDONED_BUILD_MS) await rm(path, { recursive: true, force: true }).catch(() => {});
  }
}

async function buildDemoModel(name: DemoModelName, precision: Precision): Promise<string> {
  const target = demoModelDir(name, precision);
  if (await isStore(target)) return target;
  await mkdir(demoModelsDir(), { recursive: true });
  await removeAbandonedBuilds();
  const work = await mkdtemp(join(demoModelsDir(), `${BUILD_PREFIX}${name}-`));
  try {
    const checkpoint = join(work, 'checkpoint');
    const store = join(work, 'store');
    await writeDemoCheckpoint(name, checkpoint);
    await convertCheckpoint({ from: checkpoint, to: store, precision, name });
    await mkdir(join(target, '..'), { recursive: true });
    try {
      await rename(store, target);
    } catch (error) {
      // Another process finished first: its store is identical, use it.
      if (!(await isStore(target))) throw error;
    }
    return target;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const building = new Map<string, Promise<string>>();

/** Store folder of one demo model, built on first use (concurrent callers share one build). */
export function ensureDemoModel(name: DemoModelName, precision: Precision = DEFAULT_DEMO_PRECISION): Promise<string> {
  const key = demoModelDir(name, precision);
  let pending = building.get(key);
  if (!pending) {
    pending = buildDemoModel(name, precision);
    building.set(key, pending);
    pending.catch(() => building.delete(key)); // a failed build may be retried
  }
  return pending;
}

/** Store folders of both demo models, built deterministically on first call and reused after. */
export async function ensureDemoModels(options: { precision?: Precision } = {}): Promise<Record<DemoModelName, string>> {
  const precision = options.precision ?? DEFAULT_DEMO_PRECISION;
  // One after the other: conversion already uses both cores.
  const tiny = await ensureDemoModel('mistral-tiny', precision);
  const small = await ensureDemoModel('mistral-small', precision);
  return { 'mistral-tiny': tiny, 'mistral-small': small };
}
