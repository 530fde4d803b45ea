/**
 * `sirocco serve --expert-cache-mb N` as an operator runs it: real sidecar processes over HTTP,
 * paging the demo Mixtral's int4 experts (mistral-small) from a private copy of its store.
 *
 * - Under a budget of four experts a chat completion succeeds and /metrics reports the cache:
 *   misses, bytes paged in (= page-ins × file size), resident bytes within the budget, the budget
 *   itself in bytes, and the page-in latency histogram, all for the Mixtral model id.
 * - A missing expert file fails the request that must page it (500, Mistral's error body naming
 *   the expert's layer and index and the request id, never the server's path; before the first
 *   byte of a stream, or as one SSE error frame without [DONE] once it has started); the process
 *   keeps serving the dense model, and the same Mixtral answers again once the file is back,
 *   without a restart. The sidecar's own log line names the file.
 * - A corrupt expert file (payload bytes flipped before its first page-in) fails the request with
 *   the expert and "checksum mismatch"; the sidecar keeps serving and answers once it is repaired.
 *   So does one corrupted after it was paged and verified: a changed file is verified again.
 * - A budget below one layer's top-2 experts is refused at start: non-zero exit, a message naming
 *   --expert-cache-mb and the minimum, no stack trace.
 *
 * The golden tiny Mixtral has no tokenizer (512-token vocabulary), so chat runs on the demo store.
 * The shared demo store under TEST_HOME is only ever copied, never changed.
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type MistralErrorBody, MistralErrorBodySchema } from '../../shared/errors.ts';
import { HEADERS } from '../../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { ensureDemoModels } from '../../sidecar/convert/demo-model.ts';
import { chatRequest, postChat, readStream, type SidecarProcess, startSidecarProcess, TEST_HOME } from '../support/sidecar-process.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
const MIB = 1024 * 1024;
const MIXTRAL = 'mistral-small';
/** Four of the demo Mixtral's 201,792-byte int4 experts fit (not five); a whole number of bytes. */
const BUDGET_MB = 0.78125;
const BUDGET_BYTES = BUDGET_MB * MIB; // 819,200

let work: string;
let demo: { 'mistral-tiny': string; 'mistral-small': string };

