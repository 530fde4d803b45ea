/**
 * Small WebCrypto helpers (Workers and Node 20 both expose `crypto.subtle`): SHA-256 and HMAC as
 * lower-case hex, and a constant-time comparison for secrets and digests.
 */
export type BinaryInput = string | Uint8Array | ArrayBuffer;

const encoder = new TextEncoder();

function toBytes(input: BinaryInput): Uint8Array<ArrayBuffer> {
  if (typeof input === 'string') return encoder.encode(input) as Uint8Array<ArrayBuffer>;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  return new Uint8Array(input); // copy: WebCrypto wants an ArrayBuffer-backed view
}

export function bytesToHex(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let hex = '';
  for (const byte of view) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

/** Lower-case hex → bytes; null when the string is not even-length hex. */
export function hexToBytes(hex: string): Uint8Array<ArrayBuffer> | null {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return null;
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return bytes;
}

export async function sha256Hex(input: BinaryInput): Promise<string> {
  return bytesToHex(await crypto.subtle.digest('SHA-256', toBytes(input)));
}

/**
 * Imported keys by secret: a service signs every request with the same one or two secrets. The
 * resolved CryptoKey is cached, not the promise (Workers warn about promises settled across requests).
 */
const hmacKeys = new Map<string, CryptoKey>();
const MAX_CACHED_HMAC_KEYS = 16;

export async function importHmacKey(secret: string): Promise<CryptoKey> {
  const cached = hmacKeys.get(secret);
  if (cached) return cached;
  const key = await crypto.subtle.importKey('raw', toBytes(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  if (hmacKeys.size >= MAX_CACHED_HMAC_KEYS) hmacKeys.clear();
  hmacKeys.set(secret, key);
  return key;
}

export async function hmacSha256Hex(secret: string, message: BinaryInput): Promise<string> {
  const key = await importHmacKey(secret);
  return bytesToHex(await crypto.subtle.sign('HMAC', key, toBytes(message)));
}

/**
 * Compares two strings in time that depends only on their lengths, so a caller cannot learn how
 * many leading characters of a secret matched.
 */
export function timingSafeEqual(a: string, b: string): boolean {
  const left = encoder.encode(a);
  const right = encoder.encode(b);
  let difference = left.length ^ right.length;
  const length = Math.max(left.length, right.length);
  for (let i = 0; i < length; i++) difference |= (left[i] ?? 0) ^ (right[i] ?? 0);
  return difference === 0;
}
