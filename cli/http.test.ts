/**
 * fetchText: an answer with its whole body within the deadline, or a TimeoutError at the deadline, whatever the
 * server does: never answers, or sends its headers and stalls mid-body.
 */
import { createServer, type Server } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { fetchText } from './http.ts';

const servers: Server[] = [];
afterEach(() => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    server.close();
  }
});

async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('no address');
  return `http://127.0.0.1:${address.port}/`;
}

describe('fetchText', () => {
  it('returns the status and the whole body', async () => {
    const url = await serve((request, response) => {
      response.writeHead(201, { 'content-type': 'text/plain' });
      response.end(`${request.method} ok`);
    });
    expect(await fetchText(url, { method: 'POST' }, 2_000)).toEqual({ status: 201, ok: true, text: 'POST ok' });
  });

  it('fails with a TimeoutError at the deadline when the server never answers', async () => {
    const url = await serve(() => {});
    const started = Date.now();
    await expect(fetchText(url, {}, 300)).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('fails with a TimeoutError at the deadline when the body stalls after the headers', async () => {
    const url = await serve((_request, response) => {
      response.writeHead(200, { 'content-length': '100' });
      response.write('part of it');
    });
    const started = Date.now();
    await expect(fetchText(url, {}, 300)).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('passes a refused connection on as the fetch error', async () => {
    const url = await serve(() => {});
    for (const server of servers.splice(0)) server.close();
    await expect(fetchText(url, {}, 2_000)).rejects.toThrow(/fetch failed/);
  });
});
