/**
 * The engine flags that `logits`, `generate` and `serve` share — `--precision`, `--expert-cache-mb`,
 * `--device`, `--threads` — with one parser, so each is validated and worded the same everywhere.
 */
import { PRECISIONS, type Precision } from '../sidecar/convert/convert.ts';
import { DEVICES, type Device } from '../sidecar/engine/index.ts';
import { CliError, parseNumberOption } from './args.ts';

export const ENGINE_FLAGS = {
  precision: { type: 'string' },
  'expert-cache-mb': { type: 'string' },
  device: { type: 'string' },
  threads: { type: 'string' },
} as const;

export const ENGINE_FLAGS_HELP = `  --expert-cache-mb N|auto
                        Mixtral expert cache budget in MiB, > 0 (may be fractional); experts are paged
                        from disk. auto: the memory available at load less the dense weights and a
                        headroom of 20% of RAM (at least 1 GiB); every expert if they all fit
                        (default: no budget, every expert stays in memory)
  --device D            cpu | cuda (onnxruntime's CUDA execution provider) (default cpu)
  --threads N           onnxruntime intra-op threads, an integer from 1 to 1024 (default 2)`;

export interface EngineFlags {
  /** Undefined when --precision was not given: the caller picks its own default. */
  precision: Precision | undefined;
  /** MiB, or 'auto' for the engine to size from available memory; undefined ⇒ every expert resident. */
  expertCacheMb: number | 'auto' | undefined;
  device: Device;
  threads: number | undefined;
}

type EngineFlagValues = { [K in keyof typeof ENGINE_FLAGS]?: string };

export function parsePrecision(value: string | undefined): Precision | undefined {
  if (value === undefined) return undefined;
  if (!(PRECISIONS as readonly string[]).includes(value))
    throw new CliError(`--precision must be one of ${PRECISIONS.join(', ')}, got "${value}"`);
  return value as Precision;
}

/** A memory flag's value: MiB (fractional allowed) above 0 (or 0 itself with `allowZero`), or `auto`. */
export function parseMbOrAuto(value: string | undefined, flag: string, { allowZero }: { allowZero: boolean }): number | 'auto' | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (trimmed.toLowerCase() === 'auto') return 'auto';
  const mb = Number(trimmed);
  if (trimmed === '' || !Number.isFinite(mb) || mb < 0 || (mb === 0 && !allowZero))
    throw new CliError(`--${flag} must be a number ${allowZero ? '≥' : '>'} 0 (MiB) or "auto", got ${trimmed === '' ? '""' : value}`);
  return mb;
}

/** `--expert-cache-mb`: a positive number of MiB (fractional allowed) or `auto`. */
export function parseExpertCacheMb(value: string | undefined): number | 'auto' | undefined {
  return parseMbOrAuto(value, 'expert-cache-mb', { allowZero: false });
}

export function parseEngineFlags(values: EngineFlagValues): EngineFlags {
  const device = (values.device ?? 'cpu') as Device;
  if (!DEVICES.includes(device)) throw new CliError(`--device must be one of ${DEVICES.join(', ')}, got "${values.device}"`);
  return {
    precision: parsePrecision(values.precision),
    expertCacheMb: parseExpertCacheMb(values['expert-cache-mb']),
    device,
    threads: parseNumberOption(values.threads, 'threads', { integer: true, min: 1, max: 1024 }),
  };
}
