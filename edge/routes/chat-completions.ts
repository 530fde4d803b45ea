/**
 * `POST /v1/chat/completions`, in three steps mounted in edge/app.ts around the rate limiter and
 * the response cache:
 *   validateChatRequest()   body → `chatRequest` (400 malformed JSON, 422 schema)
 *   resolveChatRoute()      model name → local model or upstream API (400 invalid_model, 403 key
 *                           not allowed, 400 tool call required of a local model)
 *   chatCompletions(deps)   forwards to the best region with failover, relays JSON or SSE, and
 *                           records usage in waitUntil. A stream is committed (200) when the first
 *                           chunk arrives, or after one keep-alive interval if the region is still
 *                           silent (long prefill): from then on, failures become error frames.
 *
 * Sidecars are always asked for a stream, also when the client wants one JSON answer: a sidecar sends
 * a non-stream answer's headers only when the generation is done, so only a stream shows a hung
 * region early. The edge then reads the stream to its end (edge/streaming/collect.ts) and answers the
 * JSON a non-stream sidecar would have sent, with the deadlines streams have: failover before the
 * first token (FIRST_BYTE_TIMEOUT_MS), 504 `timeout` after STREAM_IDLE_TIMEOUT_MS of silence
 * mid-generation (a failure on the region's circuit), and COMPLETION_TIMEOUT_MS for the whole answer.
 */
import type { Context, MiddlewareHandler } from 'hono';
import {
  type ChatCompletionRequest,
  ChatCompletionRequestSchema,
  type LocalModelId,
  requiresToolCall,
  resolveModelId,
  type Usage,
} from '../../shared/api.ts';
import { ERROR_CODES, MistralErrorBodySchema } from '../../shared/errors.ts';
import { HEADERS, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { signRequest } from '../../shared/signing.ts';
import { SSE_HEADERS } from '../../shared/sse.ts';
import { keyAllowsModel } from '../auth/index.ts';
import { secretFrom, sidecarsFrom, tunablesFrom, type UpstreamConfig, upstreamsFrom } from '../config/index.ts';
import { afterResponse, type EdgeDependencies, inBackground } from '../dependencies.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import type { Logger } from '../logging/index.ts';
import { type ClientGeo, clientLocation, type ForwardResult, forwardWithFailover, type Target } from '../routing/index.ts';
import { collectSseCompletion } from '../streaming/collect.ts';
import {
  type RelaySource,
  relayPendingSseStream,
  relaySseStream,
  type StreamOutcome,
  StreamStartError,
  TIMED_OUT,
  withTimeout,
} from '../streaming/index.ts';
import { StreamedTokens } from '../usage/streamed-tokens.ts';
import { parseJsonBody } from '../validation/index.ts';

export type ChatRoute = { kind: 'local'; model: LocalModelId } | { kind: 'upstream'; name: string; upstream: UpstreamConfig };

declare module 'hono' {
  interface ContextVariableMap {
    chatRequest: ChatCompletionRequest;
    chatRoute: ChatRoute;
  }
}

/**
 * @example
 * app.post('/v1/chat/completions', validateChatRequest(), resolveChatRoute(), chatCompletions(deps));
 */
export function validateChatRequest(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const request = await parseJsonBody(c, ChatCompletionRequestSchema);
    // The name as asked (bounded: it is the client's text); replaced by the resolved id once routed.
    c.get('logger').annotate({ model: request.model.slice(0, 64) });
    c.set('chatRequest', request);
    await next();
  };
}

export function resolveChatRoute(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const request = c.get('chatRequest');
    const upstream = upstreamsFrom(c.env)[request.model];
    const local = upstream ? null : resolveModelId(request.model);
    if (!upstream && !local) {
      throw new EdgeError('invalid_model', `Invalid model: ${request.model}`, { param: 'model', code: ERROR_CODES.invalidModel });
    }
    const key = c.get('apiKey');
    if (key && !keyAllowsModel(key, request.model, ...(local ? [local] : []))) {
      throw new EdgeError('forbidden', `This API key may not use model ${request.model}`, { param: 'model' });
    }
    if (local && requiresToolCall(request)) {
      throw new EdgeError(
        'invalid_request_error',
        `Model ${request.model} does not support tool calling; use tool_choice "auto" or "none"`,
        {
          param: 'tool_choice',
        },
      );
    }
    c.set('chatRoute', upstream ? { kind: 'upstream', name: request.model, upstream } : { kind: 'local', model: local as LocalModelId });
    await next();
  };
}

function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, '') + path;
}

