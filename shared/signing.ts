/**
 * HMAC request signing between the edge and the sidecars.
 *
 * signature = hex HMAC-SHA256(secret, `${METHOD}\n${pathWithQuery}\n${timestamp}\n${nonce}\n${hex sha256(body)}`)
 * sent as `x-sirocco-signature` next to `x-sirocco-timestamp` (unix seconds) and `x-sirocco-nonce`
 * (128 random bits, hex). The timestamp bounds how long a receiver must remember nonces (the
 * allowed clock skew); the nonce makes each signed request single-use within that window (the
 * receiver keeps the nonces it accepted, see sidecar/server/signature.ts); hashing the body binds
 * the signature to the exact bytes sent.
 */
import { type BinaryInput, hmacSha256Hex, sha256Hex, timingSafeEqual } from './crypto.ts';
import { HEADERS, SIGNATURE_MAX_SKEW_SECONDS } from './protocol.ts';

export interface SignRequestOptions {
  secret: string;
  method: string;
  /** Path plus query string exactly as requested, e.g. `/v1/chat/completions`. */
  path: string;
  /** The exact body bytes sent (empty string for GET). */
  body: BinaryInput;
  /** Unix seconds; defaults to now. */
  timestamp?: number;
  /** Defaults to a fresh random nonce (a seam for tests: a nonce must never be reused). */
  nonce?: string;
}

export type SignatureHeaders = {
  'x-sirocco-timestamp': string;
  'x-sirocco-nonce': string;
  'x-sirocco-signature': string;
};

/** Node's IncomingHttpHeaders, a plain record, or a Fetch `Headers`. */
export type HeaderSource = Headers | Record<string, string | string[] | undefined>;

export interface VerifyRequestOptions {
  secret: string;
  method: string;
  path: string;
  body: BinaryInput;
  headers: HeaderSource;
  /** Unix seconds; defaults to now (a seam for tests). */
  nowSeconds?: number;
  maxSkewSeconds?: number;
}

/** On success, the signed timestamp and nonce, for the receiver's replay check. */
export type VerifyResult = { ok: true; timestamp: number; nonce: string } | { ok: false; reason: string };

/** What a nonce may look like: no separators, so it cannot shift the canonical string's fields. */
const NONCE_FORMAT = /^[A-Za-z0-9_-]{16,128}$/;

async function signature(secret: string, method: string, path: string, timestamp: number, nonce: string, body: BinaryInput) {
  const canonical = `${method.toUpperCase()}\n${path}\n${timestamp}\n${nonce}\n${await sha256Hex(body)}`;
  return hmacSha256Hex(secret, canonical);
}

/** 128 random bits as hex (Web Crypto: Node and workerd alike). */
export function newNonce(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let hex = '';
  for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

export async function signRequest({ secret, method, path, body, timestamp, nonce }: SignRequestOptions): Promise<SignatureHeaders> {
  if (!secret) throw new Error('signRequest: the signing secret is empty');
  const seconds = timestamp ?? Math.floor(Date.now() / 1000);
  const requestNonce = nonce ?? newNonce();
  if (!NONCE_FORMAT.test(requestNonce)) throw new Error('signRequest: a nonce is 16-128 letters, digits, "_" or "-"');
  return {
    [HEADERS.timestamp]: String(seconds),
    [HEADERS.nonce]: requestNonce,
    [HEADERS.signature]: await signature(secret, method, path, seconds, requestNonce, body),
  } as SignatureHeaders;
}

function readHeader(headers: HeaderSource, name: string): string | undefined {
  if (headers instanceof Headers) return headers.get(name) ?? undefined;
  const value = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Checks presence, freshness and the HMAC; the reason is safe to return to the caller. Whether the
 * nonce was seen before is the receiver's to check (it alone keeps state), after this succeeds.
 */
export async function verifyRequest({
  secret,
  method,
  path,
  body,
  headers,
  nowSeconds = Math.floor(Date.now() / 1000),
  maxSkewSeconds = SIGNATURE_MAX_SKEW_SECONDS,
}: VerifyRequestOptions): Promise<VerifyResult> {
  const timestampHeader = readHeader(headers, HEADERS.timestamp);
  const nonceHeader = readHeader(headers, HEADERS.nonce);
  const signatureHeader = readHeader(headers, HEADERS.signature);
  if (!timestampHeader || !nonceHeader || !signatureHeader) {
    return { ok: false, reason: `missing ${HEADERS.timestamp}, ${HEADERS.nonce} or ${HEADERS.signature} header` };
  }
  if (!/^\d{1,12}$/.test(timestampHeader)) return { ok: false, reason: `malformed ${HEADERS.timestamp} header` };
  if (!NONCE_FORMAT.test(nonceHeader)) return { ok: false, reason: `malformed ${HEADERS.nonce} header` };
  const timestamp = Number(timestampHeader);
  if (Math.abs(nowSeconds - timestamp) > maxSkewSeconds) {
    return { ok: false, reason: `stale signature: timestamp is more than ${maxSkewSeconds} s from the server clock` };
  }
  const expected = await signature(secret, method, path, timestamp, nonceHeader, body);
  if (!timingSafeEqual(expected, signatureHeader.toLowerCase())) return { ok: false, reason: 'signature mismatch' };
  return { ok: true, timestamp, nonce: nonceHeader };
}
