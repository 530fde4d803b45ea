/**
 * Schema-shaped JSON for response_format json_schema: an object schema compiles to a fixed
 * skeleton — every declared property, in declaration order, written compactly
 * (`{"a":…,"b":…}`) — with a typed slot for each leaf value. Slots are checked by the JSON prefix
 * validator (json-constraint.ts) inside a private array wrapper, so a number knows where it may
 * end; the slot's type fixes its first character (string `"`, number/integer digit or `-`,
 * boolean `t`/`f`, null `n`, array `[`), integers take no fraction or exponent, and `enum`/`const`
 * of strings, numbers and booleans allow only the listed values.
 *
 * Supported: nested objects with `properties` (an object without them is any object, or exactly
 * `{}` under additionalProperties false), leaf `type`s (a single type or `["x","null"]` taken
 * as x, as is anyOf/oneOf [x, null]), `enum`/`const`. Arrays of strings, numbers, integers or
 * booleans have typed elements; other arrays are any JSON array; a property without a usable type
 * is any JSON value. Anything else at the root (a non-object schema, `$ref`,
 * `anyOf`…, or an object root without properties) compiles to null and the caller falls back to
 * plain json_object. Extra properties are never generated; optional ones always are.
 *
 * Compilation recurses once per nesting level (properties, items, anyOf/oneOf), so a schema nested
 * deeper than MAX_SCHEMA_DEPTH is refused with a 400 rather than overflowing the stack; falling back
 * to json_object would silently ignore a schema the caller meant.
 */

import { invalidRequest } from '../errors.ts';
import { advanceChar, closingText, expectsValue, initialJsonState, isJsonComplete, type JsonState } from './json-constraint.ts';
import { jsonObjectConstraint, type TextConstraint } from './json-mode.ts';

/** Deepest schema nesting compiled: beyond any schema an answer is shaped by, far below the stack's limit. */
export const MAX_SCHEMA_DEPTH = 64;

function checkDepth(depth: number): void {
  if (depth > MAX_SCHEMA_DEPTH) {
    throw invalidRequest(
      `response_format.json_schema.schema nests deeper than ${MAX_SCHEMA_DEPTH} levels (properties, items, anyOf/oneOf)`,
      'response_format',
    );
  }
}

type SlotKind = 'string' | 'number' | 'integer' | 'boolean' | 'null' | 'array' | 'object' | 'any';
/** `items`: for an array slot, the kind every element must be (scalar kinds only; others unchecked). */
type Slot = { slot: SlotKind; nullable: boolean; items?: SlotKind };
type Step = { literal: string } | Slot | { choices: string[] };

export interface SchemaState {
  readonly step: number;
  /** Characters of the current literal already written, or the text of the current enum slot. */
  readonly offset: number;
  readonly text: string;
  /** The value in the current slot, wrapped as the first element of an array. */
  readonly value: JsonState | null;
}

const FIRST_CHARS: Record<SlotKind, string | null> = {
  string: '"',
  number: '-0123456789',
  integer: '-0123456789',
  boolean: 'tf',
  null: 'n',
  array: '[',
  object: '{',
  any: null,
};
const SHORTEST: Record<SlotKind, string> = {
  string: '""',
  number: '0',
  integer: '0',
  boolean: 'true',
  null: 'null',
  array: '[]',
  object: '{}',
  any: '0',
};

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The slot for a leaf schema: `["x","null"]` is an x slot that also takes null; other unions are any value. */
function slot(schema: Record<string, unknown>, depth: number): Slot {
  checkDepth(depth);
  // anyOf/oneOf [X, {type: "null"}] (how zod writes .nullable()) is a nullable X.
  const union = Array.isArray(schema.anyOf) ? schema.anyOf : Array.isArray(schema.oneOf) ? schema.oneOf : null;
  if (union !== null) {
    const others = union.filter((option) => !(isRecord(option) && option.type === 'null'));
    if (others.length === 1 && isRecord(others[0]) && others.length < union.length)
      return { ...slot(others[0], depth + 1), nullable: true };
    return { slot: 'any', nullable: true };
  }
  let type = schema.type;
  let nullable = false;
  if (Array.isArray(type)) {
    const others = type.filter((t) => t !== 'null');
    nullable = others.length < type.length;
    type = others.length === 1 ? others[0] : others.length === 0 ? 'null' : 'any';
  }
  const kind: SlotKind = typeof type === 'string' && type in FIRST_CHARS ? (type as SlotKind) : 'any';
  if (kind === 'array' && isRecord(schema.items)) {
    const items = slot(schema.items, depth + 1).slot;
    if (['string', 'number', 'integer', 'boolean'].includes(items)) return { slot: kind, nullable, items };
  }
  return { slot: kind, nullable };
}

/** Appends the steps for `schema`'s value; false when it cannot be compiled. */
function compileValue(schema: unknown, steps: Step[], depth: number): boolean {
  checkDepth(depth);
  if (!isRecord(schema)) {
    // `true` and a missing schema accept any value; `false` and non-objects cannot be shaped.
    if (schema !== true && schema !== undefined) return false;
    steps.push({ slot: 'any', nullable: true });
    return true;
  }
  const values = 'const' in schema ? [schema.const] : Array.isArray(schema.enum) ? schema.enum : null;
  if (values !== null) {
    if (values.length === 0 || values.some((v) => !['string', 'number', 'boolean'].includes(typeof v))) return false;
    steps.push({ choices: values.map((v) => JSON.stringify(v)) });
    return true;
  }
  if (schema.type === 'object' && isRecord(schema.properties)) return compileObject(schema, steps, depth);
  steps.push(slot(schema, depth));
  return true;
}

