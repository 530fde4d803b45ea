/**
 * `sirocco logits`: one causal forward pass over the given token ids, printing exactly one JSON
 * object `{"logits": [[...], ...]}` on stdout — one row per input position, the full vocabulary.
 */

import { openModel } from '../../sidecar/convert/loader.ts';
import { isStore } from '../../sidecar/formats/store-manifest.ts';
import { CliError, parseCommandArgs, requireOption } from '../args.ts';
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, parseEngineFlags } from '../engine-flags.ts';

export const summary = 'print the logits of every position: --model DIR|FILE.gguf --tokens 1,2,3 [--precision fp32|int8|int4]';

const HELP = `usage: sirocco logits --model DIR|FILE.gguf --tokens 1,2,3 [options]

Prints one JSON object {"logits": [[…], …]} on stdout: a row per input position, the full vocabulary.

  --model DIR           checkpoint folder (Mistral native or Hugging Face layout), GGUF file (converted
                        once into the store cache) or converted store (required)
  --tokens IDS          comma-separated token ids; BOS is not added (required)
  --precision P         fp32 | int8 | int4; for a checkpoint folder or GGUF file the conversion precision (default fp32),
                        for a store it must match the store's (default: the store's)
${ENGINE_FLAGS_HELP}
  -h, --help            this help

examples:
  sirocco logits --model ./Mistral-7B-v0.1 --tokens 1,22557,28808
  sirocco logits --model ./stores/mistral-7b-int4 --tokens 1,2,3 --threads 4`;

function parseTokens(value: string): number[] {
  return value.split(',').map((part) => {
    const text = part.trim();
    const id = Number(text);
    if (text === '' || !Number.isInteger(id)) throw new CliError(`--tokens must be comma-separated integers, got "${part}" in "${value}"`);
    return id;
  });
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    model: { type: 'string' },
    tokens: { type: 'string' },
    ...ENGINE_FLAGS,
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const model = requireOption(values.model, 'model');
  const tokens = parseTokens(requireOption(values.tokens, 'tokens'));
  const engine = parseEngineFlags(values);
  // A store keeps its own precision; a raw checkpoint or GGUF file defaults to exact fp32 logits.
  const precision = engine.precision ?? ((await isStore(model)) ? undefined : 'fp32');

  const runtime = await openModel(model, { ...engine, precision });
  try {
    const sequence = runtime.createSequence();
    const [logits] = await runtime.forward([{ sequence, tokens }], { allPositions: true });
    if (!logits) throw new Error('the engine returned no logits for the sequence');
    const vocab = runtime.info.vocabSize;
    const rows = tokens.map((_, t) => Array.from(logits.subarray(t * vocab, (t + 1) * vocab)));
    process.stdout.write(`${JSON.stringify({ logits: rows })}\n`);
    return 0;
  } finally {
    await runtime.dispose();
  }
}
