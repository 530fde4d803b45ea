/**
 * Input whose size or depth the caller controls is a 4xx however large it is: a prompt of ~300k
 * tokens inside the default 1 MiB body limit, and a JSON schema nested 50,000 levels deep (sent
 * under a raised body limit, since it does not fit in 1 MiB), never overflow the stack into a 500,
 * and the sidecar keeps serving afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { chatRequest, postChat, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ env: { SIROCCO_MAX_BODY_BYTES: String(4 * 1024 * 1024) } });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

describe('input as large as the body limit allows', () => {
  it('answers 400 naming the context length to a prompt of ~300k tokens under 1 MiB', async () => {
    const body = JSON.stringify(chatRequest('hello '.repeat(150_000)));
    expect(body.length).toBeLessThan(1024 * 1024);
    const response = await postChat(sidecar.url, body);
    expect(response.status).toBe(400);
    const error = MistralErrorBodySchema.parse(await response.json());
    expect(error).toMatchObject({ type: 'invalid_request_error', param: 'messages' });
    expect(error.message).toMatch(/the prompt is \d{6} tokens but the model's context length is 8192/);
  });

  it('answers 400 to a response_format schema nested 50,000 levels deep', async () => {
    // Written as text: JSON.stringify itself recurses and would overflow on the test's side.
    const depth = 50_000;
    const schema = `${'{"type":"object","properties":{"a":'.repeat(depth)}{"type":"string"}${'}}'.repeat(depth)}`;
    const request = JSON.stringify(
      chatRequest('Hi', { response_format: { type: 'json_schema', json_schema: { name: 'deep', schema: {} } } }),
    );
    const response = await postChat(sidecar.url, request.replace('"schema":{}', `"schema":${schema}`));
    expect(response.status).toBe(400);
    const error = MistralErrorBodySchema.parse(await response.json());
    expect(error).toMatchObject({ type: 'invalid_request_error', param: 'response_format' });
    expect(error.message).toMatch(/nests deeper than 64 levels/);
  });

  it('keeps serving afterwards', async () => {
    expect(sidecar.child.exitCode).toBeNull();
    const response = await postChat(sidecar.url, chatRequest('Still there?', { max_tokens: 3 }));
    expect(response.status).toBe(200);
  });
});
