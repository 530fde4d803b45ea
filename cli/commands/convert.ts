/**
 * `sirocco convert`: turn a Mistral-native or Hugging Face checkpoint folder, or a GGUF file, into a store
 * (ONNX graphs + quantized weights + manifest). Progress goes to stderr; the store path to stdout.
 */
import { SingleBar } from 'cli-progress';
import { convertCheckpoint } from '../../sidecar/convert/convert.ts';
import type { ExpertBits } from '../../sidecar/engine/index.ts';
import { CliError, parseCommandArgs, requireOption } from '../args.ts';
import { parsePrecision } from '../engine-flags.ts';

export const summary =
  'convert a checkpoint into a store: --from DIR|FILE.gguf --to STORE [--precision int4|int8|fp32] [--expert-bits 4|8]';

const HELP = `usage: sirocco convert --from DIR|FILE.gguf --to STORE [--precision int4|int8|fp32] [--expert-bits 4|8]

Progress goes to stderr; the store's path to stdout.

  --from DIR        checkpoint folder: params.json + consolidated*.safetensors (Mistral) or
                    config.json + model*.safetensors [+ model.safetensors.index.json] (Hugging Face);
                    or a llama.cpp GGUF file (llama architecture: Mistral, Mixtral; F32, F16, BF16,
                    Q8_0, Q4_0, Q4_K, Q5_K, Q6_K tensors; llama.cpp semantics: no sliding window)
                    (required)
  --to STORE        new folder for the converted store (must not exist or be empty) (required)
  --precision P     int4 (MatMulNBits 4-bit), int8, or fp32 (default int4)
  --expert-bits B   Mixtral: format of the experts paged by --expert-cache-mb: 4 (default for int4
                    stores: half the bytes on disk and in the cache) or 8 (default otherwise: twice
                    the bytes, finer quantisation); a GGUF file's Q4_0 / Q8_0 experts default to
                    their own format, copied as they are
  -h, --help        this help

examples:
  sirocco convert --from ./Mistral-7B-v0.1 --to ./stores/mistral-7b-int4
  sirocco convert --from ./Mixtral-8x7B-v0.1 --to ./stores/mixtral-int8 --precision int8 --expert-bits 4
  sirocco convert --from ./mixtral-8x7b.Q4_0.gguf --to ./stores/mixtral-q4`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    from: { type: 'string' },
    to: { type: 'string' },
    precision: { type: 'string' },
    'expert-bits': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const from = requireOption(values.from, 'from');
  const to = requireOption(values.to, 'to');
  const precision = parsePrecision(values.precision) ?? 'int4';
  const expertBits = parseExpertBits(values['expert-bits']);

  const bar = new SingleBar({
    stream: process.stderr,
    format: 'converting [{bar}] {percentage}% | {value}/{total} tensors | {label}',
    hideCursor: true,
  });
  let started = false;
  try {
    const manifest = await convertCheckpoint({
      from,
      to,
      precision,
      expertBits,
      onProgress: (done, total, label) => {
        if (!started) {
          bar.start(total, done, { label });
          started = true;
        } else bar.update(done, { label });
      },
    });
    if (started) bar.stop();
    const bytes = manifest.files.reduce((sum, f) => sum + f.bytes, 0);
    console.error(
      `sirocco convert: ${manifest.architecture} ${precision}, ${manifest.files.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB`,
    );
    console.log(to);
    return 0;
  } catch (error) {
    if (started) bar.stop();
    throw error;
  }
}

function parseExpertBits(value: string | undefined): ExpertBits | undefined {
  if (value === undefined) return undefined;
  if (value === '4' || value === '8') return Number(value) as ExpertBits;
  throw new CliError(`--expert-bits must be 4 or 8, got ${value}`);
}
