/**
 * The chat page served by the worker, in headless Chromium against the real stack (wrangler dev → real sidecar on
 * the demo models): the key taken from the `#key=` link `npm start` prints, the model picker, streaming with its
 * figures, Stop / Esc, Regenerate, Copy, the settings reaching the API, readable API errors, and a phone-sized layout.
 *
 * The demo models write random text, so the Markdown and script-injection cases answer from a stream this test
 * writes with the project's SSE encoder (page.route), through the page's real parser and renderer.
 * Screenshots go to test-artifacts/chat-page/ (git-ignored).
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Browser, BrowserContext, Page, Request } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chatPageUrl, type Stack } from '../../cli/commands/dev.ts';
import type { ChatCompletionChunk, ChatCompletionRequest } from '../../shared/api.ts';
import { errorBody } from '../../shared/errors.ts';
import { LoadReportSchema } from '../../shared/protocol.ts';
import { encodeSseData, SSE_DONE, SSE_HEADERS } from '../../shared/sse.ts';
import { launchBrowser } from '../support/browser.ts';
import { signedSidecarGet, startTestStack } from '../support/stack-fixture.ts';

const SCREENSHOTS = resolve(import.meta.dirname, '../../test-artifacts/chat-page');
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
/** How long a wait on the stack may take on a busy two-core machine (expect.poll's default is one second). */
const STACK_WAIT = { timeout: 30_000 };

let stack: Stack;
let browser: Browser;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  await mkdir(SCREENSHOTS, { recursive: true });
  [stack, browser] = await Promise.all([startTestStack({ regions: ['eu-west'] }), launchBrowser()]);
}, 300_000);
afterAll(async () => {
  for (const context of contexts) await context.close();
  await browser?.close();
  await stack?.stop();
});

interface OpenedChat {
  page: Page;
  /** The page's own response headers. */
  headers: Record<string, string>;
  /** Every request the page made, so a test can check where the key went. */
  requests: Request[];
  errors: string[];
}

/** Opens the chat page from the link `npm start` prints and waits for the model picker to fill. */
async function openChat(options: { viewport?: { width: number; height: number }; key?: string } = {}): Promise<OpenedChat> {
  const context = await browser.newContext({ viewport: options.viewport ?? DESKTOP });
  contexts.push(context);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: stack.edgeUrl });
  const page = await context.newPage();
  const requests: Request[] = [];
  const errors: string[] = [];
  page.on('request', (request) => requests.push(request));
  page.on('pageerror', (error) => errors.push(error.message));
  const response = await page.goto(chatPageUrl(stack.edgeUrl, options.key ?? stack.apiKey));
  if (!options.key) await expect.poll(() => page.locator('#model option').allTextContents(), STACK_WAIT).toContain('mistral-tiny');
  return { page, headers: response?.headers() ?? {}, requests, errors };
}

// Playwright's innerText() is the rendered text a reader sees, not the DOM property the rule is about.
// biome-ignore lint/performance/useDomNodeTextContent: Playwright locator method
const lastAnswerText = (page: Page) => page.locator('.message.assistant .content').last().innerText();
const lastAnswer = (page: Page) => page.locator('.message.assistant').last();

/** Types a prompt and sends it with Enter, as a person does. */
async function ask(page: Page, prompt: string): Promise<void> {
  await page.fill('#prompt', prompt);
  await page.press('#prompt', 'Enter');
}

/** The request bodies the page sends to /v1/chat/completions, passed on to the real stack. */
async function recordCompletionRequests(page: Page): Promise<ChatCompletionRequest[]> {
  const bodies: ChatCompletionRequest[] = [];
  await page.route('**/v1/chat/completions', async (route) => {
    bodies.push(route.request().postDataJSON() as ChatCompletionRequest);
    await route.continue();
  });
  return bodies;
}

