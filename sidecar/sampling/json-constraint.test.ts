/**
 * The JSON prefix validator accepts exactly the prefixes of JSON texts, rejects a text at its first
 * impossible character, knows when the root value is complete, caps whitespace runs, and always
 * knows the shortest text that completes what it has seen.
 */
import { describe, expect, it } from 'vitest';
import {
  advanceText,
  closingText,
  initialJsonState,
  isJsonComplete,
  MAX_EXPONENT_DIGITS,
  MAX_NUMBER_DIGITS,
  MAX_WHITESPACE_RUN,
} from './json-constraint.ts';

const object = () => initialJsonState({ rootObject: true });
const anyValue = () => initialJsonState({ rootObject: false });
const accepts = (text: string, start = object()) => advanceText(start, text) !== null;

const validObjects = [
  '{}',
  '{"a":1}',
  '{ "a" : [1, -2.5e+3, 0, 0.25E-2, true, false, null, "x"], "b": {"c": {}} }',
  '{"esc":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00"}',
  '{"unicode":"héllo ☃ 😀"}',
  '{"nested":[[[]],[{}],[{"k":[0]}]]}',
];

describe('valid JSON', () => {
  it.each(validObjects)('accepts every prefix of %s and completes exactly at its end', (text) => {
    JSON.parse(text); // the fixture itself is valid JSON
    let state = object();
    const chars = [...text];
    chars.forEach((c, index) => {
      const after = advanceText(state, c);
      expect(after, `rejected ${JSON.stringify(c)} at ${index}`).not.toBeNull();
      state = after!;
      expect(isJsonComplete(state)).toBe(index === chars.length - 1);
    });
  });

  it('accepts any root value when the root need not be an object', () => {
    for (const text of ['[1,2]', '"s"', 'true', 'null']) expect(isJsonComplete(advanceText(anyValue(), text)!)).toBe(true);
    expect(accepts('-12.5e3', anyValue())).toBe(true);
  });
});

describe('invalid JSON', () => {
  it.each([
    ['a bare word', '{a'],
    ['a trailing comma before }', '{"a":1,}'],
    ['a trailing comma before ]', '{"a":[1,]}'],
    ['a missing colon', '{"a" 1'],
    ['a mismatched bracket', '{"a":[1}'],
    ['a leading zero', '{"a":01'],
    ['a bare minus', '{"a":-}'],
    ['a dot without digits', '{"a":1.}'],
    ['an exponent without digits', '{"a":1e}'],
    ['a misspelt literal', '{"a":tru }'],
    ['an unknown escape', '{"a":"\\x"}'],
    ['a short unicode escape', '{"a":"\\u12g4"}'],
    ['a raw newline in a string', '{"a":"line\nbreak"}'],
    ['single quotes', "{'a':1}"],
    ['a second root value', '{}{}'],
  ])('rejects %s', (_name, text) => {
    expect(accepts(text)).toBe(false);
    expect(() => JSON.parse(text)).toThrow();
  });

  it('in json_object mode rejects a non-object root and anything after the root object (the answer ends there)', () => {
    expect(accepts('[1]')).toBe(false);
    expect(accepts('"s"')).toBe(false);
    expect(accepts('{} ')).toBe(false);
  });

  it(`allows at most ${MAX_WHITESPACE_RUN} whitespace characters in a row outside strings`, () => {
    expect(accepts(`${' '.repeat(MAX_WHITESPACE_RUN)}{`)).toBe(true);
    expect(accepts(' '.repeat(MAX_WHITESPACE_RUN + 1))).toBe(false);
    expect(accepts(`{${'\n'.repeat(MAX_WHITESPACE_RUN + 1)}`)).toBe(false);
    expect(accepts(`{"a": "${' '.repeat(50)}"`)).toBe(true); // inside strings spaces are content
  });
});

describe('number size', () => {
  it(`caps integer and fraction parts at ${MAX_NUMBER_DIGITS} digits and exponents at ${MAX_EXPONENT_DIGITS}, so every number is a finite double`, () => {
    const digits = '9'.repeat(MAX_NUMBER_DIGITS);
    expect(accepts(`{"a":-${digits}.${digits}e+${'9'.repeat(MAX_EXPONENT_DIGITS)}}`)).toBe(true);
    expect(Number.isFinite(JSON.parse(`{"a":-${digits}.${digits}e+${'9'.repeat(MAX_EXPONENT_DIGITS)}}`).a)).toBe(true);
    expect(accepts(`{"a":${digits}9`)).toBe(false);
    expect(accepts(`{"a":1.${digits}9`)).toBe(false);
    expect(accepts(`{"a":1e${'9'.repeat(MAX_EXPONENT_DIGITS + 1)}`)).toBe(false);
  });
});

describe('closingText', () => {
  it.each([
    '',
    '{',
    '{"',
    '{"ke',
    '{"key\\',
    '{"key\\u1',
    '{"k"',
    '{"k":',
    '{"k":-',
    '{"k":1.',
    '{"k":1e',
    '{"k":1e+',
    '{"k":12',
    '{"k":tr',
    '{"k":[',
    '{"k":[1,',
    '{"k":{"j":"va',
    '{"k":1,',
  ])('completes %s into valid JSON', (prefix) => {
    const state = advanceText(object(), prefix)!;
    expect(state).not.toBeNull();
    const completed = advanceText(state, closingText(state))!;
    expect(isJsonComplete(completed)).toBe(true);
    expect(() => JSON.parse(prefix + closingText(state))).not.toThrow();
  });

  it('is empty once the value is complete, and as long as the open containers otherwise', () => {
    expect(closingText(advanceText(object(), '{"a":[1]}')!)).toBe('');
    expect(closingText(advanceText(object(), '{"a":[{"b":[')!)).toBe(']}]}');
  });
});
