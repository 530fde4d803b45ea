/**
 * Fake regional sidecars for the edge's Workers-runtime tests. They run inside the test isolate
 * (injected as the app's `fetch`), verify the edge's HMAC signature with the real shared/signing.ts,
 * and answer with Mistral-shaped JSON or SSE, or misbehave on demand. The real end-to-end path
 * (wrangler dev in front of real sidecar processes) is covered by test/e2e/.
 */

import { errorBody, streamErrorFrame } from '../../shared/errors.ts';
import type { LoadReport } from '../../shared/protocol.ts';
import { verifyRequest } from '../../shared/signing.ts';
import { encodeSseData, SSE_DONE, SSE_KEEP_ALIVE } from '../../shared/sse.ts';

export type Behaviour =
  | 'ok'
  /** Connection refused. */
  | 'refuse'
  /** 500 with a Mistral `internal_error` body: the sidecar's own failure. */
  | 'http-500'
  /** 500 whose Mistral body says `invalid_request_error`: the request's fault, as an older sidecar reports it. */
  | 'http-500-request-fault'
  /** 400 `invalid_request_error`, e.g. a prompt the sidecar cannot handle. */
  | 'http-400'
  /** 403: the sidecar refuses the edge's credentials. */
  | 'http-403'
  /** 503 `overloaded`: the sidecar sheds load. */
  | 'http-503'
  /** Non-stream: sends its response headers, then never finishes the body until aborted. */
  | 'hang-after-headers'
  /** Streams the first chunks, then no data event (only `: keep-alive` comments) until aborted, like a stopped process behind a proxy. */
  | 'silent-mid-stream'
  /** Accepts the connection and never answers until aborted. */
  | 'hang'
  /** Streams the first chunks, then the connection drops. */
  | 'cut-mid-stream'
  /** Streams the first chunks, then sends an error frame. */
  | 'error-mid-stream'
  /** Answers 200 text/event-stream whose first event is an error frame (Portkey #1047). */
  | 'error-first'
  /** Streams the first chunk, then waits (a long prefill) until aborted or released. */
  | 'stall';

export interface RecordedRequest {
  url: string;
  headers: Headers;
  body: string;
  signal: AbortSignal | undefined;
  signatureOk: boolean;
}

export interface FakeSidecar {
  region: string;
  behaviour: Behaviour;
  /** Delay before the response headers, like a sidecar that answers after its prefill. */
  startDelayMs: number;
  ready: boolean;
  load: Pick<LoadReport, 'queueDepth' | 'activeSequences'>;
  requests: RecordedRequest[];
  probes: number;
  /** Resolves the current 'stall' streams: they continue to the end. */
  release(): void;
}

const encoder = new TextEncoder();

function completionChunks(region: string, model: string) {
  const base = { id: `cmpl-${region}`, object: 'chat.completion.chunk', created: 1_700_000_000, model };
  return [
    { ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] },
    { ...base, choices: [{ index: 0, delta: { content: 'Hello' }, finish_reason: null }] },
    { ...base, choices: [{ index: 0, delta: { content: ` from ${region}` }, finish_reason: null }] },
    {
      ...base,
      choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
    },
  ];
}

