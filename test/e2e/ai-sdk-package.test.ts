/**
 * The AI SDK provider as a user installs it: `npm pack clients/ai-sdk` (its prepack builds dist/), the tarball
 * installed into an app outside the repository next to `ai` and `zod`, and a plain `node` script (no tsx, nothing
 * else from Sirocco) calling generateText, streamText and generateObject against the real stack. A TypeScript file in
 * the same app is type-checked against the package's declarations.
 *
 * Installing needs no network: `ai`, `zod` and the provider's two dependencies are linked from the repository's
 * node_modules into the app, and only the tarball is installed (`--no-save --offline`). `--legacy-peer-deps` because
 * npm, offline, cannot read the version of a linked package to check the tarball's peer range against it (it reports
 * `ai@undefined`); the script below imports that very `ai`, so a wrong peer would still fail here.
 */
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Stack } from '../../cli/commands/dev.ts';
import { REPO_ROOT } from '../../cli/processes.ts';
import { startTestStack } from '../support/stack-fixture.ts';

const run = promisify(execFile);
const PACKAGE_DIR = join(REPO_ROOT, 'clients/ai-sdk');
/** What the app takes from the repository's node_modules instead of the registry. */
const LINKED_PACKAGES = ['ai', 'zod', '@ai-sdk/provider', '@ai-sdk/provider-utils'];

const APP_SCRIPT = `
import { APICallError, generateObject, generateText, streamText } from 'ai';
import { createSirocco } from 'sirocco-ai-sdk';
import { z } from 'zod';

const sirocco = createSirocco({ baseURL: process.env.APP_BASE_URL, apiKey: process.env.APP_API_KEY });
const report = { resolved: import.meta.resolve('sirocco-ai-sdk') };

const generated = await generateText({ model: sirocco('mistral-tiny'), prompt: 'Hello', maxOutputTokens: 8, seed: 1 });
report.generateText = { text: generated.text, finishReason: generated.finishReason, usage: generated.usage, modelId: generated.response.modelId };

const streamed = streamText({ model: sirocco('mistral-small'), prompt: 'Hello', maxOutputTokens: 6, seed: 2 });
const deltas = [];
for await (const delta of streamed.textStream) deltas.push(delta);
report.streamText = { deltas, text: await streamed.text, finishReason: await streamed.finishReason, usage: await streamed.usage };

const object = await generateObject({ model: sirocco('mistral-tiny'), schema: z.looseObject({}), prompt: 'Answer in JSON', maxOutputTokens: 24, seed: 1, maxRetries: 0 });
report.generateObject = { object: object.object };

try {
  await generateText({ model: createSirocco({ baseURL: process.env.APP_BASE_URL, apiKey: 'sk-wrong' })('mistral-tiny'), prompt: 'x', maxOutputTokens: 4, maxRetries: 0 });
  report.error = null;
} catch (error) {
  report.error = { isApiCallError: APICallError.isInstance(error), statusCode: error.statusCode, isRetryable: error.isRetryable, message: error.message };
}
console.log(JSON.stringify(report));
`;

const APP_TYPES = `
import { generateText } from 'ai';
import { createSirocco, type SiroccoProviderSettings } from 'sirocco-ai-sdk';

const settings: SiroccoProviderSettings = { baseURL: 'https://sirocco.example/v1', apiKey: 'sk', region: 'eu-west' };
const { text } = await generateText({ model: createSirocco(settings)('mistral-tiny'), prompt: 'x', maxOutputTokens: 4 });
const length: number = text.length;
// @ts-expect-error: the settings are typed, so a misspelt option is refused.
createSirocco({ baseUrl: 'https://sirocco.example/v1' });
export { length };
`;

interface AppReport {
  resolved: string;
  generateText: { text: string; finishReason: string; usage: { outputTokens?: number }; modelId: string };
  streamText: { deltas: string[]; text: string; finishReason: string; usage: { outputTokens?: number } };
  generateObject: { object: unknown };
  error: { isApiCallError: boolean; statusCode: number; isRetryable: boolean; message: string } | null;
}

let stack: Stack;
let work: string;
let app: string;
let tarball: string;

