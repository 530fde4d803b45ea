/**
 * Test helper: a real node:http server that answers `POST /v1/chat/completions` with scripted Mistral-format replies
 * (JSON, error envelopes, or SSE written in arbitrary network-sized pieces), and records what clients sent. A body
 * the server's own strict request schema refuses is answered 422 as the edge would, so the provider's wire types
 * (sirocco-api.ts) cannot drift from the API's.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type ChatCompletionChunk, ChatCompletionRequestSchema, type ChatCompletionResponse } from '../../shared/api.ts';
import { validationErrorBody } from '../../shared/errors.ts';
import { encodeSseData, SSE_DONE, SSE_HEADERS } from '../../shared/sse.ts';

export type ScriptedReply =
  | { kind: 'json'; status?: number; body: unknown; headers?: Record<string, string> }
  | { kind: 'raw'; status: number; body: string; headers?: Record<string, string> }
  /** Each write goes out as its own network write; `holdOpen` keeps the response open after the last one. */
  | { kind: 'sse'; writes: string[]; delayMs?: number; holdOpen?: boolean };

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
  receivedAt: number;
  /** Resolves when the client closed the connection before the reply finished. */
  clientDisconnected: Promise<void>;
}

export interface ChatTestServer {
  /** Base URL including `/v1`. */
  baseURL: string;
  requests: RecordedRequest[];
  /** Replies are used in order, the last one repeats. */
  script(...replies: ScriptedReply[]): void;
  close(): Promise<void>;
}

export async function startChatTestServer(): Promise<ChatTestServer> {
  let replies: ScriptedReply[] = [];
  const requests: RecordedRequest[] = [];

  const server = createServer(async (req, res) => {
    let text = '';
    for await (const piece of req) text += String(piece);
    let onDisconnect!: () => void;
    const clientDisconnected = new Promise<void>((resolve) => (onDisconnect = resolve));
    res.on('close', () => {
      if (!res.writableFinished) onDisconnect();
    });
    requests.push({
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      body: text ? (JSON.parse(text) as Record<string, unknown>) : {},
      receivedAt: Date.now(),
      clientDisconnected,
    });

    const validation = ChatCompletionRequestSchema.safeParse(requests.at(-1)?.body);
    if (!validation.success) {
      res.writeHead(422, { 'content-type': 'application/json' }).end(JSON.stringify(validationErrorBody(validation.error)));
      return;
    }
    const reply = replies.length > 1 ? replies.shift()! : replies[0];
    if (!reply) {
      res.writeHead(500).end('no scripted reply');
      return;
    }
    if (reply.kind === 'json') {
      res.writeHead(reply.status ?? 200, { 'content-type': 'application/json', ...reply.headers }).end(JSON.stringify(reply.body));
      return;
    }
    if (reply.kind === 'raw') {
      res.writeHead(reply.status, reply.headers).end(reply.body);
      return;
    }
    res.writeHead(200, SSE_HEADERS);
    res.flushHeaders();
    for (const write of reply.writes) {
      if (res.destroyed) return;
      res.write(write);
      if (reply.delayMs) await new Promise((resolve) => setTimeout(resolve, reply.delayMs));
    }
    if (!reply.holdOpen) res.end();
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    requests,
    script: (...next) => {
      replies = next;
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const created = 1_700_000_000;

/** A non-streaming Mistral chat completion. */
export function chatCompletion(
  content: string,
  options: { finishReason?: 'stop' | 'length'; promptTokens?: number; completionTokens?: number } = {},
): ChatCompletionResponse {
  const { finishReason = 'stop', promptTokens = 7, completionTokens = 3 } = options;
  return {
    id: 'cmpl-test-1',
    object: 'chat.completion',
    created,
    model: 'mistral-tiny',
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: finishReason }],
    usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
  };
}

/** The SSE events of a Mistral stream for `deltas`: role chunk, content chunks, final chunk with usage, [DONE]. */
export function chatStreamEvents(deltas: string[], options: { finishReason?: 'stop' | 'length'; promptTokens?: number } = {}): string[] {
  const { finishReason = 'stop', promptTokens = 7 } = options;
  const chunk = (
    delta: ChatCompletionChunk['choices'][number]['delta'],
    finish: 'stop' | 'length' | null,
    extra: Partial<ChatCompletionChunk> = {},
  ) =>
    encodeSseData({
      id: 'cmpl-test-2',
      object: 'chat.completion.chunk',
      created,
      model: 'mistral-tiny',
      choices: [{ index: 0, delta, finish_reason: finish }],
      ...extra,
    } satisfies ChatCompletionChunk);
  return [
    chunk({ role: 'assistant', content: '' }, null),
    ...deltas.map((content) => chunk({ content }, null)),
    chunk({ content: '' }, finishReason, {
      usage: { prompt_tokens: promptTokens, completion_tokens: deltas.length, total_tokens: promptTokens + deltas.length },
    }),
    encodeSseData(SSE_DONE),
  ];
}
