/**
 * The sidecar host files (Dockerfile, Dockerfile.cuda, deploy/sirocco-sidecar.service) checked against the code they
 * run, since docker and systemd are not available here: every environment variable they set is one the sidecar
 * reads, their `sirocco serve` flags parse with the real loader, the health check probes the served port's /health,
 * the process runs as a non-root user, and no secret or local state goes into an image.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT, SIDECAR_NODE_OPTIONS } from '../../cli/processes.ts';
import { loadServeConfig } from '../../cli/serve-config.ts';
import { ENV, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { startSidecarProcess } from '../support/sidecar-process.ts';

const read = (path: string) => readFileSync(join(REPO_ROOT, path), 'utf8');

/** Every variable `sirocco serve` reads: cli/serve-config.ts's env lookups, and SIROCCO_HOME (the store cache). */
function variablesServeReads(): Set<string> {
  const source = read('cli/serve-config.ts');
  const names = new Set<string>([ENV.home]);
  for (const match of source.matchAll(/env\.([A-Z][A-Z0-9_]+)|env\[ENV\.(\w+)\]|env, '([A-Z][A-Z0-9_]+)'/g)) {
    const name = match[1] ?? match[3] ?? ENV[match[2] as keyof typeof ENV];
    if (name) names.add(name);
  }
  return names;
}

interface Dockerfile {
  env: Record<string, string>;
  /** ENTRYPOINT then CMD of the last stage. */
  command: string[];
  healthcheck: string[];
  user: string | undefined;
  runs: string[];
}

function parseDockerfile(path: string): Dockerfile {
  // Continuation lines joined; comments dropped.
  const instructions = read(path)
    .replace(/\\\n/g, ' ')
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.trimStart().startsWith('#'));
  const lastStage = instructions.slice(instructions.findLastIndex((line) => line.startsWith('FROM ')));
  const json = (line: string | undefined, keyword: string) =>
    line ? (JSON.parse(line.slice(line.indexOf('[', keyword.length))) as string[]) : [];
  const env: Record<string, string> = {};
  for (const line of lastStage.filter((instruction) => instruction.startsWith('ENV '))) {
    for (const [, name, value] of line.slice(4).matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) env[name!] = value!;
  }
  return {
    env,
    command: [
      ...json(
        lastStage.findLast((line) => line.startsWith('ENTRYPOINT ')),
        'ENTRYPOINT',
      ),
      ...json(
        lastStage.findLast((line) => line.startsWith('CMD ')),
        'CMD',
      ),
    ],
    healthcheck: json(
      lastStage.find((line) => line.startsWith('HEALTHCHECK ')),
      'HEALTHCHECK --interval',
    ),
    user: lastStage
      .findLast((line) => line.startsWith('USER '))
      ?.slice(5)
      .trim(),
    runs: instructions.filter((line) => line.startsWith('RUN ')),
  };
}

/** The arguments after `serve` in a command line, which runs Node with the V8 options every sidecar launcher passes. */
function serveArgs(command: string[]): string[] {
  const head = ['node', ...SIDECAR_NODE_OPTIONS, 'bin/sirocco.mjs', 'serve'];
  expect(command.slice(0, head.length)).toEqual(head);
  return command.slice(head.length);
}

