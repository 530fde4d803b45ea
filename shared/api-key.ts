/**
 * What the edge accepts as an API key's value when one is provisioned rather than generated (`POST /admin/keys`
 * with `key`: `sirocco keys create --key`, `npm start`'s SIROCCO_DEV_KEY). One rule, so the CLI refuses a key the
 * edge would refuse before starting anything.
 */
import * as z from 'zod';

export const API_KEY_LENGTH = { min: 20, max: 256 } as const;

export const ApiKeyValueSchema = z
  .string()
  .min(API_KEY_LENGTH.min)
  .max(API_KEY_LENGTH.max)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');
