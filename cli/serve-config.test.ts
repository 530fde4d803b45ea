import { describe, expect, it } from 'vitest';
import { SERVE_DEFAULTS } from '../sidecar/server/config.ts';
import { CliError } from './args.ts';
import { loadServeConfig, SERVE_HELP } from './serve-config.ts';

describe('sirocco serve configuration', () => {
  it('uses the documented defaults with no flags and no environment', () => {
    const config = loadServeConfig([], {});
    expect(config).toMatchObject({
      modelDirs: [],
      host: '127.0.0.1',
      port: 8080,
      region: 'local',
      device: 'cpu',
      maxBatch: SERVE_DEFAULTS.maxBatch,
      maxQueue: SERVE_DEFAULTS.maxQueue,
      expertCacheMb: 'auto', // Mixtral's block experts fill what memory allows
      kvCacheMb: 'auto', // KV memory for --max-batch sequences, faulted in at load
      sidecarSecret: null,
    });
  });

  it('reads every pinned flag, comma-separated model folders and a fractional expert budget', () => {
    const config = loadServeConfig(
      [
        '--model',
        'a, b',
        '--port',
        '0',
        '--host',
        '0.0.0.0',
        '--region',
        'eu-west',
        '--device',
        'cuda',
        '--max-batch',
        '4',
        '--max-queue',
        '0',
        '--expert-cache-mb',
        '0.5',
      ],
      {},
    );
    expect(config).toMatchObject({
      modelDirs: ['a', 'b'],
      port: 0,
      host: '0.0.0.0',
      region: 'eu-west',
      device: 'cuda',
      maxBatch: 4,
      maxQueue: 0,
      expertCacheMb: 0.5,
    });
  });

  it.each([
    ['auto', 'auto'],
    ['AUTO', 'auto'],
    ['8192', 8192],
    ['1e3', 1000],
  ] as const)('reads --expert-cache-mb %s as %j, left for the engine to resolve', (flag, expected) => {
    expect(loadServeConfig(['--expert-cache-mb', flag], {})?.expertCacheMb).toBe(expected);
    expect(loadServeConfig([`--expert-cache-mb=${flag}`], {})?.expertCacheMb).toBe(expected);
  });

  it.each([
    ['auto', 'auto'],
    ['0', 0],
    ['512', 512],
    ['0.5', 0.5],
  ] as const)('reads --kv-cache-mb %s as %j', (flag, expected) => {
    expect(loadServeConfig(['--kv-cache-mb', flag], {})?.kvCacheMb).toBe(expected);
  });

  it('takes the signing secret and tuning knobs from the environment', () => {
    const config = loadServeConfig([], {
      SIROCCO_SIDECAR_SECRET: 's3cret',
      SIROCCO_REGION: 'us-east',
      SIROCCO_MAX_BODY_BYTES: '2048',
      SIROCCO_SHUTDOWN_GRACE_MS: '0',
    });
    expect(config).toMatchObject({ sidecarSecret: 's3cret', region: 'us-east', maxBodyBytes: 2048, shutdownGraceMs: 0 });
  });

  it('returns null for --help', () => {
    expect(loadServeConfig(['--help'], {})).toBeNull();
    expect(loadServeConfig(['-h'], {})).toBeNull();
  });

  it('keeps demo model names for the loader, which resolves them to the demo stores', () => {
    expect(loadServeConfig(['--model', 'demo,demo-small'], {})?.modelDirs).toEqual(['demo', 'demo-small']);
  });

  it('documents every flag with its default, the environment and examples in --help', () => {
    for (const flag of [
      '--model',
      '--host',
      '--port',
      '--region',
      '--max-batch',
      '--max-queue',
      '--device',
      '--expert-cache-mb',
      '--kv-cache-mb',
      '--threads',
    ]) {
      expect(SERVE_HELP).toContain(flag);
    }
    expect(SERVE_HELP).toContain(`(default ${SERVE_DEFAULTS.port})`);
    expect(SERVE_HELP).toContain(`(default ${SERVE_DEFAULTS.maxBatch})`);
    expect(SERVE_HELP).toContain('SIROCCO_SIDECAR_SECRET');
    expect(SERVE_HELP).toMatch(/examples:\n {2}sirocco serve/);
    expect(SERVE_HELP).not.toMatch(/Infinity/);
    expect(SERVE_HELP).toContain('--expert-cache-mb N|auto');
    expect(SERVE_HELP).toContain('--expert-cache-mb auto');
  });

  it.each([
    [['--port', '70000'], /--port must be an integer from 0 to 65535, got 70000/],
    [['--port', '-1'], /--port must be an integer from 0 to 65535, got -1/],
    [['--max-queue', '-5'], /--max-queue must be an integer from 0 to 100000, got -5/],
    [['--threads', '0'], /--threads must be an integer from 1 to 1024, got 0/],
    [['--expert-cache-mb', '0'], /--expert-cache-mb must be a number > 0 \(MiB\) or "auto", got 0/],
    [['--expert-cache-mb', '-1'], /--expert-cache-mb must be a number > 0 \(MiB\) or "auto", got -1/],
    [['--expert-cache-mb', 'lots'], /--expert-cache-mb must be a number > 0 \(MiB\) or "auto", got lots/],
    [['--expert-cache-mb', 'Infinity'], /--expert-cache-mb must be a number > 0 \(MiB\) or "auto", got Infinity/],
    [['--expert-cache-mb', ''], /--expert-cache-mb must be a number > 0 \(MiB\) or "auto", got ""/],
    [['--expert-cache-mb'], /--expert-cache-mb needs a value/],
    [['--kv-cache-mb', '-1'], /--kv-cache-mb must be a number ≥ 0 \(MiB\) or "auto", got -1/],
    [['--kv-cache-mb', 'some'], /--kv-cache-mb must be a number ≥ 0 \(MiB\) or "auto", got some/],
    [['--kv-cache-mb', ''], /--kv-cache-mb must be a number ≥ 0 \(MiB\) or "auto", got ""/],
    [['--prot', '80'], /unknown option --prot; did you mean --port\?/],
    [['--max-batch', '0'], /--max-batch/],
    [['--device', 'tpu'], /--device must be one of cpu, cuda/],
    [['--model', ','], /--model needs at least one folder/],
    [['--region', 'eu west'], /--region/],
    [['--bogus'], /bogus/],
  ])('rejects %j with a message naming the flag', (argv, message) => {
    expect(() => loadServeConfig(argv, {})).toThrow(CliError);
    expect(() => loadServeConfig(argv, {})).toThrow(message);
  });

  it('names the environment variable at fault', () => {
    expect(() => loadServeConfig([], { SIROCCO_MAX_BODY_BYTES: 'lots' })).toThrow(
      'environment variable SIROCCO_MAX_BODY_BYTES must be an integer ≥ 1, got "lots"',
    );
  });
});