describe.each([
  { file: 'Dockerfile', device: 'cpu', install: 'ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev' },
  { file: 'Dockerfile.cuda', device: 'cuda', install: 'ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci --omit=dev' },
])('$file', ({ file, device, install }) => {
  const dockerfile = parseDockerfile(file);

  it('sets only variables the sidecar reads, SIROCCO_HOME on the volume', () => {
    const readByServe = variablesServeReads();
    for (const name of Object.keys(dockerfile.env)) expect(readByServe, `${file} sets ${name}`).toContain(name);
    expect(dockerfile.env[ENV.home]).toBe('/data');
    expect(readFileSync(join(REPO_ROOT, file), 'utf8')).toMatch(/^VOLUME \["\/data"\]$/m);
  });

  it('runs `sirocco serve` with flags the real loader accepts, listening beyond the container', () => {
    const config = loadServeConfig(serveArgs(dockerfile.command), {})!;
    expect(config.host).toBe('0.0.0.0');
    expect(config.device).toBe(device);
    // No --model: the demo models, so a bare `docker run` works; an operator passes --model /models/….
    expect(config.modelDirs).toEqual([]);
  });

  it('probes /health on the port it serves, with node (the image has no curl)', () => {
    const config = loadServeConfig(serveArgs(dockerfile.command), {})!;
    expect(dockerfile.healthcheck[0]).toBe('node');
    const url = /fetch\('([^']+)'\)/.exec(dockerfile.healthcheck.join(' '))?.[1];
    expect(url).toBe(`http://127.0.0.1:${config.port}${SIDECAR_PATHS.health}`);
    expect(readFileSync(join(REPO_ROOT, file), 'utf8')).toMatch(new RegExp(`^EXPOSE ${config.port}$`, 'm'));
  });

  it('installs production dependencies only, with the right onnxruntime download, and runs as a non-root user', () => {
    expect(dockerfile.runs.some((run) => run.includes(install))).toBe(true);
    expect(dockerfile.user).toBeDefined();
    expect(['root', '0']).not.toContain(dockerfile.user);
  });

  it('builds the native expert kernel where a toolchain is (the full node image) and ships it in the runtime image', () => {
    const text = readFileSync(join(REPO_ROOT, file), 'utf8');
    expect(text).toMatch(/^FROM node:20 AS build$/m);
    for (const input of ['binding.gyp', 'scripts/build-native.mjs', 'sidecar/engine/native']) expect(text).toContain(input);
    expect(dockerfile.runs.some((run) => run.includes('test -f build/Release/block_gemm.node'))).toBe(true);
    expect(text).toMatch(/^COPY --from=build \/app\/build\/Release\/block_gemm.node \.\/build\/Release\/block_gemm.node$/m);
  });
});

describe("Dockerfile's health check, run", () => {
  it("passes against a sidecar started with the image's arguments and a signing secret, and fails once it is gone", async () => {
    const dockerfile = parseDockerfile('Dockerfile');
    const args = serveArgs(dockerfile.command);
    // The image's flags, on a free port instead of 8080.
    const portAt = args.indexOf('--port');
    const sidecar = await startSidecarProcess({
      args: args.filter((_, index) => index !== portAt && index !== portAt + 1),
      env: { [ENV.sidecarSecret]: 'f'.repeat(64) },
    });
    const [node, flag, script] = dockerfile.healthcheck;
    const probe = () =>
      promisify(execFile)(node!, [flag!, script!.replace('http://127.0.0.1:8080', sidecar.url.replace('0.0.0.0', '127.0.0.1'))]).then(
        () => 0,
        (error: { code: number }) => error.code,
      );
    try {
      expect(await probe()).toBe(0);
    } finally {
      await sidecar.stop();
    }
    expect(await probe()).toBe(1);
  });
});

describe('the image context (.dockerignore)', () => {
  it('leaves out secrets, local state and installed modules', () => {
    const ignored = read('.dockerignore').split('\n');
    for (const entry of ['.dev.vars', '.wrangler', '.sirocco', '**/node_modules', '.git']) expect(ignored).toContain(entry);
  });
});

describe('deploy/sirocco-sidecar.service', () => {
  const unit = read('deploy/sirocco-sidecar.service');
  const values = (key: string) => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((match) => match[1]!);

  it('sets only variables the sidecar reads, and keeps secrets in its EnvironmentFile', () => {
    const readByServe = variablesServeReads();
    for (const assignment of values('Environment')) expect(readByServe).toContain(assignment.split('=')[0]);
    expect(unit).not.toMatch(/SIROCCO_SIDECAR_SECRET=/);
    expect(values('EnvironmentFile')).toEqual(['/etc/sirocco/sidecar.env']);
    for (const line of read('deploy/sidecar.env.example')
      .split('\n')
      .filter((text) => /^[A-Z]/.test(text))) {
      expect(readByServe).toContain(line.split('=')[0]);
      expect(line).toMatch(/=$/);
    }
  });

  it("ExecStart's serve flags parse, on loopback behind the TLS proxy, as a non-root user", () => {
    const [execStart] = values('ExecStart');
    const [nodePath, ...command] = execStart!.split(/\s+/);
    expect(nodePath).toMatch(/\/node$/);
    const config = loadServeConfig(serveArgs(['node', ...command]), {})!;
    expect(config.host).toBe('127.0.0.1');
    expect(config.modelDirs.length).toBeGreaterThan(0);
    expect(values('User')).toEqual(['sirocco']);
  });
});
