/**
 * An incremental JSON prefix validator: a pushdown state machine fed one character at a time that
 * rejects the first character after which the text can no longer become a JSON value (RFC 8259).
 * The constrained sampler (json-mode.ts) uses it to keep a local model's answer valid JSON.
 *
 * States are immutable values (a stack string plus a few fields), so trying a candidate token is
 * `advanceText(state, piece)` without copying anything large. Runs of whitespace outside strings
 * are capped (MAX_WHITESPACE_RUN) so a model cannot stall forever on blanks.
 */

/** Consecutive whitespace characters allowed between tokens of the JSON text. */
export const MAX_WHITESPACE_RUN = 4;
/**
 * Digits allowed in a number's integer and fraction parts, and in its exponent: every accepted
 * number parses to a finite double (no 1e999 → Infinity) and a model cannot write digits for ever.
 */
export const MAX_NUMBER_DIGITS = 15;
export const MAX_EXPONENT_DIGITS = 2;

enum Mode {
  /** A value must come next (root, after ':' or ','). */
  Value,
  /** Right after '[': a value or ']'. */
  ValueOrArrayEnd,
  /** Right after '{': a key or '}'. */
  KeyOrObjectEnd,
  /** After ',' in an object: a key. */
  Key,
  /** After a key: ':'. */
  Colon,
  String,
  StringEscape,
  /** Inside \uXXXX; `count` hex digits left. */
  StringUnicode,
  /** After '-': a digit. */
  NumberSign,
  /** After a leading '0': the integer part is complete. */
  NumberZero,
  NumberInteger,
  /** After '.': a digit. */
  NumberDot,
  NumberFraction,
  /** After 'e'/'E': a sign or a digit. */
  NumberExponent,
  /** After the exponent sign: a digit. */
  NumberExponentSign,
  NumberExponentDigits,
  /** Inside true/false/null; `literal` holds the characters still due. */
  Literal,
  /** A value ended inside a container: ',' or the closing bracket. */
  AfterValue,
  /** The root value is complete: nothing more is accepted. */
  Done,
}

export interface JsonState {
  readonly mode: Mode;
  /** Open containers, innermost last: '{' or '['. */
  readonly stack: string;
  /** For String and its escapes: whether the string is an object key. */
  readonly inKey: boolean;
  /** Hex digits left in a \u escape; digits so far in the current part of a number. */
  readonly count: number;
  readonly literal: string;
  readonly whitespaceRun: number;
  /** The root must be an object (response_format json_object). */
  readonly rootObject: boolean;
}

export function initialJsonState(options: { rootObject?: boolean } = {}): JsonState {
  return { mode: Mode.Value, stack: '', inKey: false, count: 0, literal: '', whitespaceRun: 0, rootObject: options.rootObject ?? true };
}

/** True where the next non-blank character must start a value (or, right after '[', may close it). */
export function expectsValue(state: JsonState): boolean {
  return state.mode === Mode.Value || state.mode === Mode.ValueOrArrayEnd;
}

export function isJsonComplete(state: JsonState): boolean {
  return state.mode === Mode.Done;
}

const isDigit = (c: string) => c >= '0' && c <= '9';
const isHex = (c: string) => isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
const isWhitespace = (c: string) => c === ' ' || c === '\n' || c === '\t' || c === '\r';
const LITERALS: Record<string, string> = { t: 'rue', f: 'alse', n: 'ull' };
const ESCAPES = new Set(['"', '\\', '/', 'b', 'f', 'n', 'r', 't']);

function next(state: JsonState, changes: Partial<JsonState>): JsonState {
  return { ...state, whitespaceRun: 0, ...changes };
}

/** The state after a value ends: the enclosing container expects ',' or its end; the root is done. */
function valueEnded(state: JsonState): JsonState {
  return next(state, { mode: state.stack === '' ? Mode.Done : Mode.AfterValue, inKey: false });
}

function skipWhitespace(state: JsonState): JsonState | null {
  return state.whitespaceRun >= MAX_WHITESPACE_RUN ? null : { ...state, whitespaceRun: state.whitespaceRun + 1 };
}

function startValue(state: JsonState, c: string): JsonState | null {
  if (isWhitespace(c)) return skipWhitespace(state);
  const atRoot = state.stack === '';
  if (atRoot && state.rootObject && c !== '{') return null;
  if (c === '{') return next(state, { mode: Mode.KeyOrObjectEnd, stack: `${state.stack}{` });
  if (c === '[') return next(state, { mode: Mode.ValueOrArrayEnd, stack: `${state.stack}[` });
  if (c === '"') return next(state, { mode: Mode.String, inKey: false });
  if (c === '-') return next(state, { mode: Mode.NumberSign });
  if (c === '0') return next(state, { mode: Mode.NumberZero });
  if (isDigit(c)) return next(state, { mode: Mode.NumberInteger, count: 1 });
  const literal = LITERALS[c];
  if (literal !== undefined) return next(state, { mode: Mode.Literal, literal });
  return null;
}

/** Closes the innermost container with `c` if it matches. */
function closeContainer(state: JsonState, c: string): JsonState | null {
  const top = state.stack[state.stack.length - 1];
  if ((c === '}' && top !== '{') || (c === ']' && top !== '[')) return null;
  return valueEnded({ ...state, stack: state.stack.slice(0, -1) });
}

function afterValue(state: JsonState, c: string): JsonState | null {
  if (isWhitespace(c)) return skipWhitespace(state);
  if (c === ',') return next(state, { mode: state.stack.endsWith('{') ? Mode.Key : Mode.Value });
  if (c === '}' || c === ']') return closeContainer(state, c);
  return null;
}

