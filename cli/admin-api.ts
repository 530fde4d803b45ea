/**
 * Calling an edge's admin routes from the CLI (`sirocco keys`, `sirocco usage`): the admin secret from
 * SIROCCO_ADMIN_SECRET, else from the repository's .dev.vars (where `npm start` keeps the one it generated); the
 * edge URL defaults to http://localhost:$PORT (8787). Every failure is a CliError that says what to do.
 */
import { DEFAULT_PORTS, ENV } from '../shared/protocol.ts';
import { CliError } from './args.ts';
import { devVarsFile, readDevVars } from './dev-vars.ts';
import { fetchText, type TextAnswer } from './http.ts';

export function defaultEdgeUrl(): string {
  return `http://localhost:${process.env[ENV.port] || DEFAULT_PORTS.edge}`;
}

/** The environment's admin secret, else the one `npm start` keeps in .dev.vars. */
export async function adminSecret(): Promise<string> {
  const secret = process.env[ENV.adminSecret] || (await readDevVars(devVarsFile())).get(ENV.adminSecret);
  if (!secret) {
    throw new CliError(`set ${ENV.adminSecret} to the edge's admin secret (\`npm start\` keeps its own in ${devVarsFile()})`);
  }
  return secret;
}

/** How long an admin call may take, body included. */
const ADMIN_TIMEOUT_MS = 15_000;

/** Calls an admin route; the edge's Mistral error message becomes the CLI error. */
export async function callAdmin(url: string, method: string, path: string, body?: unknown): Promise<unknown> {
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    throw new CliError(`--url must be an http(s) URL, got "${url}"`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new CliError(`--url must be an http(s) URL, got "${url}"`);
  const authorization = `Bearer ${await adminSecret()}`;
  let answer: TextAnswer;
  try {
    answer = await fetchText(
      new URL(path, base),
      {
        method,
        headers: { authorization, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      },
      ADMIN_TIMEOUT_MS,
    );
  } catch (error) {
    const reason = error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
    throw new CliError(`cannot reach the edge at ${base.origin}: ${reason}`, 1);
  }
  const { text } = answer;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!answer.ok) {
    const message = json && typeof json === 'object' && 'message' in json ? String(json.message) : text.slice(0, 200);
    const hint = answer.status === 401 ? ` (is ${ENV.adminSecret} the secret this edge was started with?)` : '';
    throw new CliError(`${method} ${path} failed (HTTP ${answer.status}): ${message}${hint}`, 1);
  }
  return json;
}
