/**
 * Regional routing through the whole worker in workerd: choice by client location, signed sidecar
 * requests, failover before the first byte (connection refused, 5xx, timeout, error frame first),
 * and the circuit breaker opening and recovering. The sidecars are fakes inside the test isolate
 * (test/edge/fake-sidecar.ts); real sidecar processes are exercised by test/e2e/.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { NEW_YORK, PARIS, setup } from './harness.ts';

type Completion = { choices: { message: { content: string } }[] };

async function answeredBy(response: Response): Promise<string> {
  expect(response.status).toBe(200);
  const body = (await response.json()) as Completion;
  return body.choices[0]?.message.content.replace('Hello from ', '') ?? '';
}

describe('routing by client location', () => {
  const edge = setup();
  let key: string;
  beforeAll(async () => {
    key = await edge.apiKey();
  });

  it('sends Paris to eu-west and New York to us-east', async () => {
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('eu-west');
    expect(await answeredBy(await edge.chat(key, {}, { cf: NEW_YORK }))).toBe('us-east');
    expect(await answeredBy(await edge.chat(key, {}, { cf: { continent: 'NA' } }))).toBe('us-east');
  });

  it('prefers the region a client names in x-sirocco-region, and still fails over from it', async () => {
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS, headers: { 'x-sirocco-region': 'us-east' } }))).toBe('us-east');
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS, headers: { 'x-sirocco-region': 'nowhere' } }))).toBe('eu-west');
    edge.sidecars.sidecar('us-east').behaviour = 'refuse';
    try {
      expect(await answeredBy(await edge.chat(key, {}, { cf: NEW_YORK, headers: { 'x-sirocco-region': 'us-east' } }))).toBe('eu-west');
    } finally {
      edge.sidecars.sidecar('us-east').behaviour = 'ok';
    }
  });

  it('signs every sidecar request and passes the request id along', async () => {
    const response = await edge.chat(key, {}, { cf: PARIS, headers: { 'x-request-id': 'trace-1234567890' } });
    expect(response.headers.get('x-request-id')).toBe('trace-1234567890');
    const forwarded = edge.sidecars.sidecar('eu-west').requests.at(-1);
    expect(forwarded?.signatureOk).toBe(true);
    expect(forwarded?.headers.get('x-request-id')).toBe('trace-1234567890');
    expect(forwarded?.headers.get('authorization')).toBeNull(); // the client's key never leaves the edge
  });

  it('passes a sidecar 4xx through unchanged without failing over', async () => {
    const response = await edge.chat(key, { max_tokens: 999_999 }, { cf: PARIS });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'invalid_request_error', param: 'max_tokens' });
    expect(edge.sidecars.sidecar('us-east').requests.some((request) => request.body.includes('999999'))).toBe(false);
  });
});

describe('failover before the first byte', () => {
  it.each([
    ['connection refused', 'refuse'],
    ['HTTP 500', 'http-500'],
    ['no answer before the timeout', 'hang'],
  ] as const)('moves on to the next region on %s', async (_name, behaviour) => {
    const edge = setup({ FIRST_BYTE_TIMEOUT_MS: '300', COMPLETION_TIMEOUT_MS: '300' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = behaviour;
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    const streamed = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(streamed.status).toBe(200);
    expect(await streamed.text()).toContain('from us-east');
  });

  it('fails over when a 200 stream opens with an error frame, so the client never sees it', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'error-first';
    const text = await (await edge.chat(key, { stream: true }, { cf: PARIS })).text();
    expect(text).toContain('from us-east');
    expect(text).not.toContain('decoder crashed');
    expect(edge.sidecars.sidecar('eu-west').requests).toHaveLength(1);
  });

  it('answers 503 overloaded with Retry-After when every region fails', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'refuse';
    edge.sidecars.sidecar('us-east').behaviour = 'http-500';
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    expect(response.headers.get('x-request-id')).toBeTruthy();
    const body = (await response.json()) as { type: string; message: string };
    expect(body.type).toBe('overloaded');
    expect(body.message).toMatch(/eu-west: connection failed.*us-east: HTTP 500/);
  });
});

describe('circuit breaker', () => {
  it('stops calling a failing region, then lets one trial through after the cooldown and closes on success', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2', CIRCUIT_COOLDOWN_MS: '200' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'http-500';

    for (let i = 0; i < 2; i++) expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(eu.requests).toHaveLength(2);
    const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
    expect(health.regions.find((region) => region.region === 'eu-west')?.circuit).toBe('open');

    // Open: eu-west is skipped entirely, even though it is nearest.
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(eu.requests).toHaveLength(2);

    // Half-open after the cooldown: one trial; eu-west has recovered, so the circuit closes.
    await new Promise((resolve) => setTimeout(resolve, 250));
    eu.behaviour = 'ok';
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('eu-west');
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('eu-west');
    expect(eu.requests).toHaveLength(4);
  });

  it('answers 503 at once, without calling anyone, while every region is open', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1', CIRCUIT_COOLDOWN_MS: '60000' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-500';
    edge.sidecars.sidecar('us-east').behaviour = 'http-500';
    expect((await edge.chat(key, {}, { cf: PARIS })).status).toBe(503);
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(503);
    expect(((await response.json()) as { message: string }).message).toMatch(/open circuit/);
    expect(edge.sidecars.sidecar('eu-west').requests.length + edge.sidecars.sidecar('us-east').requests.length).toBe(2);
  });

  it('reopens when the half-open trial fails', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1', CIRCUIT_COOLDOWN_MS: '100' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'refuse';
    await edge.chat(key, {}, { cf: PARIS });
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east'); // trial failed over
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east'); // open again: skipped
    expect(eu.requests).toHaveLength(0); // refused connections never reach the handler
  });
});

describe('request errors are never region failures', () => {
  async function circuitOf(edge: ReturnType<typeof setup>, region: string): Promise<string | undefined> {
    const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
    return health.regions.find((entry) => entry.region === region)?.circuit;
  }

  it('relays a sidecar 400 with its body, never retries it elsewhere, and keeps the circuit closed', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-400';
    for (let i = 0; i < 6; i++) {
      const response = await edge.chat(key, {}, { cf: PARIS });
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ object: 'error', type: 'invalid_request_error', param: 'messages' });
    }
    expect(edge.sidecars.sidecar('eu-west').requests).toHaveLength(6);
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
    expect(await circuitOf(edge, 'eu-west')).toBe('closed');
  });

  it('relays a 500 whose body says invalid_request_error as a 400, without failing over or counting', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-500-request-fault';
    for (let i = 0; i < 4; i++) {
      const response = await edge.chat(key, {}, { cf: PARIS });
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ type: 'invalid_request_error', message: expect.stringMatching(/control token/) });
    }
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
    expect(await circuitOf(edge, 'eu-west')).toBe('closed');
  });

  it('fails a plain 500 over to the next region and counts it on the circuit', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-500';
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(await circuitOf(edge, 'eu-west')).toBe('closed');
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });

  it('fails a 403 (the edge credentials refused) over and counts it', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-403';
    for (let i = 0; i < 2; i++) expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });

  it('fails a 503 (overloaded) over, but opens the circuit only after four times as many answers as a crash', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '2' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-503';
    for (let i = 0; i < 7; i++) expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(await circuitOf(edge, 'eu-west')).toBe('closed');
    expect(await answeredBy(await edge.chat(key, {}, { cf: PARIS }))).toBe('us-east');
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });

  it('answers 504 timeout when every region timed out', async () => {
    const edge = setup({ COMPLETION_TIMEOUT_MS: '100' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'hang';
    edge.sidecars.sidecar('us-east').behaviour = 'hang-after-headers';
    const started = Date.now();
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'timeout', message: expect.stringMatching(/in time/) });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(edge.sidecars.sidecar('us-east').requests[0]?.signal?.aborted).toBe(true);
  });
});
