/**
 * An object schema becomes a skeleton of its properties with typed value slots: texts of that shape
 * are accepted character by character, anything else is rejected at its first wrong character,
 * and the shortest completion from any point yields JSON that matches the schema.
 */
import { describe, expect, it } from 'vitest';
import { SidecarError } from '../errors.ts';
import { compileJsonSchema, MAX_SCHEMA_DEPTH } from './json-schema-constraint.ts';

const schema = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    age: { type: 'integer' },
    score: { type: ['number', 'null'] },
    ok: { type: 'boolean' },
    mood: { enum: ['happy', 'sad'] },
    tags: { type: 'array', items: { type: 'string' } },
    counts: { type: 'array', items: { type: 'integer' } },
    maybe: { anyOf: [{ type: 'integer' }, { type: 'null' }] },
    inner: { type: 'object', properties: { x: { type: 'number' } } },
    free: { type: 'object' },
    extra: {},
  },
  required: ['name'],
};
const constraint = compileJsonSchema(schema)!;
const accepts = (text: string) => constraint.advance(constraint.initial, text) !== null;

describe('compileJsonSchema', () => {
  it('accepts the schema shape with values of the right types, and completes at the closing brace', () => {
    const text =
      '{"name":"Ada \\"A\\"","age":-36,"score":1.5e3,"ok":false,"mood":"sad","tags":["a", "b"],"counts":[1,-2],"maybe":null,"inner":{"x":0.25},"free":{"k":[1,{}]},"extra":{"any":[null]}}';
    const state = constraint.advance(constraint.initial, text)!;
    expect(state).not.toBeNull();
    expect(constraint.isComplete(state)).toBe(true);
    expect(constraint.advance(state, ' ')).toBeNull();
  });

  it.each([
    ['a property out of order', '{"age"'],
    ['a wrong value type', '{"name":1'],
    ['a fraction in an integer', '{"name":"","age":1.'],
    ['a value not in the enum', '{"name":"","age":1,"score":null,"ok":true,"mood":"angry"'],
    ['a second element after a value', '{"name":"a",'.replace('",', '","x"]')],
    ['blanks around a value', '{"name": "a"'],
    ['an element of the wrong type', '{"name":"","age":1,"score":null,"ok":true,"mood":"sad","tags":["a",1'],
    ['a fraction in an integer array', '{"name":"","age":1,"score":null,"ok":true,"mood":"sad","tags":[],"counts":[1.'],
    ['a string in a nullable integer', '{"name":"","age":1,"score":null,"ok":true,"mood":"sad","tags":[],"counts":[],"maybe":"'],
    ['a literal that is not a boolean', '{"name":"","age":1,"score":null,"ok":nul'],
  ])('rejects %s', (_name, text) => expect(accepts(text)).toBe(false));

  it.each([
    '',
    '{"na',
    '{"name":"Ad',
    '{"name":"A","age":-',
    '{"name":"A","age":4',
    '{"name":"A","age":4,"score":1e',
    '{"name":"A","age":4,"score":null,"ok":t',
    '{"name":"A","age":4,"score":null,"ok":true,"mood":"h',
  ])('completes %s into JSON that fits the schema', (prefix) => {
    const state = constraint.advance(constraint.initial, prefix)!;
    const completed = prefix + constraint.closing(state);
    expect(constraint.isComplete(constraint.advance(constraint.initial, completed)!)).toBe(true);
    const value = JSON.parse(completed) as Record<string, unknown>;
    expect(Object.keys(value)).toEqual(Object.keys(schema.properties));
    expect(typeof value.name).toBe('string');
    expect(Number.isInteger(value.age)).toBe(true);
    expect(['happy', 'sad']).toContain(value.mood);
  });

  it('declines schemas it cannot shape (non-object roots), so the caller falls back to json_object', () => {
    expect(compileJsonSchema({ type: 'array' })).toBeNull();
    expect(compileJsonSchema({ anyOf: [{ type: 'object' }] })).toBeNull();
    expect(compileJsonSchema({ type: 'object', properties: { a: { enum: [{}] } } })).toBeNull();
    expect(compileJsonSchema({ type: 'object' })).toBeNull();
  });

  it('refuses a schema nested past MAX_SCHEMA_DEPTH with a 400, however deep, and compiles one at the limit', () => {
    const nested = (depth: number, leaf: unknown, wrap: (inner: unknown) => unknown) => {
      let schema = leaf;
      for (let level = 0; level < depth; level++) schema = wrap(schema);
      return schema;
    };
    const objects = (depth: number) => nested(depth, { type: 'string' }, (inner) => ({ type: 'object', properties: { a: inner } }));
    expect(compileJsonSchema(objects(MAX_SCHEMA_DEPTH - 1))).not.toBeNull();
    const tooDeep = [
      objects(50_000),
      { type: 'object', properties: { a: nested(50_000, { type: 'string' }, (inner) => ({ anyOf: [inner, { type: 'null' }] })) } },
      { type: 'object', properties: { a: nested(50_000, { type: 'string' }, (inner) => ({ type: 'array', items: inner })) } },
    ];
    for (const schema of tooDeep) {
      const error = (() => {
        try {
          compileJsonSchema(schema);
        } catch (thrown) {
          return thrown;
        }
      })();
      expect(error).toBeInstanceOf(SidecarError);
      expect(error).toMatchObject({ status: 400, param: 'response_format', message: expect.stringMatching(/deeper than 64 levels/) });
    }
  });
});
