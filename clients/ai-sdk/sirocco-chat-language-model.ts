/** A Sirocco chat model as an AI SDK `LanguageModelV3`: Mistral's chat API over JSON or SSE. */
import {
  InvalidResponseDataError,
  type LanguageModelV3,
  type LanguageModelV3CallOptions,
  type LanguageModelV3Content,
  type LanguageModelV3FinishReason,
  type LanguageModelV3GenerateResult,
  type LanguageModelV3StreamPart,
  type LanguageModelV3StreamResult,
  type SharedV3Warning,
} from '@ai-sdk/provider';
import {
  combineHeaders,
  createEventSourceResponseHandler,
  createJsonResponseHandler,
  type FetchFunction,
  injectJsonInstructionIntoMessages,
  type ParseResult,
  parseProviderOptions,
  postJsonToApi,
} from '@ai-sdk/provider-utils';
import * as z from 'zod/v4';
import { convertToSiroccoMessages } from './convert-to-sirocco-messages.ts';
import { convertSiroccoUsage, mapSiroccoFinishReason, responseMetadata } from './map-sirocco-response.ts';
import {
  type SiroccoChatChunk,
  type SiroccoChatRequest,
  type SiroccoUsage,
  siroccoChatChunkSchema,
  siroccoChatResponseSchema,
  siroccoErrorBodySchema,
} from './sirocco-api.ts';
import { siroccoFailedResponseHandler } from './sirocco-error.ts';

/** Canonical ids and Mistral's aliases; any other string is passed through (e.g. an operator's upstream route). */
export type SiroccoChatModelId =
  | 'mistral-tiny'
  | 'mistral-small'
  | 'open-mistral-7b'
  | 'open-mixtral-8x7b'
  | 'mistral-tiny-2312'
  | 'mistral-small-2312'
  | (string & {});

/** `providerOptions.sirocco` for a call. */
export const siroccoLanguageModelOptions = z.strictObject({
  /** Prepends Mistral's guardrail system prompt. */
  safePrompt: z.boolean().optional(),
});
export type SiroccoLanguageModelOptions = z.infer<typeof siroccoLanguageModelOptions>;

export interface SiroccoChatConfig {
  provider: string;
  baseURL: string;
  headers: () => Record<string, string | undefined>;
  fetch?: FetchFunction;
}

export class SiroccoChatLanguageModel implements LanguageModelV3 {
  readonly specificationVersion = 'v3';
  readonly modelId: SiroccoChatModelId;
  // Text-only models: no URL is fetched by the server on the caller's behalf.
  readonly supportedUrls: Record<string, RegExp[]> = {};
  private readonly config: SiroccoChatConfig;

  constructor(modelId: SiroccoChatModelId, config: SiroccoChatConfig) {
    this.modelId = modelId;
    this.config = config;
  }

  get provider(): string {
    return this.config.provider;
  }

  private async getArgs(options: LanguageModelV3CallOptions) {
    const warnings: SharedV3Warning[] = [];
    const siroccoOptions =
      (await parseProviderOptions({
        provider: 'sirocco',
        providerOptions: options.providerOptions,
        schema: siroccoLanguageModelOptions,
      })) ?? {};

    // Settings the Sirocco API does not take are dropped with a warning, never sent (the edge rejects unknown fields).
    if (options.topK != null) warnings.push({ type: 'unsupported', feature: 'topK' });
    if (options.presencePenalty != null) warnings.push({ type: 'unsupported', feature: 'presencePenalty' });
    if (options.frequencyPenalty != null) warnings.push({ type: 'unsupported', feature: 'frequencyPenalty' });
    if (options.tools != null && options.tools.length > 0) warnings.push({ type: 'unsupported', feature: 'tools' });
    // 'auto' is what the SDK sends by default with tools; only a demanded tool call is worth a second warning.
    if (options.toolChoice?.type === 'required' || options.toolChoice?.type === 'tool') {
      warnings.push({ type: 'unsupported', feature: 'toolChoice', details: `"${options.toolChoice.type}": the models do not call tools` });
    }

    let prompt = options.prompt;
    const responseFormat = options.responseFormat;
    // Without a schema the model must be told in words to answer in JSON (as Mistral's own provider does).
    if (responseFormat?.type === 'json' && responseFormat.schema == null) {
      prompt = injectJsonInstructionIntoMessages({ messages: prompt, schema: responseFormat.schema });
    }

    const body: SiroccoChatRequest = {
      model: this.modelId,
      messages: convertToSiroccoMessages(prompt),
      max_tokens: options.maxOutputTokens,
      temperature: options.temperature,
      top_p: options.topP,
      random_seed: options.seed,
      stop: options.stopSequences != null && options.stopSequences.length > 0 ? options.stopSequences : undefined,
      safe_prompt: siroccoOptions.safePrompt,
      response_format:
        responseFormat?.type === 'json'
          ? responseFormat.schema != null
            ? {
                type: 'json_schema',
                json_schema: {
                  name: responseFormat.name ?? 'response',
                  description: responseFormat.description,
                  schema: { ...responseFormat.schema },
                },
              }
            : { type: 'json_object' }
          : undefined,
    };
    return { body, warnings };
  }

