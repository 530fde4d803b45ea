/**
 * Turns a non-2xx response into an APICallError. The SDK marks 408/409/429/≥500 retryable and its retry loop reads
 * `retry-after-ms` / `Retry-After` from the error's response headers, so nothing else is needed here. A body that is
 * not Mistral's envelope (e.g. a proxy's HTML 502) still becomes an APICallError, with the status text as message.
 */
import { createJsonErrorResponseHandler } from '@ai-sdk/provider-utils';
import { siroccoErrorBodySchema } from './sirocco-api.ts';

export const siroccoFailedResponseHandler = createJsonErrorResponseHandler({
  errorSchema: siroccoErrorBodySchema,
  errorToMessage: (data) => data.message,
});
