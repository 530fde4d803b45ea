/**
 * Trust boundary between the edge and this sidecar: when a secret is configured, every request
 * (except the exempt probe paths) must carry `x-sirocco-timestamp`, `x-sirocco-nonce` and
 * `x-sirocco-signature`, the hex HMAC-SHA256 of `METHOD\npathWithQuery\ntimestamp\nnonce\nsha256(body)`
 * (shared/signing.ts). Unsigned, wrong and stale (> 60 s skew) requests get 401 before any work is
 * done, and so does a replay: each accepted nonce is remembered until its timestamp leaves the
 * window, after which the timestamp check alone refuses it.
 *
 * A path may also open with a bearer token (`bearerPaths`: `/metrics` with SIROCCO_METRICS_TOKEN), for a client that
 * cannot sign, such as a Prometheus scraper; a wrong token is a 401 like a wrong signature.
 */
import type { MiddlewareHandler } from 'hono';
import { timingSafeEqual } from '../../shared/crypto.ts';
import { SIGNATURE_MAX_SKEW_SECONDS } from '../../shared/protocol.ts';
import { verifyRequest } from '../../shared/signing.ts';
import { SidecarError } from '../errors.ts';

/**
 * Nonces remembered at most. Each is kept for up to 2 × 60 s (a timestamp may run 60 s ahead), so
 * this admits ~800 signed requests a second sustained, far beyond what a sidecar serves, in ~10 MB.
 */
export const DEFAULT_MAX_REMEMBERED_NONCES = 100_000;

export interface SignatureCheckOptions {
  secret: string;
  /** Paths served without a signature (liveness probes). */
  exemptPaths?: string[];
  /** Path → token: `Authorization: Bearer <token>` (compared in constant time) serves it instead of a signature. */
  bearerPaths?: Record<string, string>;
  maxSkewSeconds?: number;
  maxRememberedNonces?: number;
  /** Unix seconds (a seam for tests). */
  nowSeconds?: () => number;
}

/**
 * The nonces accepted within the signature window. Full means a flood of valid signatures: the check
 * refuses new requests (503) rather than forget a nonce that could still be replayed.
 */
export class NonceRegistry {
  /** Nonce → the last second at which its timestamp is still fresh. */
  private readonly expiries = new Map<string, number>();
  private lastSweep = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly capacity: number,
    private readonly maxSkewSeconds: number,
  ) {}

  get size(): number {
    return this.expiries.size;
  }

  /** 'accepted' and remembered, 'replayed' when seen within the window, 'full' when it cannot be remembered. */
  accept(nonce: string, timestamp: number, nowSeconds: number): 'accepted' | 'replayed' | 'full' {
    const expiry = this.expiries.get(nonce);
    if (expiry !== undefined && expiry >= nowSeconds) return 'replayed';
    // One scan a second at most keeps the cost per request constant; a full registry sweeps at once.
    if (nowSeconds > this.lastSweep || this.expiries.size >= this.capacity) this.sweep(nowSeconds);
    if (this.expiries.size >= this.capacity) return 'full';
    this.expiries.set(nonce, timestamp + this.maxSkewSeconds);
    return 'accepted';
  }

  private sweep(nowSeconds: number): void {
    this.lastSweep = nowSeconds;
    for (const [nonce, expiry] of this.expiries) if (expiry < nowSeconds) this.expiries.delete(nonce);
  }
}

/**
 * @example
 * app.use(signatureCheck({ secret: process.env.SIROCCO_SIDECAR_SECRET!, exemptPaths: ['/health'] }))
 */
export function signatureCheck({
  secret,
  exemptPaths = [],
  bearerPaths = {},
  maxSkewSeconds = SIGNATURE_MAX_SKEW_SECONDS,
  maxRememberedNonces = DEFAULT_MAX_REMEMBERED_NONCES,
  nowSeconds = () => Math.floor(Date.now() / 1000),
}: SignatureCheckOptions): MiddlewareHandler {
  if (!secret) throw new Error('signatureCheck needs a non-empty secret');
  const exempt = new Set(exemptPaths);
  const nonces = new NonceRegistry(maxRememberedNonces, maxSkewSeconds);
  return async function signatureCheck(c, next) {
    if (exempt.has(c.req.path)) return next();
    const pathToken = Object.hasOwn(bearerPaths, c.req.path) ? bearerPaths[c.req.path] : undefined;
    const presented = pathToken ? bearerToken(c.req.header('authorization')) : undefined;
    if (pathToken && presented !== undefined) {
      if (!timingSafeEqual(presented, pathToken)) throw new SidecarError('unauthorized', 'Unauthorized: invalid bearer token');
      return next();
    }
    const url = new URL(c.req.url);
    // Hono caches the body, so the route reads the same bytes that were verified.
    const body = c.req.raw.body ? new Uint8Array(await c.req.arrayBuffer()) : '';
    const now = nowSeconds();
    const result = await verifyRequest({
      secret,
      method: c.req.method,
      path: url.pathname + url.search,
      body,
      headers: c.req.raw.headers,
      nowSeconds: now,
      maxSkewSeconds,
    });
    if (!result.ok) throw new SidecarError('unauthorized', `Unauthorized: ${result.reason}`);
    // Only signed requests reach the registry, so no one without the secret can fill it.
    const verdict = nonces.accept(result.nonce, result.timestamp, now);
    if (verdict === 'replayed') throw new SidecarError('unauthorized', 'Unauthorized: replayed request (nonce already used)');
    if (verdict === 'full') {
      throw new SidecarError('overloaded', 'too many signed requests in the signature window; retry shortly', {
        retryAfterSeconds: 1,
      });
    }
    await next();
  };
}

function bearerToken(header: string | undefined): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')?.[1];
}

/** Without a signing secret: a route that needs `Authorization: Bearer <token>` (compared in constant time). */
export function bearerTokenCheck(token: string): MiddlewareHandler {
  if (!token) throw new Error('bearerTokenCheck needs a non-empty token');
  return async function bearerTokenCheck(c, next) {
    const presented = bearerToken(c.req.header('authorization'));
    if (presented === undefined) throw new SidecarError('unauthorized', 'Unauthorized: send "Authorization: Bearer <token>"');
    if (!timingSafeEqual(presented, token)) throw new SidecarError('unauthorized', 'Unauthorized: invalid bearer token');
    await next();
  };
}
