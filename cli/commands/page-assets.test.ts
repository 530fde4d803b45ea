/**
 * The chat page parses SSE with the project's one parser: edge/public/sse.js is shared/sse.ts bundled for the
 * browser. It is committed (so `wrangler deploy` ships it) and must match a fresh bundle of the current source.
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { bundlePageSseModule, PAGE_SSE_MODULE } from './dev.ts';

describe('edge/public/sse.js', () => {
  it('is the current bundle of shared/sse.ts (run `npm start` to refresh it)', async () => {
    const committed = await readFile(PAGE_SSE_MODULE, 'utf8');
    expect(committed).toBe(await bundlePageSseModule());
  });

  it('exports the parser the page imports and parses split events like the server-side one', async () => {
    const module = (await import(PAGE_SSE_MODULE)) as typeof import('../../shared/sse.ts');
    const bytes = new TextEncoder().encode(': keep-alive\n\ndata: {"a":1}\n\ndata: [DONE]\n\n');
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let offset = 0; offset < bytes.length; offset += 5) controller.enqueue(bytes.slice(offset, offset + 5));
        controller.close();
      },
    });
    const events: string[] = [];
    for await (const event of module.readSseEvents(body)) events.push(event.data);
    expect(events).toEqual(['{"a":1}', module.SSE_DONE]);
  });
});
