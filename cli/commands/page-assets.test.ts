/**
 * The pages' generated assets are committed (so `wrangler deploy` ships them) and must match a fresh build of their
 * sources: the chat page parses SSE with the project's one parser (edge/public/sse.js is shared/sse.ts bundled for
 * the browser), the operator console draws with the installed uPlot, and the chat page renders Markdown with the
 * installed markdown-it (edge/public/vendor/).
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  bundlePageMarkdownModule,
  bundlePageSseModule,
  GENERATED_PAGE_ASSETS,
  PAGE_CHART_MODULE,
  PAGE_CHART_STYLES,
  PAGE_MARKDOWN_MODULE,
  PAGE_SSE_MODULE,
} from './dev.ts';

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

describe('edge/public/vendor (uPlot)', () => {
  const vendored = GENERATED_PAGE_ASSETS.filter((asset) => asset.path === PAGE_CHART_MODULE || asset.path === PAGE_CHART_STYLES).map(
    (asset) => ({
      ...asset,
      name: basename(asset.path),
    }),
  );
  it.each(vendored)('$name is the current copy of node_modules/uplot (run `npm start` to refresh it)', async ({ path, generate }) => {
    expect(await readFile(path, 'utf8')).toBe(await generate());
  });

  it('is an ES module whose default export is the uPlot constructor', async () => {
    const source = await readFile(PAGE_CHART_MODULE, 'utf8');
    expect(source).toMatch(/^\/\/ uPlot \d+\.\d+\.\d+ \(MIT licence/);
    expect(source).toMatch(/export\s*\{[^}]*as default\s*\}/);
  });
});

describe('edge/public/vendor/markdown-it.js', () => {
  it('is the current bundle of node_modules/markdown-it (run `npm start` to refresh it)', async () => {
    expect(await readFile(PAGE_MARKDOWN_MODULE, 'utf8')).toBe(await bundlePageMarkdownModule());
  });

  it('renders Markdown and, with html off as the page configures it, leaves raw HTML and script links inert', async () => {
    type MarkdownIt = (options: { html: boolean }) => { render(source: string): string };
    const markdownit = ((await import(PAGE_MARKDOWN_MODULE)) as { default: MarkdownIt }).default;
    const md = markdownit({ html: false });
    expect(md.render('**bold** and `code`')).toBe('<p><strong>bold</strong> and <code>code</code></p>\n');
    expect(md.render('<script>alert(1)</script>')).toBe('<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n');
    expect(md.render('<img src=x onerror=alert(1)>')).toBe('<p>&lt;img src=x onerror=alert(1)&gt;</p>\n');
    expect(md.render('[click](javascript:alert(1))')).not.toContain('href');
    expect(md.render('```html\n<b>x</b>\n```')).toBe('<pre><code class="language-html">&lt;b&gt;x&lt;/b&gt;\n</code></pre>\n');
  });
});
