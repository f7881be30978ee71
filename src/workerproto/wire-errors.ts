/**
 * Errors cross the RPC boundary as `{code, message}` with a catalog code, so the control plane
 * rethrows exactly the StacyError the worker raised (a worker's `not_found` stays a 404, its
 * `lease_conflict` a 409) and never has to read message text.
 */
import { ERROR_STATUS, StacyError, type ErrorCode } from '../core/errors.js';

export interface WireError {
  code: ErrorCode;
  message: string;
  /** Seconds before a retry makes sense, when the worker knows. */
  retry_after_seconds?: number;
}

/** Maps any thrown value to a wire error; non-StacyErrors become `internal` without their details. */
export function toWireError(err: unknown): WireError {
  if (err instanceof StacyError) {
    const wire: WireError = { code: err.code, message: err.message };
    if (err.retryAfterSeconds !== undefined) wire.retry_after_seconds = err.retryAfterSeconds;
    return wire;
  }
  // Unexpected failures may carry host paths or internals; the worker logs them, the wire gets none.
  return { code: 'internal', message: 'internal worker error' };
}

/** Rebuilds the StacyError a worker reported; a code outside the catalog becomes `internal`. */
export function fromWireError(wire: { code: string; message: string; retry_after_seconds?: number }): StacyError {
  const code: ErrorCode = isErrorCode(wire.code) ? wire.code : 'internal';
  const message = code === wire.code ? wire.message : `worker reported unknown error code ${JSON.stringify(wire.code)}: ${wire.message}`;
  return new StacyError(code, message, wire.retry_after_seconds === undefined ? undefined : { retryAfterSeconds: wire.retry_after_seconds });
}

/** True when `code` is in the error catalog. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_STATUS, code);
}