/** Answers the page's next completions with `pieces` as a Mistral stream (the model's text, chosen by the test). */
async function answerWith(page: Page, pieces: string[]): Promise<void> {
  const chunk = (delta: ChatCompletionChunk['choices'][number]['delta'], finish: 'stop' | null, usage?: ChatCompletionChunk['usage']) =>
    encodeSseData({
      id: 'cmpl-test',
      object: 'chat.completion.chunk',
      created: 1_700_000_000,
      model: 'mistral-tiny',
      choices: [{ index: 0, delta, finish_reason: finish }],
      ...(usage ? { usage } : {}),
    } satisfies ChatCompletionChunk);
  const body = [
    chunk({ role: 'assistant', content: '' }, null),
    ...pieces.map((content) => chunk({ content }, null)),
    chunk({ content: '' }, 'stop', { prompt_tokens: 7, completion_tokens: pieces.length, total_tokens: 7 + pieces.length }),
    encodeSseData(SSE_DONE),
  ].join('');
  await page.route('**/v1/chat/completions', (route) => route.fulfill({ status: 200, headers: { ...SSE_HEADERS }, body }));
}

async function waitUntilDone(page: Page): Promise<void> {
  await expect.poll(() => page.textContent('#status'), STACK_WAIT).toMatch(/^Done \((stop|length), \d+ tokens\)\.$/);
}

