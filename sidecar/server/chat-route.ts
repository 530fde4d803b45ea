/**
 * `POST /v1/chat/completions`: validate, render the prompt, submit to the model's scheduler, and
 * answer with one JSON object or an SSE stream. The HTTP status is committed only once the first
 * event exists, so queue timeouts and engine failures before the first token get a real 4xx/5xx.
 * The request's AbortSignal (client disconnect) cancels the generation.
 */
import { randomUUID } from 'node:crypto';
import type { Context } from 'hono';
import { SSE_HEADERS } from '../../shared/sse.ts';
import { SidecarError } from '../errors.ts';
import type { GenerateEvent } from '../serving/decoder.ts';
import { parseChatRequest, toGenerationRequest } from './chat-request.ts';
import { type CompletionIdentity, collectCompletion, completionStream, type GenerationOutcome } from './chat-response.ts';
import type { SidecarEnv } from './context.ts';
import type { Logger } from './logger.ts';
import { findServedModel, type ServedModel } from './served-models.ts';

export interface ChatRouteOptions {
  /** The models, once loaded; throws 503 while loading. */
  models(): ServedModel[];
  logger: Logger;
}

/** The client disconnected before the answer was ready; nobody will read this response. */
function clientGone(logOutcome: (outcome: GenerationOutcome) => void): never {
  logOutcome({ cancelled: true });
  throw new SidecarError('invalid_request_error', 'the client closed the request', { status: 499 });
}

export function chatCompletionsHandler({ models, logger }: ChatRouteOptions) {
  return async function chatCompletions(c: Context<SidecarEnv>): Promise<Response> {
    const request = parseChatRequest(await c.req.arrayBuffer());
    const model = findServedModel(models(), request.model);
    const identity: CompletionIdentity = {
      id: `cmpl-${randomUUID().replaceAll('-', '')}`,
      created: Math.floor(Date.now() / 1000),
      model: model.id,
    };
    const log = logger.child({ requestId: c.get('requestId'), model: model.id, completionId: identity.id });
    const started = performance.now();
    const logOutcome = (outcome: GenerationOutcome) => {
      const seconds = Math.round(performance.now() - started) / 1000;
      if ('done' in outcome) {
        const { finishReason, promptTokens, completionTokens } = outcome.done;
        log.info('generation finished', { stream: request.stream === true, finishReason, promptTokens, completionTokens, seconds });
      } else if ('error' in outcome) log.warn('generation failed', { error: outcome.error, seconds });
      else log.info('generation cancelled', { seconds });
    };

    const events = model.scheduler.submit(
      toGenerationRequest(request, model.tokenizer, {
        signal: c.req.raw.signal,
        defaultMaxTokens: model.defaultMaxTokens,
        contextLength: model.runtime.info.contextLength,
        renderPrompt: model.renderPrompt,
      }),
    );
    if (!request.stream) {
      let completion: Awaited<ReturnType<typeof collectCompletion>>;
      try {
        completion = await collectCompletion(events, identity);
      } catch (error) {
        logOutcome({ error });
        throw error;
      }
      if (!completion) return clientGone(logOutcome);
      logOutcome({ done: completion.done });
      return c.json(completion.response);
    }

    let first: IteratorResult<GenerateEvent>;
    try {
      first = await events.next();
    } catch (error) {
      logOutcome({ error });
      throw error;
    }
    if (first.done) return clientGone(logOutcome);
    return c.body(completionStream(first.value, events, identity, logOutcome, c.get('requestId')), 200, SSE_HEADERS);
  };
}
