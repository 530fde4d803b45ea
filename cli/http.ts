/**
 * The CLI's HTTP calls to its own children (readiness probes, the dev key, admin routes): one request whose answer,
 * body included, arrives within a deadline or fails with a `TimeoutError`. The deadline is kept by a timer of our
 * own, not only by the fetch's abort signal, so a server that sends its headers and then stalls mid-body (workerd or
 * a sidecar still starting on a busy machine) can never leave a start-up or a command waiting forever.
 */

export interface TextAnswer {
  status: number;
  ok: boolean;
  text: string;
}

export async function fetchText(url: string | URL, init: RequestInit, timeoutMs: number): Promise<TextAnswer> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const reason = new DOMException(`no complete answer from ${String(url)} within ${timeoutMs} ms`, 'TimeoutError');
      controller.abort(reason);
      reject(reason);
    }, timeoutMs);
  });
  const answered = (async () => {
    const response = await fetch(url, { ...init, signal: controller.signal });
    // Read to the end, not cancelled: hanging up before the body arrives makes workerd print a Broken pipe trace.
    const text = await response.text();
    return { status: response.status, ok: response.ok, text };
  })();
  // The loser of the race must not surface as an unhandled rejection.
  answered.catch(() => {});
  try {
    return await Promise.race([answered, expired]);
  } finally {
    clearTimeout(timer);
  }
}
