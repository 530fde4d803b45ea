/** The Hono environment of the sidecar's app: what each request's context carries. */
import type { RequestIdVariables } from 'hono/request-id';

export type SidecarEnv = { Variables: RequestIdVariables };