/** Sidecars best-first for this client, each signing its requests with the shared secret. */
function sidecarTargets(c: Context<AppEnv>, deps: EdgeDependencies, model: LocalModelId): Target[] {
  const tunables = tunablesFrom(c.env);
  const sidecars = sidecarsFrom(c.env);
  const secret = c.env.SIROCCO_SIDECAR_SECRET;
  const refresh = deps.pool.refreshStale(sidecars, tunables, {
    fetch: deps.fetch,
    timeoutMs: Math.min(2_000, tunables.firstByteTimeoutMs),
    secret,
  });
  if (refresh) inBackground(c, refresh, () => undefined);

  const location = clientLocation(c.req.raw.cf as ClientGeo | undefined, c.req.header(HEADERS.region) ?? null);
  return deps.pool.rank(sidecars, model, location, tunables).map(({ sidecar }) => ({
    name: sidecar.region,
    url: joinUrl(sidecar.url, SIDECAR_PATHS.chatCompletions),
    breaker: deps.pool.breaker(sidecar.url, tunables),
    headers: async (body: string): Promise<Record<string, string>> =>
      secret ? { ...(await signRequest({ secret, method: 'POST', path: SIDECAR_PATHS.chatCompletions, body })) } : {},
  }));
}

function upstreamTarget(c: Context<AppEnv>, deps: EdgeDependencies, name: string, upstream: UpstreamConfig): Target {
  const apiKey = secretFrom(c.env, upstream.apiKeySecret);
  if (!apiKey)
    throw new EdgeError(
      'internal_error',
      `Edge configuration error in UPSTREAMS: secret ${upstream.apiKeySecret} for model ${name} is not set`,
    );
  return {
    name: `upstream:${name}`,
    url: joinUrl(upstream.url, '/v1/chat/completions'),
    breaker: deps.pool.breaker(upstream.url, tunablesFrom(c.env)),
    headers: async () => ({ authorization: `Bearer ${apiKey}` }),
  };
}