function compileObject(schema: Record<string, unknown>, steps: Step[], depth: number): boolean {
  const properties = isRecord(schema.properties) ? Object.entries(schema.properties) : [];
  if (properties.length === 0) {
    // No declared properties: exactly {} when nothing else is allowed, otherwise any object.
    steps.push(schema.additionalProperties === false ? { literal: '{}' } : { slot: 'object', nullable: false });
    return true;
  }
  for (const [index, [name, property]] of properties.entries()) {
    steps.push({ literal: `${index === 0 ? '{' : ','}${JSON.stringify(name)}:` });
    if (!compileValue(property, steps, depth + 1)) return false;
  }
  steps.push({ literal: '}' });
  return true;
}

/** Merges neighbouring literals so each literal step is followed by a slot or the end. */
function mergeLiterals(steps: Step[]): Step[] {
  const merged: Step[] = [];
  for (const step of steps) {
    const last = merged.at(-1);
    if (last && 'literal' in last && 'literal' in step) merged[merged.length - 1] = { literal: last.literal + step.literal };
    else merged.push(step);
  }
  return merged;
}

const WRAPPED_START = advanceChar(initialJsonState({ rootObject: false }), '[')!;

/** The constraint for `schema`, or null when it is not an object schema this module can shape; a 400 past MAX_SCHEMA_DEPTH. */
export function compileJsonSchema(schema: unknown): TextConstraint<SchemaState> | null {
  // A root without properties is better served by the free json_object constraint (and a slot must be followed by a literal).
  if (!isRecord(schema) || schema.type !== 'object' || !isRecord(schema.properties) || Object.keys(schema.properties).length === 0)
    return null;
  const raw: Step[] = [];
  if (!compileObject(schema, raw, 1)) return null;
  const steps = mergeLiterals(raw);

  // The shortest text from the start of each step to the end.
  const shortestFrom: string[] = new Array<string>(steps.length + 1).fill('');
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i]!;
    const own =
      'literal' in step
        ? step.literal
        : 'slot' in step
          ? SHORTEST[step.slot]
          : step.choices.reduce((a, b) => (b.length < a.length ? b : a));
    shortestFrom[i] = own + shortestFrom[i + 1]!;
  }

  const enter = (step: number): SchemaState => ({ step, offset: 0, text: '', value: null });

  /** Whether the slot's value is a complete JSON value (its wrapper could close now). */
  const slotComplete = (value: JsonState | null): boolean => {
    if (value === null) return false;
    const closed = advanceChar(value, ']');
    return closed !== null && isJsonComplete(closed);
  };

  const advanceOne = (state: SchemaState, c: string): SchemaState | null => {
    const step = steps[state.step];
    if (step === undefined) return null; // complete: nothing may follow
    if ('literal' in step) {
      if (step.literal[state.offset] !== c) return null;
      return state.offset + 1 === step.literal.length ? enter(state.step + 1) : { ...state, offset: state.offset + 1 };
    }
    if ('choices' in step) {
      const text = state.text + c;
      if (step.choices.includes(text)) return enter(state.step + 1);
      return step.choices.some((choice) => choice.startsWith(text)) ? { ...state, text } : null;
    }
    // A typed slot: a complete value may end where the next literal begins.
    if (slotComplete(state.value)) {
      const after = advanceOne(enter(state.step + 1), c);
      if (after !== null) return after;
    }
    if (state.value === null) {
      const first = FIRST_CHARS[step.slot];
      if (first !== null ? !(first.includes(c) || (step.nullable && c === 'n')) : /\s/u.test(c)) return null;
    }
    const integers = step.slot === 'integer' || step.items === 'integer';
    if (integers && (c === '.' || c === 'e' || c === 'E')) return null;
    // An element of a typed array starts with its kind's first character.
    if (
      step.items &&
      state.value?.stack === '[[' &&
      expectsValue(state.value) &&
      !/[\s\]]/u.test(c) &&
      !FIRST_CHARS[step.items]!.includes(c)
    )
      return null;
    // The value must stay the wrapper's only element: once complete at the wrapper's level, no ',', ']' or blanks.
    if (state.value?.stack === '[' && slotComplete(state.value) && /[,\]\s]/u.test(c)) return null;
    const value = advanceChar(state.value ?? WRAPPED_START, c);
    if (value === null || value.stack === '') return null;
    return { ...state, value };
  };

  return {
    id: `json_schema:${JSON.stringify(steps)}`,
    initial: enter(0),
    advance(state, text) {
      let current: SchemaState | null = state;
      for (const c of text) {
        current = advanceOne(current, c);
        if (current === null) return null;
      }
      return current;
    },
    closing(state) {
      const step = steps[state.step];
      if (step === undefined) return '';
      const rest = shortestFrom[state.step + 1]!;
      if ('literal' in step) return step.literal.slice(state.offset) + rest;
      if ('choices' in step) {
        const options = step.choices.filter((choice) => choice.startsWith(state.text));
        return options.reduce((a, b) => (b.length < a.length ? b : a)).slice(state.text.length) + rest;
      }
      if (state.value === null) return SHORTEST[step.slot] + rest;
      return closingText(state.value).slice(0, -1) + rest; // the wrapper's ']' is not part of the answer
    },
    isComplete: (state) => state.step >= steps.length,
  };
}

/** The constraint for a request: the schema's shape when it compiles, otherwise any JSON object. */
export function responseConstraint(schema: unknown): TextConstraint<unknown> {
  return (schema === undefined ? null : compileJsonSchema(schema)) ?? (jsonObjectConstraint as TextConstraint<unknown>);
}