beforeAll(async () => {
  vi.stubEnv('SIROCCO_HOME', TEST_HOME);
  try {
    demo = await ensureDemoModels();
  } finally {
    vi.unstubAllEnvs();
  }
  work = await mkdtemp(join(tmpdir(), 'sirocco-expert-paging-'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function readExpertIndex(storeDir: string) {
  return JSON.parse(await readFile(join(storeDir, 'experts-int4', 'index.json'), 'utf8')) as {
    fileBytes: number;
    topK: number;
    layers: number;
    experts: number;
  };
}

/** A private copy of the demo Mixtral store (real copies: the shared store is never touched). */
async function copyMixtralStore(name: string) {
  const dir = join(work, name);
  await cp(demo['mistral-small'], dir, { recursive: true });
  const expertsDir = join(dir, 'experts-int4');
  const index = await readExpertIndex(dir);
  const layerFiles = (layer: number) => Array.from({ length: index.experts }, (_, e) => join(expertsDir, `L${layer}-E${e}.bin`));
  return { dir, expertsDir, index, layerFiles };
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function mixtralChat(content: string, extra: Record<string, unknown> = {}) {
  return chatRequest(content, { model: MIXTRAL, ...extra });
}

/** The value of `name{…model="<model>"…}` on a Prometheus text page; undefined when absent. */
function metric(page: string, name: string, model = MIXTRAL): number | undefined {
  for (const line of page.split('\n')) {
    const match = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (match && match[1] === name && match[2]!.split(',').includes(`model="${model}"`)) return Number(match[3]);
  }
  return undefined;
}

/** The 500 body, and the request id the sidecar answered under (what its message must quote). */
async function expectModelFailure(response: Response): Promise<MistralErrorBody & { requestId: string }> {
  expect(response.status).toBe(500);
  expect(response.headers.get('content-type')).toContain('application/json');
  const body = MistralErrorBodySchema.parse(await response.json());
  // A bad store is the operator's problem: the caller sees an internal error naming the expert, not the server's paths.
  expect(body.type).toBe('internal_error');
  expect(body.message).not.toMatch(/\//);
  const requestId = response.headers.get(HEADERS.requestId);
  expect(requestId).toBeTruthy();
  return { ...body, requestId: requestId! };
}

/** The operator's log line for a failed request names the file the client is not told about (stdout may trail the response). */
async function expectLoggedPath(sidecar: SidecarProcess, requestId: string, path: RegExp) {
  await vi.waitFor(() => expect(JSON.stringify(sidecar.logs.filter((line) => line.requestId === requestId))).toMatch(path), {
    timeout: 5_000,
  });
}

async function expectAnswer(sidecar: SidecarProcess, model = MIXTRAL) {
  const response = await postChat(sidecar.url, chatRequest('Are you there?', { model, max_tokens: 4 }), {
    signal: AbortSignal.timeout(30_000),
  });
  expect(response.status).toBe(200);
  const body = (await response.json()) as { model: string; usage: { completion_tokens: number } };
  expect(body.model).toBe(model);
  expect(body.usage.completion_tokens).toBeGreaterThan(0);
}

async function expectHealthy(sidecar: SidecarProcess) {
  expect(sidecar.child.exitCode).toBeNull();
  const health = await fetch(`${sidecar.url}/health`);
  expect(health.status).toBe(200);
  expect(await health.json()).toMatchObject({ status: 'ok' });
}

describe('serve --expert-cache-mb with a budget of four experts (the demo Mixtral beside the dense demo model)', () => {
  let sidecar: SidecarProcess;
  let store: Awaited<ReturnType<typeof copyMixtralStore>>;
  let pid: number | undefined;
  /** Where layer 0's expert files wait while they are "missing". */
  let away: string;

  beforeAll(async () => {
    store = await copyMixtralStore('served');
    away = join(work, 'away');
    await mkdir(away);
    sidecar = await startSidecarProcess({
      args: ['--model', `${demo['mistral-tiny']},${store.dir}`, '--expert-cache-mb', String(BUDGET_MB)],
    });
    pid = sidecar.child.pid;
  });
  afterAll(async () => {
    expect(await sidecar?.stop()).toBe(0);
  });

  // Layer 0 runs first in every forward step, and a four-expert budget only ever holds the
  // experts of the last layers run, so with layer 0's files gone the next step must page one.
  async function removeLayer0() {
    for (const file of store.layerFiles(0)) await rename(file, join(away, file.slice(store.expertsDir.length + 1)));
  }
  async function restoreLayer0() {
    for (const file of store.layerFiles(0)) await rename(join(away, file.slice(store.expertsDir.length + 1)), file);
  }
  const missingLayer0File = (requestId: string) =>
    new RegExp(`^the file of expert [0-7] in layer 0 cannot be read: ENOENT \\(request ${escapeRegExp(requestId)}\\)$`);
  const loggedLayer0File = () => new RegExp(`expert file ${escapeRegExp(store.expertsDir)}/L0-E[0-7]\\.bin cannot be read: ENOENT`);

  it('logs how the Mixtral runs each layer up to its experts: natively on x86-64, where npm ci builds the addon', () => {
    const loaded = sidecar.logs.find((line) => line.msg === 'model loaded' && line.model === MIXTRAL);
    expect(loaded?.layers).toMatch(
      process.arch === 'x64' ? /^native attention layers \(q[48]_0, (avx512vnni|avx2)\) and head$/ : /^onnxruntime layer graphs$/,
    );
  });

  it('answers a chat completion, and /metrics then reports misses, paged bytes, residency within the budget and page-in latency', async () => {
    const response = await postChat(sidecar.url, mixtralChat('Tell me about the mistral wind', { max_tokens: 8, temperature: 0 }));
    expect(response.status).toBe(200);
    const completion = (await response.json()) as {
      model: string;
      choices: Array<{ message: { content: string } }>;
      usage: { completion_tokens: number };
    };
    expect(completion.model).toBe(MIXTRAL);
    expect(completion.usage.completion_tokens).toBeGreaterThan(0);
    expect(completion.choices[0]!.message.content.length).toBeGreaterThan(0);

    const page = await (await fetch(`${sidecar.url}/metrics`)).text();
    expect(metric(page, 'sirocco_expert_cache_budget_bytes')).toBe(BUDGET_BYTES);
    // 2 experts × 4 layers per step cannot fit in 4 slots: every step pages.
    expect(metric(page, 'sirocco_expert_cache_misses')).toBeGreaterThan(0);
    expect(metric(page, 'sirocco_expert_cache_hits')).toBeGreaterThanOrEqual(0);
    expect(metric(page, 'sirocco_expert_cache_prefetch_hits')).toBeGreaterThanOrEqual(0);
    expect(metric(page, 'sirocco_expert_cache_prefetch_wasted')).toBeGreaterThanOrEqual(0);
    const pagedIn = metric(page, 'sirocco_expert_cache_paged_in_bytes')!;
    expect(pagedIn).toBeGreaterThan(0);
    const resident = metric(page, 'sirocco_expert_cache_resident_bytes')!;
    expect(resident).toBeGreaterThan(0);
    expect(resident).toBeLessThanOrEqual(BUDGET_BYTES);
    expect(resident % store.index.fileBytes).toBe(0);
    const pageIns = metric(page, 'sirocco_expert_page_in_seconds_count')!;
    expect(pageIns).toBeGreaterThan(0);
    expect(metric(page, 'sirocco_expert_page_in_seconds_sum')).toBeGreaterThan(0);
    // Every page-in reads one whole expert file and is timed once.
    expect(pagedIn).toBe(pageIns * store.index.fileBytes);
    // The dense model has no expert cache.
    expect(metric(page, 'sirocco_expert_cache_budget_bytes', 'mistral-tiny')).toBeUndefined();
  });

  describe('a missing expert file', () => {
    it('fails the request that must page it with a 500 naming the expert and the request id; the process and the other model keep serving', async () => {
      await removeLayer0();
      const body = await expectModelFailure(
        await postChat(sidecar.url, mixtralChat('Hello there', { max_tokens: 4 }), { signal: AbortSignal.timeout(30_000) }),
      );
      expect(body.message).toMatch(missingLayer0File(body.requestId));
      await expectLoggedPath(sidecar, body.requestId, loggedLayer0File());
      await expectHealthy(sidecar);
      await expectAnswer(sidecar, 'mistral-tiny');
    });

    it('fails a stream that must page it before its first byte, with the same JSON error (not an empty 200 stream)', async () => {
      const response = await postChat(sidecar.url, mixtralChat('Hello there', { max_tokens: 4, stream: true }), {
        signal: AbortSignal.timeout(30_000),
      });
      const body = await expectModelFailure(response);
      expect(body.message).toMatch(missingLayer0File(body.requestId));
      await expectHealthy(sidecar);
    });

    it('answers again, streaming or not, once the file is back, in the same process', async () => {
      await restoreLayer0();
      expect(sidecar.child.pid).toBe(pid);
      await expectAnswer(sidecar);
      const stream = await readStream(
        await postChat(sidecar.url, mixtralChat('And now?', { max_tokens: 4, stream: true }), { signal: AbortSignal.timeout(30_000) }),
      );
      expect(stream.sawDone).toBe(true);
      expect(stream.chunks.some((chunk) => chunk.object === 'error')).toBe(false);
    });

    it('ends a stream that loses the file mid-way with one error frame naming the expert and no [DONE], then serves again once it is back', async () => {
      // Greedy and thousands of tokens long: it is still decoding when layer 0 disappears.
      const response = await postChat(sidecar.url, mixtralChat('Keep talking', { max_tokens: 6000, temperature: 0, stream: true }), {
        signal: AbortSignal.timeout(60_000),
      });
      expect(response.status).toBe(200);
      const requestId = response.headers.get(HEADERS.requestId)!;
      const events = readSseEvents(response.body!);
      const role = await events.next();
      const firstToken = await events.next();
      expect(role.done || firstToken.done).toBe(false);
      expect(JSON.parse(firstToken.value!.data)).toMatchObject({ object: 'chat.completion.chunk' });
      await removeLayer0();
      const rest: string[] = [];
      for await (const event of events) rest.push(event.data);
      await restoreLayer0();

      expect(rest).not.toContain(SSE_DONE);
      expect(rest.length).toBeGreaterThan(0);
      // Text chunks already generated may come first; the stream then ends with exactly one error frame.
      const frames = rest.map((data) => JSON.parse(data) as Record<string, unknown>);
      const errors = frames.filter((frame) => frame.object === 'error');
      expect(errors).toHaveLength(1);
      expect(frames.at(-1)).toBe(errors[0]);
      const frame = MistralErrorBodySchema.parse(errors[0]);
      expect(frame.type).toBe('internal_error');
      expect(frame.message).toMatch(missingLayer0File(requestId));
      expect(errors[0]).toMatchObject({ error: { message: frame.message, type: 'internal_error' } });
      for (const text of frames.slice(0, -1))
        expect(text).toMatchObject({ object: 'chat.completion.chunk', choices: [{ finish_reason: null }] });

      await expectHealthy(sidecar);
      expect(sidecar.child.pid).toBe(pid);
      await expectAnswer(sidecar);
    });
  });
});

describe('a corrupt expert file', () => {
  let sidecar: SidecarProcess;
  let store: Awaited<ReturnType<typeof copyMixtralStore>>;
  const originals = new Map<string, Buffer>();

  beforeAll(async () => {
    store = await copyMixtralStore('corrupt');
    // One payload byte flipped in every layer-0 file, before the process has paged any of them:
    // headers stay valid, so only the checksum (verified on a file's first page-in) can tell.
    for (const file of store.layerFiles(0)) {
      const bytes = await readFile(file);
      originals.set(file, Buffer.from(bytes));
      bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
      await writeFile(file, bytes);
    }
    sidecar = await startSidecarProcess({ args: ['--model', store.dir, '--expert-cache-mb', String(BUDGET_MB)] });
  });
  afterAll(async () => {
    expect(await sidecar?.stop()).toBe(0);
  });

  it('fails the request that pages it with a 500 naming the expert and the checksum mismatch, keeps serving, and answers once the file is repaired', async () => {
    const body = await expectModelFailure(
      await postChat(sidecar.url, mixtralChat('Hello there', { max_tokens: 4 }), { signal: AbortSignal.timeout(30_000) }),
    );
    expect(body.message).toMatch(
      new RegExp(`^the file of expert [0-7] in layer 0 is corrupt: checksum mismatch \\(request ${escapeRegExp(body.requestId)}\\)$`),
    );
    await expectLoggedPath(sidecar, body.requestId, new RegExp(`expert file ${escapeRegExp(store.expertsDir)}/L0-E[0-7]\\.bin is corrupt`));
    await expectHealthy(sidecar);

    for (const [file, bytes] of originals) await writeFile(file, bytes);
    await expectAnswer(sidecar);
    const page = await (await fetch(`${sidecar.url}/metrics`)).text();
    expect(metric(page, 'sirocco_expert_cache_resident_bytes')).toBeLessThanOrEqual(BUDGET_BYTES);
  });
});

describe('an expert file corrupted after its first successful use', () => {
  let sidecar: SidecarProcess;
  let store: Awaited<ReturnType<typeof copyMixtralStore>>;
  const originals = new Map<string, Buffer>();
  // Greedy, same prompt: the second request's first step routes to exactly the layer-0 experts the
  // first request paged (and verified), and the four-expert budget must page them again.
  const request = () =>
    postChat(sidecar.url, mixtralChat('The mistral blows down the Rhone valley', { max_tokens: 4, temperature: 0 }), {
      signal: AbortSignal.timeout(30_000),
    });

  beforeAll(async () => {
    store = await copyMixtralStore('corrupt-later');
    sidecar = await startSidecarProcess({
      args: ['--model', `${demo['mistral-tiny']},${store.dir}`, '--expert-cache-mb', String(BUDGET_MB)],
    });
  });
  afterAll(async () => {
    expect(await sidecar?.stop()).toBe(0);
  });

  it('fails the next request that pages it with a 500 naming the expert and the checksum mismatch, keeps serving others, and answers once repaired', async () => {
    expect((await request()).status).toBe(200);
    // Written in place, same size and header: only a new checksum over the changed file can tell.
    for (const file of store.layerFiles(0)) {
      const bytes = await readFile(file);
      originals.set(file, Buffer.from(bytes));
      bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
      await writeFile(file, bytes);
    }
    const body = await expectModelFailure(await request());
    expect(body.message).toMatch(
      new RegExp(`^the file of expert [0-7] in layer 0 is corrupt: checksum mismatch \\(request ${escapeRegExp(body.requestId)}\\)$`),
    );
    await expectHealthy(sidecar);
    await expectAnswer(sidecar, 'mistral-tiny');

    for (const [file, bytes] of originals) await writeFile(file, bytes);
    expect((await request()).status).toBe(200);
  });
});

describe("a budget below one layer's top-2 experts", () => {
  it('is refused at start: serve exits non-zero with a message naming --expert-cache-mb and the minimum, without a stack trace', async () => {
    // Refused while loading, before anything is read or written: the shared demo store is safe to name.
    const storeDir = demo['mistral-small'];
    const { fileBytes, topK } = await readExpertIndex(storeDir);
    const oneExpertMb = (fileBytes / MIB).toFixed(4);
    const minimumMb = (Math.ceil(((topK * fileBytes) / MIB) * 10_000) / 10_000).toFixed(4);
    const failure = await promisify(execFile)(
      process.execPath,
      ['bin/sirocco.mjs', 'serve', '--port', '0', '--threads', '1', '--model', storeDir, '--expert-cache-mb', oneExpertMb],
      { cwd: REPO_ROOT, env: { ...process.env, SIROCCO_HOME: TEST_HOME, SIROCCO_SIDECAR_SECRET: '' }, timeout: 60_000 },
    ).then(
      () => null,
      (error: { code: number | null; signal: string | null; stdout: string; stderr: string }) => error,
    );
    expect(failure).not.toBeNull();
    expect(failure!.signal).toBeNull(); // it exited by itself, not killed by the timeout
    expect(failure!.code).not.toBe(0);
    const message = `--expert-cache-mb ${oneExpertMb} is smaller than one layer's top-${topK} experts (${topK} × ${oneExpertMb} MiB); use at least ${minimumMb}`;
    expect(failure!.stderr).toContain(message);
    expect(failure!.stdout).not.toContain('"msg":"ready"');
    expect(`${failure!.stdout}\n${failure!.stderr}`).not.toMatch(/^\s+at /m);
  });
});
