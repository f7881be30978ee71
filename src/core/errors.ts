/**
 * The one error catalog. Every failure that can reach a client is a StacyError with a stable
 * `code`; the HTTP status is derived from the code in exactly one place (`httpStatusOf`).
 * Callers branch on `code`, never on message text.
 */

export const ERROR_STATUS = {
  bad_request: 400,
  image_not_found: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  timeout: 408,
  conflict: 409,
  lease_conflict: 409,
  payload_too_large: 413,
  resource_limit: 429,
  no_eligible_worker: 429,
  provider_error: 500,
  internal: 500,
  unavailable: 503,
  remote_worker_rpc_unavailable: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class StacyError extends Error {
  readonly code: ErrorCode;
  /** Seconds a client should wait before retrying (sent as Retry-After), when known. */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryAfterSeconds?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StacyError';
    this.code = code;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  get status(): number {
    return httpStatusOf(this.code);
  }
}

export function httpStatusOf(code: ErrorCode): number {
  return ERROR_STATUS[code];
}

export function isStacyError(err: unknown, code?: ErrorCode): err is StacyError {
  return err instanceof StacyError && (code === undefined || err.code === code);
}

export const badRequest = (message: string): StacyError => new StacyError('bad_request', message);
export const notFound = (what: string, id: string): StacyError => new StacyError('not_found', `${what} ${JSON.stringify(id)} not found`);
export const conflict = (message: string): StacyError => new StacyError('conflict', message);
export const providerError = (message: string, cause?: unknown): StacyError =>
  new StacyError('provider_error', message, { cause });
export const timeoutError = (message: string): StacyError => new StacyError('timeout', message);
export const unavailable = (message: string): StacyError => new StacyError('unavailable', message);
export const resourceLimit = (message: string, retryAfterSeconds?: number): StacyError =>
  new StacyError('resource_limit', message, retryAfterSeconds === undefined ? undefined : { retryAfterSeconds });
