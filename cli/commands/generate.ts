/**
 * `sirocco generate`: stream a completion to stdout as it is generated. Usage figures go to
 * stderr so stdout holds only the generated text.
 */

import { demoModelNamed, ensureDemoModel } from '../../sidecar/convert/demo-model.ts';
import { openModel } from '../../sidecar/convert/loader.ts';
import { generate } from '../../sidecar/serving/generate.ts';
import { renderChatPrompt } from '../../sidecar/text/chat-template.ts';
import { loadTokenizer } from '../../sidecar/text/tokenizer.ts';
import { CliError, parseCommandArgs, parseNumberOption, requireOption } from '../args.ts';
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, parseEngineFlags } from '../engine-flags.ts';

export const summary =
  'stream a completion: --prompt TEXT [--model DIR|demo|demo-small] [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--raw]';

/** New tokens when --max-tokens is not given. */
const DEFAULT_MAX_TOKENS = 128;

/** The API's temperature range, so a value that works here works against the API too. */
const TEMPERATURE_RANGE = { min: 0, max: 1.5 };

const HELP = `usage: sirocco generate --prompt TEXT [options]

Streams a completion to stdout; usage figures go to stderr.

  --prompt TEXT         the user message (wrapped in Mistral's [INST] template unless --raw) (required)
  --model DIR           checkpoint folder (Mistral native or Hugging Face layout), GGUF file or converted store;
                        "demo" = the built-in tiny Mistral, "demo-small" = the tiny Mixtral (default demo).
                        The demo models have random weights: their text is nonsense.
  --raw                 feed the prompt as plain text after BOS, without the chat template (default off)
  --max-tokens N        new tokens at most, an integer ≥ 1 (default ${DEFAULT_MAX_TOKENS}, or what the context has left)
  --temperature T       0 to ${TEMPERATURE_RANGE.max}; 0 = greedy (default 0.7)
  --top-p P             nucleus sampling mass, > 0 and ≤ 1 (default 1)
  --seed S              random seed, an integer ≥ 0: the same seed gives the same text (default: random)
  --precision P         fp32 | int8 | int4: conversion precision for a raw checkpoint or the demo (default int4)
${ENGINE_FLAGS_HELP}
  -h, --help            this help

examples:
  sirocco generate --prompt "Write a haiku about the sea" --max-tokens 40
  sirocco generate --model demo-small --prompt Hello --temperature 0 --seed 7
  sirocco generate --model ./Mistral-7B-v0.1 --prompt "Why is the sky blue?" --precision int8`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    model: { type: 'string', default: 'demo' },
    prompt: { type: 'string' },
    raw: { type: 'boolean', default: false },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    ...ENGINE_FLAGS,
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const prompt = requireOption(values.prompt, 'prompt');
  const maxTokensFlag = parseNumberOption(values['max-tokens'], 'max-tokens', { integer: true, min: 1 });
  const temperature = parseNumberOption(values.temperature, 'temperature', TEMPERATURE_RANGE) ?? 0.7;
  const topP = parseNumberOption(values['top-p'], 'top-p', { above: 0, max: 1 }) ?? 1;
  const seed = parseNumberOption(values.seed, 'seed', { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER });
  const engine = parseEngineFlags(values);

  const demo = demoModelNamed(values.model);
  if (demo) process.stderr.write(`sirocco generate: using the demo model ${demo} (random weights, nonsense output)\n`);
  const modelDir = demo ? await ensureDemoModel(demo, engine.precision) : values.model;
  const runtime = await openModel(modelDir, engine);
  const controller = new AbortController();
  const onInterrupt = () => controller.abort(new CliError('interrupted', 130));
  process.once('SIGINT', onInterrupt);
  try {
    const tokenizer = await loadTokenizer(runtime.dir, runtime.info.vocabSize);
    const promptIds = values.raw
      ? [tokenizer.bosId, ...tokenizer.encode(prompt)]
      : renderChatPrompt(tokenizer, [{ role: 'user', content: prompt }]);
    // An explicit --max-tokens the context cannot hold is refused, as the API refuses it.
    const maxTokens = maxTokensFlag ?? Math.max(1, Math.min(DEFAULT_MAX_TOKENS, runtime.info.contextLength - promptIds.length));
    const started = performance.now();
    for await (const event of generate(runtime, tokenizer, promptIds, { maxTokens, temperature, topP, seed, signal: controller.signal })) {
      if (event.type === 'text') {
        process.stdout.write(event.text);
      } else {
        process.stdout.write('\n');
        const seconds = (performance.now() - started) / 1000;
        process.stderr.write(
          `[${event.promptTokens} prompt tokens, ${event.completionTokens} completion tokens, finish: ${event.finishReason}, ` +
            `${(event.completionTokens / seconds).toFixed(1)} tokens/s]\n`,
        );
      }
    }
    return 0;
  } finally {
    process.off('SIGINT', onInterrupt);
    await runtime.dispose();
  }
}