function moreDigits(state: JsonState, limit: number): JsonState | null {
  return state.count < limit ? { ...state, count: state.count + 1 } : null;
}

/** A number may end at any character that can follow a value. */
function endNumber(state: JsonState, c: string): JsonState | null {
  const ended = valueEnded(state);
  return ended.mode === Mode.Done ? null : afterValue(ended, c);
}

/** The state after `c`, or null when no JSON text starts with the prefix plus `c`. */
export function advanceChar(state: JsonState, c: string): JsonState | null {
  switch (state.mode) {
    case Mode.Value:
      return startValue(state, c);
    case Mode.ValueOrArrayEnd:
      return c === ']' ? closeContainer(state, c) : startValue(state, c);
    case Mode.KeyOrObjectEnd:
    case Mode.Key:
      if (isWhitespace(c)) return skipWhitespace(state);
      if (c === '"') return next(state, { mode: Mode.String, inKey: true });
      if (c === '}' && state.mode === Mode.KeyOrObjectEnd) return closeContainer(state, c);
      return null;
    case Mode.Colon:
      if (isWhitespace(c)) return skipWhitespace(state);
      return c === ':' ? next(state, { mode: Mode.Value }) : null;
    case Mode.String:
      if (c === '"') return state.inKey ? next(state, { mode: Mode.Colon, inKey: false }) : valueEnded(state);
      if (c === '\\') return next(state, { mode: Mode.StringEscape });
      return c < ' ' ? null : state; // raw control characters are not allowed in JSON strings
    case Mode.StringEscape:
      if (c === 'u') return next(state, { mode: Mode.StringUnicode, count: 4 });
      return ESCAPES.has(c) ? next(state, { mode: Mode.String }) : null;
    case Mode.StringUnicode:
      if (!isHex(c)) return null;
      return next(state, state.count > 1 ? { count: state.count - 1 } : { mode: Mode.String, count: 0 });
    case Mode.NumberSign:
      if (c === '0') return next(state, { mode: Mode.NumberZero });
      return isDigit(c) ? next(state, { mode: Mode.NumberInteger, count: 1 }) : null;
    case Mode.NumberZero:
    case Mode.NumberInteger:
      if (isDigit(c)) return state.mode === Mode.NumberInteger ? moreDigits(state, MAX_NUMBER_DIGITS) : null; // no leading zeros
      if (c === '.') return next(state, { mode: Mode.NumberDot });
      if (c === 'e' || c === 'E') return next(state, { mode: Mode.NumberExponent });
      return endNumber(state, c);
    case Mode.NumberDot:
      return isDigit(c) ? next(state, { mode: Mode.NumberFraction, count: 1 }) : null;
    case Mode.NumberFraction:
      if (isDigit(c)) return moreDigits(state, MAX_NUMBER_DIGITS);
      if (c === 'e' || c === 'E') return next(state, { mode: Mode.NumberExponent });
      return endNumber(state, c);
    case Mode.NumberExponent:
      if (c === '+' || c === '-') return next(state, { mode: Mode.NumberExponentSign });
      return isDigit(c) ? next(state, { mode: Mode.NumberExponentDigits, count: 1 }) : null;
    case Mode.NumberExponentSign:
      return isDigit(c) ? next(state, { mode: Mode.NumberExponentDigits, count: 1 }) : null;
    case Mode.NumberExponentDigits:
      return isDigit(c) ? moreDigits(state, MAX_EXPONENT_DIGITS) : endNumber(state, c);
    case Mode.Literal:
      if (c !== state.literal[0]) return null;
      return state.literal.length > 1 ? next(state, { literal: state.literal.slice(1) }) : valueEnded(state);
    case Mode.AfterValue:
      return afterValue(state, c);
    case Mode.Done:
      return null;
  }
}

/** The state after all of `text`, or null as soon as a character is rejected. */
export function advanceText(state: JsonState, text: string): JsonState | null {
  let current: JsonState | null = state;
  for (const c of text) {
    current = advanceChar(current, c);
    if (current === null) return null;
  }
  return current;
}

/**
 * The shortest text that completes the value from `state` (e.g. `":0}` inside a key). Its length
 * is how many single-character tokens finishing needs; the budget steering makes it shrink.
 */
export function closingText(state: JsonState): string {
  let tail = '';
  switch (state.mode) {
    case Mode.Value:
      tail = state.stack === '' && state.rootObject ? '{}' : '0';
      break;
    case Mode.ValueOrArrayEnd:
    case Mode.KeyOrObjectEnd:
      tail = ''; // the closer below ends the empty container
      break;
    case Mode.Key:
      tail = '"":0';
      break;
    case Mode.Colon:
      tail = ':0';
      break;
    case Mode.String:
      tail = '"';
      break;
    case Mode.StringEscape:
      tail = 'n"';
      break;
    case Mode.StringUnicode:
      tail = `${'0'.repeat(state.count)}"`;
      break;
    case Mode.NumberSign:
    case Mode.NumberDot:
    case Mode.NumberExponent:
    case Mode.NumberExponentSign:
      tail = '0';
      break;
    case Mode.Literal:
      tail = state.literal;
      break;
    default:
      tail = '';
  }
  if (state.inKey && (state.mode === Mode.String || state.mode === Mode.StringEscape || state.mode === Mode.StringUnicode)) tail += ':0';
  const closers = [...state.stack]
    .reverse()
    .map((open) => (open === '{' ? '}' : ']'))
    .join('');
  return tail + closers;
}