  async doGenerate(options: LanguageModelV3CallOptions): Promise<LanguageModelV3GenerateResult> {
    const { body, warnings } = await this.getArgs(options);
    const {
      responseHeaders,
      value: response,
      rawValue,
    } = await postJsonToApi({
      url: `${this.config.baseURL}/chat/completions`,
      headers: combineHeaders(this.config.headers(), options.headers),
      body,
      failedResponseHandler: siroccoFailedResponseHandler,
      successfulResponseHandler: createJsonResponseHandler(siroccoChatResponseSchema),
      abortSignal: options.abortSignal,
      fetch: this.config.fetch,
    });

    const choice = response.choices[0];
    if (choice == null) throw new InvalidResponseDataError({ data: response, message: 'The response has no choices.' });
    const content: LanguageModelV3Content[] = [];
    if (choice.message.content) content.push({ type: 'text', text: choice.message.content });

    return {
      content,
      finishReason: mapSiroccoFinishReason(choice.finish_reason),
      usage: convertSiroccoUsage(response.usage),
      warnings,
      request: { body },
      response: { ...responseMetadata(response), headers: responseHeaders, body: rawValue },
    };
  }

  async doStream(options: LanguageModelV3CallOptions): Promise<LanguageModelV3StreamResult> {
    const { body: args, warnings } = await this.getArgs(options);
    const body = { ...args, stream: true };
    const { responseHeaders, value: events } = await postJsonToApi({
      url: `${this.config.baseURL}/chat/completions`,
      headers: combineHeaders(this.config.headers(), options.headers),
      body,
      failedResponseHandler: siroccoFailedResponseHandler,
      successfulResponseHandler: createEventSourceResponseHandler(siroccoChatChunkSchema),
      abortSignal: options.abortSignal,
      fetch: this.config.fetch,
    });

    let finishReason: LanguageModelV3FinishReason = { unified: 'other', raw: undefined };
    let usage: SiroccoUsage | undefined;
    let isFirstChunk = true;
    let textOpen = false;

    const stream = events.pipeThrough(
      new TransformStream<ParseResult<SiroccoChatChunk>, LanguageModelV3StreamPart>({
        start(controller) {
          controller.enqueue({ type: 'stream-start', warnings });
        },
        transform(event, controller) {
          if (options.includeRawChunks) controller.enqueue({ type: 'raw', rawValue: event.rawValue });
          if (!event.success) {
            // A mid-stream `{"object":"error",…}` frame from the edge fails the chunk schema: surface the server's
            // own message rather than the schema mismatch.
            controller.enqueue({ type: 'error', error: streamedError(event.rawValue) ?? event.error });
            finishReason = { unified: 'error', raw: undefined };
            return;
          }
          const chunk = event.value;
          if (isFirstChunk) {
            isFirstChunk = false;
            controller.enqueue({ type: 'response-metadata', ...responseMetadata(chunk) });
          }
          if (chunk.usage != null) usage = chunk.usage;
          const choice = chunk.choices[0];
          if (choice == null) return; // usage-only chunk
          const delta = choice.delta.content;
          if (delta) {
            if (!textOpen) {
              controller.enqueue({ type: 'text-start', id: '0' });
              textOpen = true;
            }
            controller.enqueue({ type: 'text-delta', id: '0', delta });
          }
          if (choice.finish_reason != null) finishReason = mapSiroccoFinishReason(choice.finish_reason);
        },
        flush(controller) {
          if (textOpen) controller.enqueue({ type: 'text-end', id: '0' });
          controller.enqueue({ type: 'finish', finishReason, usage: convertSiroccoUsage(usage) });
        },
      }),
    );
    return { stream, request: { body }, response: { headers: responseHeaders } };
  }
}

/** The message of an error frame sent inside an SSE stream, if the raw event is one. */
function streamedError(rawValue: unknown): Error | undefined {
  const parsed = siroccoErrorBodySchema.safeParse(rawValue);
  return parsed.success ? new Error(parsed.data.message) : undefined;
}