/** A non-stream answer where a stream was due (typically a 4xx), as the error frame it becomes. */
function startErrorFrom(status: number, text: string): StreamStartError {
  const parsed = MistralErrorBodySchema.safeParse(parseJson(text));
  if (parsed.success) return new StreamStartError(parsed.data.type, parsed.data.message, parsed.data.code);
  return new StreamStartError('upstream_error', `Upstream answered HTTP ${status} instead of a stream`);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function usageFromJson(text: string): Usage | null {
  try {
    const body = JSON.parse(text) as { usage?: Usage };
    return body.usage && typeof body.usage.total_tokens === 'number' ? body.usage : null;
  } catch {
    return null;
  }
}

/** A response's token counts on its access-log line. */
function annotateTokens(logger: Logger, usage: Usage): void {
  logger.annotate({ promptTokens: usage.prompt_tokens, completionTokens: usage.completion_tokens, tokens: usage.total_tokens });
}

/**
 * How a request that produced usage ended: the status its client got, whether the cache answered it, and whether
 * its usage is only what a cut stream relayed (edge/usage/streamed-tokens.ts: recorded in the ledger, not charged
 * to the per-minute window, which counts reported usage only).
 */
export type UsageOutcome = { status: number; cached: boolean; partial?: boolean };

export type UsageRecorder = (c: Context<AppEnv>, usage: Usage, outcome: UsageOutcome) => Promise<unknown>;

/** The status a stream's usage is recorded under: 200, or what a JSON answer would have had (a client that left: 499). */
function streamStatus(outcome: StreamOutcome): number {
  if (outcome.status === 'completed') return 200;
  return outcome.status === 'client_aborted' ? 499 : 502;
}

export function chatCompletions(deps: EdgeDependencies, recordUsage: UsageRecorder): MiddlewareHandler<AppEnv> {
  return async (c) => {
    const request = c.get('chatRequest');
    const route = c.get('chatRoute');
    const logger = c.get('logger');
    const tunables = tunablesFrom(c.env);

    const targets = route.kind === 'local' ? sidecarTargets(c, deps, route.model) : [upstreamTarget(c, deps, route.name, route.upstream)];
    const model = route.kind === 'local' ? route.model : (route.upstream.model ?? route.name);
    const stream = request.stream === true;
    // Upstream APIs keep plain non-stream requests: their chunks are not the sidecars' (tool-call
    // deltas, usage only on request), and they are watched by their operators, not by this edge; the
    // whole answer gets COMPLETION_TIMEOUT_MS (headers and body), a 504 when it is missed.
    const streamFromRegion = stream || route.kind === 'local';
    // The sidecar's stream always ends with a usage chunk, so no flag is needed to get one.
    const body = JSON.stringify({ ...request, model, ...(streamFromRegion ? { stream: true } : {}) });

    const forwardStarted = Date.now();
    const forwarding = forwardWithFailover({
      targets,
      body,
      stream: streamFromRegion,
      requestId: c.get('requestId'),
      // Aborts the sidecar fetch when the client leaves, stream or not, so the sidecar stops generating.
      clientSignal: c.req.raw.signal,
      // Per attempt: until the first SSE event when the region streams (for a JSON client never longer
      // than its whole answer may take), until the whole body when it does not.
      timeoutMs: !streamFromRegion
        ? tunables.completionTimeoutMs
        : stream
          ? tunables.firstByteTimeoutMs
          : Math.min(tunables.firstByteTimeoutMs, tunables.completionTimeoutMs),
      fetch: deps.fetch,
      onAttemptFailed: (target, problem) => logger.warn('upstream_attempt_failed', { region: target.name, problem }),
    });
    // A stream whose region has not answered within one keep-alive interval (a long prefill) is
    // committed now, so the client gets keep-alives; quicker answers keep their real HTTP status.
    const early = stream ? await withTimeout(forwarding, tunables.keepAliveMs) : await forwarding;
    const recordUsageAfterResponse = (usage: Usage, status: number) => {
      annotateTokens(logger, usage);
      inBackground(
        c,
        afterResponse().then(() => recordUsage(c, usage, { status, cached: false })),
        (error) => logger.error('usage_record_failed', { message: String(error) }),
      );
    };

    if (early !== TIMED_OUT && early.kind === 'body') {
      logger.annotate({ model, region: early.target.name, attempts: early.attempts, stream, upstreamMs: Date.now() - forwardStarted });
      const usage = early.status === 200 ? usageFromJson(early.text) : null;
      if (usage) recordUsageAfterResponse(usage, early.status);
      return new Response(early.text, {
        status: early.status,
        headers: { 'content-type': early.headers.get('content-type') ?? 'application/json' },
      });
    }

    if (early !== TIMED_OUT && !stream) {
      const outcome = await collectSseCompletion({
        first: early.first,
        events: early.events,
        abortUpstream: early.abort,
        idleTimeoutMs: tunables.streamIdleTimeoutMs,
        deadline: forwardStarted + tunables.completionTimeoutMs,
        clientSignal: c.req.raw.signal,
      });
      logger.annotate({ model, region: early.target.name, attempts: early.attempts, stream, upstreamMs: Date.now() - forwardStarted });
      switch (outcome.status) {
        case 'completed':
          recordUsageAfterResponse(outcome.completion.usage, 200);
          return Response.json(outcome.completion);
        case 'upstream_failed':
          early.target.breaker.recordFailure(Date.now());
          logger.warn('completion_upstream_failed', { region: early.target.name, problem: outcome.problem });
          throw outcome.idle
            ? new EdgeError('timeout', `The region stopped mid-generation: ${outcome.problem}`)
            : new EdgeError('upstream_error', `The region failed mid-generation: ${outcome.problem}`);
        case 'deadline_exceeded':
          // Not a region failure: it was never silent for the idle timeout (the rule for a hang); the answer is just long.
          logger.warn('completion_deadline_exceeded', { region: early.target.name });
          throw new EdgeError('timeout', `The answer was not complete within ${tunables.completionTimeoutMs} ms`);
        case 'client_aborted':
          logger.info('completion_client_aborted', { region: early.target.name });
          throw new EdgeError('invalid_request_error', 'Client closed the request', { status: 499 });
      }
    }

    // Registered now, settled when the stream ends: streamed tokens are charged at the end.
    let settle: (outcome: StreamOutcome) => void = () => undefined;
    const finished = new Promise<StreamOutcome>((resolve) => (settle = resolve));
    const streamed = new StreamedTokens();
    inBackground(
      c,
      finished.then((outcome) => {
        const status = streamStatus(outcome);
        if (outcome.usage) return recordUsage(c, outcome.usage, { status, cached: false });
        const partial = streamed.usage();
        return partial && recordUsage(c, partial, { status, cached: false, partial: true });
      }),
      (error) => logger.error('usage_record_failed', { message: String(error) }),
    );
    // The access-log line waits for the stream's end, so it has the stream's tokens.
    logger.holdAccessLogUntil(finished.then((outcome) => outcome.usage && annotateTokens(logger, outcome.usage)));
    let chosen: Target | null = null;
    const onFinish = (outcome: StreamOutcome) => {
      if (outcome.status === 'upstream_failed') {
        chosen?.breaker.recordFailure(Date.now());
        logger.warn('stream_upstream_failed', { region: chosen?.name, problem: outcome.problem });
      } else if (outcome.status === 'client_aborted') {
        logger.info('stream_client_aborted', { region: chosen?.name });
      }
      settle(outcome);
    };
    const toSource = (result: ForwardResult): RelaySource => {
      logger.annotate({ model, region: result.target.name, attempts: result.attempts, stream, upstreamMs: Date.now() - forwardStarted });
      if (result.kind === 'body') throw startErrorFrom(result.status, result.text);
      chosen = result.target;
      streamed.observe(result.first);
      return { first: result.first, events: streamed.wrap(result.events), abortUpstream: result.abort };
    };

    const relay =
      early === TIMED_OUT
        ? relayPendingSseStream({
            pending: forwarding.then(toSource, (error: unknown) => {
              throw EdgeError.isInstance(error) ? new StreamStartError(error.type, error.message, error.code) : error;
            }),
            keepAliveMs: tunables.keepAliveMs,
            idleTimeoutMs: tunables.streamIdleTimeoutMs,
            onFinish,
            clientSignal: c.req.raw.signal,
          })
        : relaySseStream({
            ...toSource(early),
            keepAliveMs: tunables.keepAliveMs,
            idleTimeoutMs: tunables.streamIdleTimeoutMs,
            onFinish,
            clientSignal: c.req.raw.signal,
          });
    return new Response(relay, { status: 200, headers: SSE_HEADERS });
  };
}
