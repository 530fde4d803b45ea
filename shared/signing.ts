/**
 * HMAC request signing between the edge and the sidecars.
 *
 * signature = hex HMAC-SHA256(secret, `${METHOD}\n${pathWithQuery}\n${timestamp}\n${hex sha256(body)}`)
 * sent as `x-sirocco-signature` next to `x-sirocco-timestamp` (unix seconds). The timestamp bounds
 * replay to the allowed clock skew; hashing the body binds the signature to the exact bytes sent.
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
}

export type SignatureHeaders = {
  'x-sirocco-timestamp': string;
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

export type VerifyResult = { ok: true } | { ok: false; reason: string };

async function signature(secret: string, method: string, path: string, timestamp: number, body: BinaryInput) {
  const canonical = `${method.toUpperCase()}\n${path}\n${timestamp}\n${await sha256Hex(body)}`;
  return hmacSha256Hex(secret, canonical);
}

export async function signRequest({ secret, method, path, body, timestamp }: SignRequestOptions): Promise<SignatureHeaders> {
  if (!secret) throw new Error('signRequest: the signing secret is empty');
  const seconds = timestamp ?? Math.floor(Date.now() / 1000);
  return {
    [HEADERS.timestamp]: String(seconds),
    [HEADERS.signature]: await signature(secret, method, path, seconds, body),
  } as SignatureHeaders;
}

function readHeader(headers: HeaderSource, name: string): string | undefined {
  if (headers instanceof Headers) return headers.get(name) ?? undefined;
  const value = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/** Checks presence, freshness and the HMAC; the reason is safe to return to the caller. */
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
  const signatureHeader = readHeader(headers, HEADERS.signature);
  if (!timestampHeader || !signatureHeader) {
    return { ok: false, reason: `missing ${HEADERS.timestamp} or ${HEADERS.signature} header` };
  }
  if (!/^\d{1,12}$/.test(timestampHeader)) return { ok: false, reason: `malformed ${HEADERS.timestamp} header` };
  const timestamp = Number(timestampHeader);
  if (Math.abs(nowSeconds - timestamp) > maxSkewSeconds) {
    return { ok: false, reason: `stale signature: timestamp is more than ${maxSkewSeconds} s from the server clock` };
  }
  const expected = await signature(secret, method, path, timestamp, body);
  if (!timingSafeEqual(expected, signatureHeader.toLowerCase())) return { ok: false, reason: 'signature mismatch' };
  return { ok: true };
}
