/**
 * llama.cpp's figures for the benches' shapes, timed on the machine the benches run on, so each bench can print its own
 * decode and prefill next to them. A ratio against a figure from another machine, another build or another day mixes in
 * the machine's speed; timing both here is what makes "ours / llama.cpp" mean something.
 *
 * `LLAMA_ANCHOR_DIR` names a folder holding one `anchor-<shape>.json` per shape, each one JSON object from llama-bench
 * (Q4_0 random weights, 2 threads): `{"shape","file_gib","pp_tok_s","tg_tok_s"}` and optionally `"pp_stddev"`,
 * `"tg_stddev"`. Without the variable the benches print what they always did; a file that is missing or does not read is
 * one line on stderr and the bench runs on without the comparison, because the bench's own figures are still worth having.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as z from 'zod';

export const ANCHOR_DIR_ENV = 'LLAMA_ANCHOR_DIR';

/** The bench shapes llama.cpp is timed on: bench:engine's (and bench:sidecar's) 1.0B model, and bench:moe's. */
export type AnchorShape = 'dense' | 'moe';

const AnchorFileSchema = z.object({
  shape: z.string(),
  file_gib: z.number().nonnegative(),
  pp_tok_s: z.number().positive(),
  tg_tok_s: z.number().positive(),
  pp_stddev: z.number().nonnegative().optional(),
  tg_stddev: z.number().nonnegative().optional(),
});

/** One shape's llama.cpp figures, named as the benches' own JSON names theirs. */
export interface AnchorFigure {
  shape: string;
  /** The file it was read from, so a report says which measurement it was set against. */
  source: string;
  fileGiB: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  prefillStddev: number | null;
  decodeStddev: number | null;
}

/**
 * The llama.cpp figures for `shape` from `$LLAMA_ANCHOR_DIR/anchor-<shape>.json`; null when the variable is unset, and
 * null after one line on stderr naming the file when it is missing, is not JSON, does not match the format, or is for
 * another shape.
 */
export function readAnchor(shape: AnchorShape, env: NodeJS.ProcessEnv = process.env): AnchorFigure | null {
  const dir = env[ANCHOR_DIR_ENV];
  if (!dir) return null;
  const file = resolve(join(dir, `anchor-${shape}.json`));
  const skip = (why: string) => {
    console.error(`llama.cpp anchor ${file}: ${why}; continuing without the llama.cpp comparison`);
    return null;
  };
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    return skip((error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `cannot read it (${(error as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return skip('not valid JSON');
  }
  const parsed = AnchorFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return skip(`not an anchor figure (${issue ? `${issue.path.join('.') || 'root'}: ${issue.message}` : 'invalid'})`);
  }
  // A file copied under the wrong name would otherwise set one shape's figures against another's.
  if (parsed.data.shape !== shape) return skip(`its shape is "${parsed.data.shape}", not "${shape}"`);
  return {
    shape: parsed.data.shape,
    source: file,
    fileGiB: parsed.data.file_gib,
    prefillTokensPerSecond: parsed.data.pp_tok_s,
    decodeTokensPerSecond: parsed.data.tg_tok_s,
    prefillStddev: parsed.data.pp_stddev ?? null,
    decodeStddev: parsed.data.tg_stddev ?? null,
  };
}

/** One of our figures set against llama.cpp's, for the JSON reports. */
export interface AnchorComparison {
  ours: number;
  llamaCpp: number;
  /** ours / llama.cpp: above 1 is faster than llama.cpp. */
  ratio: number;
}

export function compareToAnchor(ours: number, llamaCpp: number): AnchorComparison {
  return { ours, llamaCpp, ratio: ours / llamaCpp };
}

/** The table cell: "ours / llama.cpp = ratio×", both in tokens/s. */
export function formatAnchorCell(ours: number, llamaCpp: number, digits = 1): string {
  return `${ours.toFixed(digits)} / ${llamaCpp.toFixed(digits)} = ${(ours / llamaCpp).toFixed(2)}×`;
}

/**
 * What a bench's JSON report carries: llama.cpp's figures and our decode and prefill against them (null where the bench
 * measures no such figure).
 */
export function anchorReport(
  anchor: AnchorFigure,
  ours: { decode: number | null; prefill: number | null },
): { llamaCpp: AnchorFigure; decode: AnchorComparison | null; prefill: AnchorComparison | null } {
  return {
    llamaCpp: anchor,
    decode: ours.decode === null ? null : compareToAnchor(ours.decode, anchor.decodeTokensPerSecond),
    prefill: ours.prefill === null ? null : compareToAnchor(ours.prefill, anchor.prefillTokensPerSecond),
  };
}