describe('chat page', () => {
  it('takes the key from the #key= link into sessionStorage, clears the address bar, and lists the models', async () => {
    const { page, headers, requests, errors } = await openChat();
    // Only the page's own scripts run, it talks to this origin only, and no other site may frame it.
    expect(headers['content-security-policy']).toContain("script-src 'self';");
    expect(headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(await page.inputValue('#api-key')).toBe(stack.apiKey);
    expect(new URL(page.url()).hash).toBe('');
    expect(await page.evaluate(() => sessionStorage.getItem('sirocco.apiKey'))).toBe(stack.apiKey);
    expect(await page.evaluate(() => localStorage.getItem('sirocco.apiKey'))).toBeNull();
    expect(await page.locator('#model option').allTextContents()).toEqual(['mistral-tiny', 'mistral-small']);

    // The key travels in the Authorization header only, never in a URL.
    const modelList = requests.find((request) => new URL(request.url()).pathname === '/v1/models');
    expect(await modelList?.headerValue('authorization')).toBe(`Bearer ${stack.apiKey}`);
    expect(requests.filter((request) => request.url().includes(stack.apiKey))).toEqual([]);

    // A reload keeps the key for this tab.
    await page.reload();
    expect(await page.inputValue('#api-key')).toBe(stack.apiKey);
    expect(errors).toEqual([]);
  });

  it('streams tokens into the page as they arrive and shows the answer figures', async () => {
    const { page, requests, errors } = await openChat();
    // Long enough to span several frames even when the page's frames slow down under load (it renders once per
    // frame, and the demo model's 24 tokens can arrive within one).
    await page.fill('#max-tokens', '160');
    // Record every rendering of the reply: a streamed answer shows up as many growing texts, not one.
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as unknown as { renderedLengths: number[] }).renderedLengths = seen;
      new MutationObserver(() => {
        const reply = document.querySelector('.message.assistant .content');
        if (reply) seen.push(reply.textContent?.length ?? 0);
      }).observe(document.getElementById('transcript')!, { childList: true, subtree: true, characterData: true });
    });
    await ask(page, 'Hello from the browser');

    await waitUntilDone(page);
    expect(await page.textContent('.message.user')).toBe('Hello from the browser');
    expect((await lastAnswerText(page)).length).toBeGreaterThan(0);
    const lengths = await page.evaluate(() => (window as unknown as { renderedLengths: number[] }).renderedLengths);
    expect(new Set(lengths.filter((length) => length > 0)).size).toBeGreaterThan(1);
    expect(await lastAnswer(page).locator('.stats').textContent()).toMatch(
      /^\d+ tokens · [\d.]+ tok\/s · first token \d+ ms · prompt \d+ \+ completion \d+ · (stop|length)$/,
    );
    expect(requests.filter((request) => request.url().includes(stack.apiKey))).toEqual([]);
    expect(errors).toEqual([]);
    await page.screenshot({ path: join(SCREENSHOTS, 'desktop-streamed.png') });
  });

  it('sends the system prompt, model and sampling settings the page shows', async () => {
    const { page } = await openChat();
    const bodies = await recordCompletionRequests(page);
    await page.selectOption('#model', 'mistral-small');
    await page.fill('#system-prompt', 'You answer in one short paragraph.');
    await page.selectOption('#preset', 'precise');
    await page.fill('#max-tokens', '12');
    await ask(page, 'What is a sirocco?');
    await waitUntilDone(page);

    expect(bodies).toHaveLength(1);
    expect(bodies[0]).toEqual({
      model: 'mistral-small',
      messages: [
        { role: 'system', content: 'You answer in one short paragraph.' },
        { role: 'user', content: 'What is a sirocco?' },
      ],
      stream: true,
      max_tokens: 12,
      temperature: 0.2,
      top_p: 0.9,
    });
    expect(await page.textContent('#temperature-value')).toBe('0.20');

    // The settings (never the key) outlive the page.
    await page.reload();
    expect(await page.inputValue('#system-prompt')).toBe('You answer in one short paragraph.');
    // The model list arrives from /v1/models after the page loads; the saved choice is selected then.
    await expect.poll(() => page.inputValue('#model'), STACK_WAIT).toBe('mistral-small');
    expect(await page.inputValue('#preset')).toBe('precise');
    expect(await page.evaluate(() => localStorage.getItem('sirocco.chatSettings'))).not.toContain(stack.apiKey);
  });

  it('Stop ends a long stream: the text stops growing, the status line stays in view, the sidecar stops', async () => {
    const { page } = await openChat();
    await page.fill('#max-tokens', '4000');
    await ask(page, 'Write a very long story');
    await page.waitForFunction(() => (document.querySelector('.message.assistant .content')?.textContent ?? '').length > 400);

    await page.click('#stop');
    await expect.poll(() => page.textContent('#status'), STACK_WAIT).toBe('Stopped.');
    const stoppedText = await lastAnswerText(page);
    await page.waitForTimeout(500);
    expect(await lastAnswerText(page)).toBe(stoppedText);
    expect(await page.isDisabled('#stop')).toBe(true);
    expect(await page.isEnabled('#send')).toBe(true);
    expect(await lastAnswer(page).locator('.stats').textContent()).toMatch(/^≈\d+ tokens · .* · stopped$/);
    // However long the answer, the status line is on screen.
    const status = await page.locator('#status').boundingBox();
    expect(status).not.toBeNull();
    expect(status!.y + status!.height).toBeLessThanOrEqual(DESKTOP.height);
    await page.screenshot({ path: join(SCREENSHOTS, 'desktop-stopped.png') });

    // The abort travelled through the edge: the sidecar is no longer generating for this page.
    await expect
      .poll(
        async () => LoadReportSchema.parse(await (await signedSidecarGet(stack, 'eu-west', '/ready')).json()).activeSequences,
        STACK_WAIT,
      )
      .toBe(0);
  });

  it('Esc stops the answer; Shift+Enter makes a new line instead of sending', async () => {
    const { page } = await openChat();
    await page.fill('#max-tokens', '4000');
    await page.fill('#prompt', 'first line');
    await page.press('#prompt', 'Shift+Enter');
    await page.keyboard.type('second line');
    expect(await page.inputValue('#prompt')).toBe('first line\nsecond line');
    expect(await page.locator('.message').count()).toBe(0);

    await page.press('#prompt', 'Enter');
    await page.waitForFunction(() => (document.querySelector('.message.assistant .content')?.textContent ?? '').length > 0);
    await page.keyboard.press('Escape');
    await expect.poll(() => page.textContent('#status'), STACK_WAIT).toBe('Stopped.');
    expect(await page.textContent('.message.user')).toBe('first line\nsecond line');
  });

  it('Regenerate asks again with the same conversation and replaces the answer', async () => {
    const { page } = await openChat();
    const bodies = await recordCompletionRequests(page);
    await page.fill('#max-tokens', '8');
    await ask(page, 'First question');
    await waitUntilDone(page);
    // The answer as the model wrote it (the rendered text differs: it is Markdown): its Copy button gives it.
    await lastAnswer(page).locator('.copy').click();
    const firstAnswer = await page.evaluate(() => navigator.clipboard.readText());
    expect(firstAnswer.length).toBeGreaterThan(0);
    await ask(page, 'Second question');
    await waitUntilDone(page);
    // Only the last answer can be regenerated.
    expect(await page.locator('.message.assistant .regenerate:visible').count()).toBe(1);

    await lastAnswer(page).locator('.regenerate').click();
    await waitUntilDone(page);
    expect(await page.locator('.message.assistant').count()).toBe(2);
    expect(bodies).toHaveLength(3);
    expect(bodies[2]!.messages).toEqual(bodies[1]!.messages);
    expect(bodies[1]!.messages).toEqual([
      { role: 'user', content: 'First question' },
      { role: 'assistant', content: firstAnswer },
      { role: 'user', content: 'Second question' },
    ]);
  });

  it('renders Markdown and code blocks; Copy copies the answer as written', async () => {
    const { page } = await openChat();
    const source = '## Plan\n\nUse **bold** and `inline code`:\n\n```ts\nconst answer = 42;\n```\n\n- one\n- two\n';
    await answerWith(page, ['## Plan\n\nUse **bo', 'ld** and `inline code`:\n\n```ts\nconst ', 'answer = 42;\n```\n\n- one\n- two\n']);
    await ask(page, 'Show me some Markdown');
    await waitUntilDone(page);

    const content = lastAnswer(page).locator('.content');
    expect(await content.locator('h2').textContent()).toBe('Plan');
    expect(await content.locator('strong').textContent()).toBe('bold');
    expect(await content.locator('p code').textContent()).toBe('inline code');
    expect(await content.locator('pre code.language-ts').textContent()).toBe('const answer = 42;\n');
    expect(await content.locator('li').allTextContents()).toEqual(['one', 'two']);
    expect(await lastAnswer(page).locator('.stats').textContent()).toMatch(/^3 tokens · .* · prompt 7 \+ completion 3 · stop$/);

    await lastAnswer(page).locator('.copy').click();
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(source);
    await content.locator('.copy-code').click();
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe('const answer = 42;\n');
    await page.screenshot({ path: join(SCREENSHOTS, 'desktop-markdown.png') });
  });

  it('shows HTML in model output as text: no <script>, onerror handler or javascript: link ever runs', async () => {
    const { page, errors } = await openChat();
    // The page's Content-Security-Policy would block an inline handler that slipped through, and report it here:
    // so the renderer itself is under test, not only the policy.
    const violations: string[] = [];
    page.on('console', (message) => {
      if (message.text().includes('Content Security Policy')) violations.push(message.text());
    });
    const attacks = [
      '<script>window.injected = "script"</script>',
      '<img src="x" onerror="window.injected = \'img\'">',
      "[click me](javascript:window.injected='link')",
      '![pic](x" onerror="window.injected=\'markdown image\')',
      '<svg onload="window.injected = \'svg\'"></svg>',
    ];
    await answerWith(
      page,
      attacks.map((attack) => `${attack}\n\n`),
    );
    await ask(page, 'Say something dangerous');
    await waitUntilDone(page);

    const content = lastAnswer(page).locator('.content');
    expect(await content.locator('script, svg, [onerror], [onload], a[href^="javascript:" i]').count()).toBe(0);
    // biome-ignore lint/performance/useDomNodeTextContent: Playwright locator method
    const shown = await content.innerText();
    expect(shown).toContain('<script>window.injected = "script"</script>');
    expect(shown).toContain('<img src="x" onerror="window.injected = \'img\'">');
    // Any image the Markdown made has loaded or failed (an onerror would have fired by now).
    await page.waitForFunction(() =>
      [...document.querySelectorAll('.message.assistant img')].every((image) => (image as HTMLImageElement).complete),
    );
    expect(await page.evaluate(() => (window as unknown as { injected?: string }).injected)).toBeUndefined();
    expect(violations).toEqual([]);
    expect(errors).toEqual([]);
  });

  it('shows the Mistral error message of a refused request, and of a bad key', async () => {
    const { page } = await openChat();
    await page.route('**/v1/chat/completions', (route) =>
      route.fulfill({
        status: 429,
        contentType: 'application/json',
        body: JSON.stringify(errorBody('rate_limited', 'Rate limit exceeded: 60 requests per minute', null, '1300')),
      }),
    );
    await ask(page, 'Hello');
    await expect.poll(() => page.locator('.message.assistant.error').count(), STACK_WAIT).toBe(1);
    expect(await lastAnswerText(page)).toBe('429: Rate limit exceeded: 60 requests per minute');
    expect(await page.textContent('#status')).toBe('Error: 429: Rate limit exceeded: 60 requests per minute');
    // The failed turn can be retried.
    expect(await lastAnswer(page).locator('.regenerate').isVisible()).toBe(true);

    // An error event in the middle of a stream keeps what was shown and says what happened.
    await page.unrouteAll();
    await page.route('**/v1/chat/completions', (route) =>
      route.fulfill({
        status: 200,
        headers: { ...SSE_HEADERS },
        body:
          encodeSseData({
            id: 'cmpl-test',
            object: 'chat.completion.chunk',
            created: 1_700_000_000,
            model: 'mistral-tiny',
            choices: [{ index: 0, delta: { role: 'assistant', content: 'Half an ans' }, finish_reason: null }],
          } satisfies ChatCompletionChunk) + encodeSseData(errorBody('upstream_error', 'The region went away mid-answer')),
      }),
    );
    await lastAnswer(page).locator('.regenerate').click();
    await expect.poll(() => page.textContent('#status'), STACK_WAIT).toBe('Error: The region went away mid-answer');
    expect(await lastAnswerText(page)).toBe('Half an ans');
    expect(await page.locator('.message.assistant.error').count()).toBe(1);

    const wrongKey = await openChat({ key: 'sk-wrong' });
    await expect.poll(() => wrongKey.page.textContent('#status'), STACK_WAIT).toMatch(/^Could not list the models: 401: \S/);
    await ask(wrongKey.page, 'Hello');
    expect(await wrongKey.page.locator('.message').count()).toBe(0);
    expect(await wrongKey.page.textContent('#status')).toMatch(/^No model to ask/);
  });

  it('fits a phone: no horizontal scroll, composer and status on screen, settings behind a button', async () => {
    const { page } = await openChat({ viewport: PHONE });
    await answerWith(page, [
      `A long line: ${'word '.repeat(60)}\n\n`,
      `\`\`\`sh\ncurl -N http://localhost:8787/v1/chat/completions -H "Authorization: Bearer $KEY" ${'--flag '.repeat(20)}\n\`\`\`\n`,
      `${'https://example.com/a/very/long/path/without/any/spaces/'.repeat(3)}\n`,
    ]);
    await ask(page, `A long question ${'x'.repeat(200)}`);
    await waitUntilDone(page);

    const widths = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      client: document.documentElement.clientWidth,
    }));
    expect(widths.scroll).toBeLessThanOrEqual(widths.client);
    for (const selector of ['#prompt', '#send', '#status', '#model']) {
      const box = await page.locator(selector).boundingBox();
      expect(box, selector).not.toBeNull();
      expect(box!.x).toBeGreaterThanOrEqual(0);
      expect(box!.x + box!.width).toBeLessThanOrEqual(PHONE.width);
      expect(box!.y + box!.height).toBeLessThanOrEqual(PHONE.height);
    }
    expect(await page.isVisible('#system-prompt')).toBe(false);
    await page.screenshot({ path: join(SCREENSHOTS, 'phone-answer.png') });

    await page.click('#toggle-settings');
    expect(await page.isVisible('#system-prompt')).toBe(true);
    await page.screenshot({ path: join(SCREENSHOTS, 'phone-settings.png') });
  });
});