/** `npm pack` into a temp folder, then an app beside it with the tarball installed. */
async function installPackedProvider(): Promise<void> {
  work = await mkdtemp(join(tmpdir(), 'sirocco-ai-sdk-package-'));
  const { stdout } = await run('npm', ['pack', PACKAGE_DIR, '--pack-destination', work, '--json'], { cwd: work });
  const [packed] = JSON.parse(stdout) as Array<{ filename: string }>;
  tarball = join(work, packed!.filename);

  app = join(work, 'app');
  await mkdir(join(app, 'node_modules/@ai-sdk'), { recursive: true });
  await writeFile(
    join(app, 'package.json'),
    JSON.stringify({
      name: 'sirocco-ai-sdk-app',
      private: true,
      type: 'module',
      dependencies: { 'sirocco-ai-sdk': `file:${tarball}`, ai: '^6.0.0', zod: '^4.1.8' },
    }),
  );
  for (const name of LINKED_PACKAGES) await symlink(join(REPO_ROOT, 'node_modules', name), join(app, 'node_modules', name), 'dir');
  await run('npm', ['install', '--no-save', '--offline', '--legacy-peer-deps', '--no-audit', '--no-fund', tarball], { cwd: app });
  await writeFile(join(app, 'app.mjs'), APP_SCRIPT);
  await writeFile(join(app, 'app.ts'), APP_TYPES);
}

beforeAll(async () => {
  [stack] = await Promise.all([startTestStack(), installPackedProvider()]);
}, 300_000);
afterAll(async () => {
  await stack?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('sirocco-ai-sdk as a packed package', () => {
  it('packs built ESM JavaScript and declarations, no TypeScript sources or test helpers', async () => {
    const { stdout } = await run('tar', ['tzf', tarball]);
    const files = stdout.trim().split('\n').sort();
    expect(files).toContain('package/dist/index.js');
    expect(files).toContain('package/dist/index.d.ts');
    expect(files).toContain('package/README.md');
    expect(files.filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts'))).toEqual([]);
    expect(files.filter((file) => /test/.test(file))).toEqual([]);

    const installed = join(app, 'node_modules/sirocco-ai-sdk');
    expect((await lstat(installed)).isSymbolicLink()).toBe(false);
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(Object.keys(manifest.dependencies).sort()).toEqual(['@ai-sdk/provider', '@ai-sdk/provider-utils']);
    // The built code imports nothing from the repository.
    for (const file of await readdir(join(installed, 'dist'))) {
      if (file.endsWith('.js')) expect(await readFile(join(installed, 'dist', file), 'utf8')).not.toMatch(/from ['"]\.\.\/\.\.\//);
    }
  });

  it('a plain node script generates, streams and generates an object against the real stack, and gets API errors', async () => {
    const { stdout } = await run(process.execPath, ['app.mjs'], {
      cwd: app,
      env: { PATH: process.env.PATH, APP_BASE_URL: `${stack.edgeUrl}/v1`, APP_API_KEY: stack.apiKey },
    });
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as AppReport;

    expect(report.resolved).toBe(`file://${join(app, 'node_modules/sirocco-ai-sdk/dist/index.js')}`);

    expect(typeof report.generateText.text).toBe('string');
    expect(report.generateText.modelId).toBe('mistral-tiny');
    expect(report.generateText.finishReason).toMatch(/^(stop|length)$/);
    expect(report.generateText.usage.outputTokens).toBeGreaterThan(0);
    expect(report.generateText.usage.outputTokens).toBeLessThanOrEqual(8);

    expect(report.streamText.deltas.length).toBeGreaterThan(0);
    expect(report.streamText.deltas.join('')).toBe(report.streamText.text);
    expect(report.streamText.usage.outputTokens).toBeGreaterThan(0);
    expect(report.streamText.usage.outputTokens).toBeLessThanOrEqual(6);

    expect(report.generateObject.object).toBeTypeOf('object');
    expect(Array.isArray(report.generateObject.object)).toBe(false);

    expect(report.error).toMatchObject({ isApiCallError: true, statusCode: 401, isRetryable: false });
    expect(report.error!.message).toBe('Unauthorized: invalid API key');
  });

  it("a TypeScript app type-checks against the package's declarations", async () => {
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
    const args = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022'];
    // skipLibCheck: @ai-sdk/provider's own declarations need @types/json-schema, which the SDK does not install.
    await expect(run(process.execPath, [tsc, ...args, '--skipLibCheck', 'app.ts'], { cwd: app })).resolves.toBeDefined();
  });
});
