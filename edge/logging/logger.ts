/**
 * Structured logs: one JSON object per line (Workers Logs and `wrangler tail` index the fields).
 * Callers pass explicit fields only, so keys and secrets never reach a log line.
 */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** Adds fields to this request's access-log line. */
  annotate(fields: LogFields): void;
  readonly annotations: LogFields;
  /**
   * Delays this request's access-log line until `work` settles (a stream's end, when its tokens are known), so the
   * line carries what only the end of the response tells.
   */
  holdAccessLogUntil(work: Promise<unknown>): void;
  /** What holdAccessLogUntil was given. */
  readonly accessLogHolds: ReadonlyArray<Promise<unknown>>;
}

export function createLogger(base: LogFields): Logger {
  const annotations: LogFields = {};
  const accessLogHolds: Array<Promise<unknown>> = [];
  const write = (level: 'info' | 'warn' | 'error', event: string, fields: LogFields = {}) => {
    const line = JSON.stringify({ level, event, time: new Date().toISOString(), ...base, ...fields });
    if (level === 'error') console.error(line);
    else if (level === 'warn') console.warn(line);
    else console.log(line);
  };
  return {
    info: (event, fields) => write('info', event, fields),
    warn: (event, fields) => write('warn', event, fields),
    error: (event, fields) => write('error', event, fields),
    annotate: (fields) => Object.assign(annotations, fields),
    annotations,
    holdAccessLogUntil: (work) => accessLogHolds.push(work),
    accessLogHolds,
  };
}
