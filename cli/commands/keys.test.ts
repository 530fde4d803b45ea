/** `sirocco keys <action> --help` explains that action, with its defaults and an example, and touches no edge. */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { run } from './keys.ts';

afterEach(() => vi.restoreAllMocks());

describe('sirocco keys help', () => {
  it.each([
    ['create', /--tpm N\s+tokens per minute \(default 2000000\)/],
    ['list', /usage: sirocco keys list/],
    ['revoke', /16 hex digits/],
  ])('keys %s --help prints its own usage and exits 0', async (action, pattern) => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    expect(await run([action, '--help'])).toBe(0);
    const printed = log.mock.calls.map((call) => String(call[0])).join('\n');
    expect(printed).toContain(`usage: sirocco keys ${action}`);
    expect(printed).toMatch(pattern);
    expect(printed).toMatch(/example: sirocco keys/);
  });
});
