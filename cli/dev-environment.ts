/**
 * `npm start`'s settings checked before anything starts: the ports (flags, else PORT), the dev key the edge will be
 * asked to store, the secrets that go into HTTP headers and .dev.vars, and the folders it writes. Every problem is
 * named by its variable or flag (and by the file, for a value kept in .dev.vars); a secret's value is never shown.
 */
import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { API_KEY_LENGTH, ApiKeyValueSchema } from '../shared/api-key.ts';
import { DEFAULT_PORTS, ENV } from '../shared/protocol.ts';

export interface DevEnvironmentInput {
  portFlag: string | undefined;
  sidecarPortsFlag: string | undefined;
  /** How many sidecars `--sidecar-ports` must name. */
  sidecarCount: number;
  env: Record<string, string | undefined>;
  /** The dev-vars file and what it holds (values the environment does not set are taken from it). */
  devVarsFile: string;
  saved: Map<string, string>;
}

export interface DevEnvironment {
  edgePort: number;
  /** Undefined: the default sidecar ports. */
  sidecarPorts: number[] | undefined;
  /** One line per problem; empty when the stack may start. */
  problems: string[];
}

/** Secrets travel in HTTP headers and dotenv lines: printable ASCII, no spaces; long enough not to be guessed. */
const SECRET_RULE = { min: 16, max: 1024 };
const PRINTABLE = /^[\x21-\x7e]+$/;

/** A TCP port a listener can take, as text; undefined when it is not one. */
function portFrom(raw: string): number | undefined {
  const value = Number(raw.trim());
  return raw.trim() !== '' && Number.isInteger(value) && value >= 1 && value <= 65535 ? value : undefined;
}

export function checkDevEnvironment(input: DevEnvironmentInput): DevEnvironment {
  const problems: string[] = [];
  const { env } = input;

  // ─── Ports ───
  let edgePort: number = DEFAULT_PORTS.edge;
  const portSource = input.portFlag !== undefined ? '--port' : env[ENV.port] ? ENV.port : undefined;
  const rawPort = input.portFlag ?? env[ENV.port];
  if (portSource !== undefined && rawPort !== undefined) {
    const port = portFrom(rawPort);
    if (port === undefined)
      problems.push(`${portSource} must be an integer from 1 to 65535 (the edge's port), got ${rawPort.trim() === '' ? '""' : rawPort}`);
    else edgePort = port;
  }

  let sidecarPorts: number[] | undefined;
  if (input.sidecarPortsFlag !== undefined) {
    const raw = input.sidecarPortsFlag.split(',');
    const ports = raw.map(portFrom);
    const example = Array.from({ length: input.sidecarCount }, (_, index) => 8081 + index).join(',');
    if (raw.length !== input.sidecarCount) {
      problems.push(`--sidecar-ports takes ${input.sidecarCount} ports, e.g. ${example}; got "${input.sidecarPortsFlag}"`);
    } else if (ports.some((port) => port === undefined)) {
      problems.push(`--sidecar-ports must be integers from 1 to 65535, e.g. ${example}; got "${input.sidecarPortsFlag}"`);
    } else {
      sidecarPorts = ports as number[];
    }
  }
  const allPorts = [edgePort, ...(sidecarPorts ?? [])];
  const repeated = allPorts.filter((port, index) => allPorts.indexOf(port) !== index);
  // Only between ports that parsed: a bad one is already reported.
  if (repeated.length > 0 && problems.length === 0) {
    problems.push(`port ${repeated[0]} is given twice (edge ${portSource ?? 'default'} and --sidecar-ports): each process needs its own`);
  }

  // ─── The dev key and the secrets: the environment first, then the dev-vars file ───
  const settingOf = (name: string): { value: string; source: string } | undefined => {
    if (env[name]) return { value: env[name], source: name };
    const saved = input.saved.get(name);
    return saved ? { value: saved, source: `${name} (in ${input.devVarsFile})` } : undefined;
  };

  const devKey = settingOf(ENV.devKey);
  if (devKey && !ApiKeyValueSchema.safeParse(devKey.value).success) {
    problems.push(
      `${devKey.source} must be ${API_KEY_LENGTH.min} to ${API_KEY_LENGTH.max} printable ASCII characters without spaces, as the edge accepts keys; ` +
        `it has ${devKey.value.length} character${devKey.value.length === 1 ? '' : 's'}${PRINTABLE.test(devKey.value) ? '' : ', some of them spaces or not printable'}`,
    );
  }
  for (const name of [ENV.adminSecret, ENV.sidecarSecret]) {
    const secret = settingOf(name);
    if (!secret) continue;
    const { length } = secret.value;
    if (!PRINTABLE.test(secret.value) || length < SECRET_RULE.min || length > SECRET_RULE.max) {
      problems.push(
        `${secret.source} must be ${SECRET_RULE.min} to ${SECRET_RULE.max} printable ASCII characters without spaces ` +
          `(it goes into HTTP headers; \`openssl rand -hex 32\` makes one), or unset to have one generated; it has ${length}`,
      );
    }
  }

  // ─── Folders it writes ───
  const home = env[ENV.home];
  if (home && existsSync(home) && !statSync(home).isDirectory()) {
    problems.push(`${ENV.home} names "${home}", which is not a folder (the demo models are built there)`);
  }
  const devVarsFolder = dirname(input.devVarsFile);
  if (existsSync(input.devVarsFile) && statSync(input.devVarsFile).isDirectory()) {
    problems.push(`${env[ENV.devVars] ? ENV.devVars : 'the dev-vars file'} names "${input.devVarsFile}", which is a folder, not a file`);
  } else if (!existsSync(devVarsFolder)) {
    problems.push(`${env[ENV.devVars] ? ENV.devVars : 'the dev-vars file'} "${input.devVarsFile}": its folder does not exist`);
  }

  return { edgePort, sidecarPorts, problems };
}
