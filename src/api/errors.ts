/**
 * The one error mapper: every failure that leaves the API is `{code, message}` with the status
 * the catalog assigns. Framework errors (validation, JSON parsing, body limit, unknown routes)
 * are translated into catalog codes; anything unrecognised is a 500 `internal` whose details
 * stay in the server log.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { type ErrorCode, StacyError, httpStatusOf, isStacyError } from '../core/errors.js';

export interface ErrorResponse {
  status: number;
  body: { code: string; message: string };
  retryAfterSeconds?: number;
}

/** Default back-off advertised on a 429 when the failing component did not say. */
const DEFAULT_RETRY_AFTER_SECONDS = 1;

interface FrameworkError {
  statusCode?: number;
  code?: string;
  message?: string;
  validation?: unknown;
  validationContext?: string;
}

/** Maps any thrown value to the status and `{code, message}` body a client sees. */
export function toErrorResponse(err: unknown): ErrorResponse {
  if (isStacyError(err)) {
    const res: ErrorResponse = { status: err.status, body: { code: err.code, message: err.message } };
    if (err.status === 429) res.retryAfterSeconds = err.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS;
    else if (err.retryAfterSeconds !== undefined) res.retryAfterSeconds = err.retryAfterSeconds;
    return res;
  }
  const fe = (typeof err === 'object' && err !== null ? err : {}) as FrameworkError;
  if (fe.validation !== undefined) {
    return simple('bad_request', `invalid ${fe.validationContext ?? 'request'}: ${stripContext(fe.message ?? 'invalid input')}`);
  }
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return simple('payload_too_large', 'request body is larger than the configured limit');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return simple('bad_request', 'request body is not valid JSON');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return simple('bad_request', 'unsupported content type; send application/json');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return simple('bad_request', 'content-length does not match the body');
    default:
      break;
  }
  if (err instanceof SyntaxError && fe.statusCode === 400) return simple('bad_request', 'request body is not valid JSON');
  const sc = fe.statusCode;
  if (typeof sc === 'number' && sc >= 400 && sc < 500) {
    const code: ErrorCode = sc === 404 ? 'not_found' : sc === 413 ? 'payload_too_large' : sc === 401 ? 'unauthorized' : sc === 403 ? 'forbidden' : 'bad_request';
    return { status: httpStatusOf(code), body: { code, message: fe.message ?? code } };
  }
  return simple('internal', 'internal server error');
}

function simple(code: ErrorCode, message: string): ErrorResponse {
  return { status: httpStatusOf(code), body: { code, message } };
}

/** Fastify prefixes "body/" etc.; the context already says which part was wrong. */
function stripContext(message: string): string {
  return message.replace(/^(body|querystring|params|headers)\/?/, '').replace(/^ /, '') || message;
}

/** Writes an error response on a reply that has not been sent yet. */
export function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  const res = toErrorResponse(err);
  if (res.retryAfterSeconds !== undefined) reply.header('retry-after', String(Math.max(0, Math.ceil(res.retryAfterSeconds))));
  return reply.code(res.status).type('application/json; charset=utf-8').send(res.body);
}

/** Installs the error and not-found handlers on the app. */
export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const res = toErrorResponse(err);
    if (res.status >= 500) request.log.error({ err }, 'request failed');
    else request.log.debug({ code: res.body.code }, res.body.message);
    return sendError(reply, err);
  });
  app.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) =>
    sendError(reply, new StacyError('not_found', `route ${request.method} ${request.url.split('?')[0] ?? ''} not found`)),
  );
}
