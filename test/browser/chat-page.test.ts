/**
 * The chat page served by the worker, in headless Chromium against the real stack (wrangler dev → real sidecar on
 * the demo models): tokens visibly stream into the page, and Stop ends the stream.
 */
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Stack } from '../../cli/commands/dev.ts';
import { LoadReportSchema } from '../../shared/protocol.ts';
import { launchBrowser } from '../support/browser.ts';
import { signedSidecarGet, startTestStack, TEST_OUTPUT } from '../support/stack-fixture.ts';

let stack: Stack;
let browser: Browser;

beforeAll(async () => {
  [stack, browser] = await Promise.all([startTestStack({ regions: ['eu-west'] }), launchBrowser()]);
}, 300_000);
afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

async function openChat(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(`${stack.edgeUrl}/`);
  await page.fill('#api-key', stack.apiKey);
  expect(errors).toEqual([]);
  return page;
}

// Playwright's innerText() is the rendered text a reader sees, not the DOM property the rule is about.
// biome-ignore lint/performance/useDomNodeTextContent: Playwright locator method
const assistantText = (page: Page) => page.locator('.message.assistant').last().innerText();

describe('chat page', () => {
  it('streams tokens into the page as they arrive', async () => {
    const page = await openChat();
    await page.selectOption('#model', 'mistral-tiny');
    await page.fill('#max-tokens', '24');
    await page.fill('#prompt', 'Hello from the browser');
    // Record every rendering of the reply: a streamed answer shows up as many growing texts, not one.
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as unknown as { renderedLengths: number[] }).renderedLengths = seen;
      new MutationObserver(() => {
        const reply = document.querySelector('.message.assistant');
        if (reply) seen.push(reply.textContent?.length ?? 0);
      }).observe(document.getElementById('transcript')!, { childList: true, subtree: true, characterData: true });
    });
    await page.click('#send');

    await expect.poll(() => page.textContent('#status')).toMatch(/^Done \((stop|length), \d+ tokens\)\.$/);
    expect((await assistantText(page)).length).toBeGreaterThan(0);
    const lengths = await page.evaluate(() => (window as unknown as { renderedLengths: number[] }).renderedLengths);
    expect(new Set(lengths.filter((length) => length > 0)).size).toBeGreaterThan(1);
    await page.screenshot({ path: join(TEST_OUTPUT, 'chat-page.png') });

    // The key was remembered for the next visit.
    expect(await page.evaluate(() => localStorage.getItem('sirocco.apiKey'))).toBe(stack.apiKey);
  });

  it('Stop ends a long stream: the text stops growing and the page is ready again', async () => {
    const page = await openChat();
    await page.fill('#max-tokens', '4000');
    await page.fill('#prompt', 'Write a very long story');
    await page.click('#send');
    await page.waitForFunction(() => (document.querySelector('.message.assistant')?.textContent ?? '').length > 0);

    await page.click('#stop');
    await expect.poll(() => page.textContent('#status')).toBe('Stopped.');
    const stoppedText = await assistantText(page);
    await page.waitForTimeout(500);
    expect(await assistantText(page)).toBe(stoppedText);
    expect(await page.isDisabled('#stop')).toBe(true);
    expect(await page.isEnabled('#send')).toBe(true);
    await page.screenshot({ path: join(TEST_OUTPUT, 'chat-page-stopped.png') });

    // The abort travelled through the edge: the sidecar is no longer generating for this page.
    await expect
      .poll(async () => LoadReportSchema.parse(await (await signedSidecarGet(stack, 'eu-west', '/ready')).json()).activeSequences, {
        timeout: 10_000,
      })
      .toBe(0);
  });

  it('shows the Mistral error message for a bad key', async () => {
    const page = await openChat();
    await page.fill('#api-key', 'sk-wrong');
    await page.fill('#prompt', 'Hello');
    await page.click('#send');
    await expect.poll(() => page.locator('.message.assistant.error').count()).toBe(1);
    expect(await assistantText(page)).toMatch(/^401: /);
  });
});