function rejectOnAbort(signal: AbortSignal | undefined): Promise<never> {
  return new Promise((_, reject) => {
    if (signal?.aborted) reject(signal.reason);
    signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

export function createFakeSidecars(regions: Record<string, string>, secret: string) {
  const byOrigin = new Map<string, FakeSidecar & { releases: (() => void)[] }>();
  for (const [region, url] of Object.entries(regions)) {
    const releases: (() => void)[] = [];
    byOrigin.set(new URL(url).origin, {
      region,
      behaviour: 'ok',
      startDelayMs: 0,
      ready: true,
      load: { queueDepth: 0, activeSequences: 0 },
      requests: [],
      probes: 0,
      releases,
      release() {
        for (const release of releases.splice(0)) release();
      },
    });
  }

  async function streamResponse(sidecar: FakeSidecar & { releases: (() => void)[] }, model: string, signal: AbortSignal | undefined) {
    const chunks = completionChunks(sidecar.region, model);
    const behaviour = sidecar.behaviour;
    let released: Promise<void> | undefined;
    if (behaviour === 'stall') released = new Promise((resolve) => sidecar.releases.push(resolve));
    let index = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (index === 1 && released) {
          try {
            await Promise.race([released, rejectOnAbort(signal)]);
          } catch (error) {
            return controller.error(error);
          }
        }
        if (index === 2 && behaviour === 'silent-mid-stream') {
          // Comments keep coming, data never does: the edge's idle timeout must not count comments.
          const comments = setInterval(() => controller.enqueue(encoder.encode(SSE_KEEP_ALIVE)), 20);
          try {
            await rejectOnAbort(signal);
          } catch (error) {
            controller.error(error);
          } finally {
            clearInterval(comments);
          }
          return;
        }
        if (index === 2 && behaviour === 'cut-mid-stream') return controller.error(new Error('connection reset by peer'));
        if ((index === 2 && behaviour === 'error-mid-stream') || behaviour === 'error-first') {
          controller.enqueue(encoder.encode(encodeSseData(streamErrorFrame('internal_error', 'decoder crashed'))));
          return controller.close();
        }
        if (index < chunks.length) controller.enqueue(encoder.encode(encodeSseData(chunks[index])));
        else if (index === chunks.length) controller.enqueue(encoder.encode(encodeSseData(SSE_DONE)));
        else controller.close();
        index += 1;
      },
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  }

  const fetchImpl: typeof fetch = async (input, init) => {
    const request = new Request(input, init);
    const url = new URL(request.url);
    const sidecar = byOrigin.get(url.origin);
    if (!sidecar || sidecar.behaviour === 'refuse') throw new TypeError(`Network connection lost (${url.origin})`);
    const body = await request.text();
    if (url.pathname === '/ready') {
      sidecar.probes += 1;
      const report: LoadReport = {
        ready: sidecar.ready,
        region: sidecar.region,
        models: ['mistral-tiny', 'mistral-small'],
        maxBatch: 4,
        maxQueue: 12,
        tokensPerSecond: 10,
        ...sidecar.load,
      };
      return Response.json(report, { status: sidecar.ready ? 200 : 503 });
    }
    const signatureOk = (
      await verifyRequest({ secret, method: request.method, path: url.pathname + url.search, body, headers: request.headers })
    ).ok;
    sidecar.requests.push({ url: request.url, headers: request.headers, body, signal: init?.signal ?? undefined, signatureOk });
    if (!signatureOk) return Response.json(errorBody('unauthorized', 'bad signature'), { status: 401 });
    if (sidecar.startDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, sidecar.startDelayMs));
    if (sidecar.behaviour === 'http-500') return Response.json(errorBody('internal_error', 'boom'), { status: 500 });
    if (sidecar.behaviour === 'http-500-request-fault')
      return Response.json(errorBody('invalid_request_error', 'Prompt has an unsupported control token', 'messages'), { status: 500 });
    if (sidecar.behaviour === 'http-400')
      return Response.json(errorBody('invalid_request_error', 'Prompt has an unsupported control token', 'messages'), { status: 400 });
    if (sidecar.behaviour === 'http-403') return Response.json(errorBody('forbidden', 'bad credentials'), { status: 403 });
    if (sidecar.behaviour === 'http-503') return Response.json(errorBody('overloaded', 'queue full'), { status: 503 });
    if (sidecar.behaviour === 'hang-after-headers') {
      const signal = init?.signal ?? undefined;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            await rejectOnAbort(signal);
          } catch (error) {
            controller.error(error);
          }
        },
      });
      return new Response(body, { headers: { 'content-type': 'application/json' } });
    }
    if (sidecar.behaviour === 'hang') return rejectOnAbort(init?.signal ?? undefined);

    const chat = JSON.parse(body) as { model: string; stream?: boolean; max_tokens?: number };
    if (chat.max_tokens === 999_999) {
      return Response.json(errorBody('invalid_request_error', 'Prompt plus max_tokens exceeds the context', 'max_tokens'), { status: 400 });
    }
    if (chat.stream) return streamResponse(sidecar, chat.model, init?.signal ?? undefined);
    return Response.json({
      id: `cmpl-${sidecar.region}`,
      object: 'chat.completion',
      created: 1_700_000_000,
      model: chat.model,
      choices: [{ index: 0, message: { role: 'assistant', content: `Hello from ${sidecar.region}` }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
    });
  };

  return {
    fetch: fetchImpl,
    sidecar(region: string): FakeSidecar {
      const found = [...byOrigin.values()].find((sidecar) => sidecar.region === region);
      if (!found) throw new Error(`no fake sidecar for region ${region}`);
      return found;
    },
  };
}
