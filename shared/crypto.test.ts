import { describe, expect, it } from 'vitest';
import { bytesToHex, hexToBytes, hmacSha256Hex, sha256Hex, timingSafeEqual } from './crypto.ts';

describe('crypto helpers', () => {
  it('computes SHA-256 and HMAC-SHA256 known answers', async () => {
    expect(await sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    // RFC 4231 test case 2.
    expect(await hmacSha256Hex('Jefe', 'what do ya want for nothing?')).toBe(
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    );
  });

  it('compares strings for equality only', () => {
    expect(timingSafeEqual('abc', 'abc')).toBe(true);
    expect(timingSafeEqual('abc', 'abd')).toBe(false);
    expect(timingSafeEqual('abc', 'abcd')).toBe(false);
    expect(timingSafeEqual('', '')).toBe(true);
  });

  it('round-trips hex and rejects malformed hex', () => {
    expect(bytesToHex(hexToBytes('00ff10') ?? new Uint8Array())).toBe('00ff10');
    expect(hexToBytes('abc')).toBeNull();
    expect(hexToBytes('zz')).toBeNull();
  });
});
