/**
 * The HTTP API: a Fastify app over a SandboxService. It authenticates, validates, maps wire
 * shapes to domain calls and renders results and errors; it owns no state of its own.
 */
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import Fastify, { LogController, type FastifyInstance, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import type { FastifyBaseLogger } from 'fastify';
import { StacyError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { VERSION } from '../core/version.js';
import type { Config } from '../config/types.js';
import type { SandboxService } from '../orchestrator/service.js';
import { type WorkerAuth, authenticateUser, authenticateWorker, scopeOf } from './auth.js';
import type { ApiContext } from './context.js';
import { installErrorHandling } from './errors.js';
import { fileRoutes } from './routes/files.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { providerRoutes, systemRoutes } from './routes/system.js';
import { templateRoutes } from './routes/templates.js';
import { quotaRoutes, workerRoutes } from './routes/workers.js';

export const API_PREFIX = '/api/v1';

export interface BuildAppOptions {
  service: SandboxService;
  config: Config;
  /** A pino logger; omitted → silent. */
  logger?: FastifyBaseLogger;
  /** Verifier for /worker/* credentials; omitted → every worker route answers 401. */
  workerAuth?: WorkerAuth;
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/** Builds the API app (not listening). Call `.listen()` or `.inject()` on the result. */
export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { service, config } = options;
  const app = Fastify({
    ...(options.logger === undefined ? { logger: false } : { loggerInstance: options.logger }),
    bodyLimit: config.server.bodyLimitBytes,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      const v = Array.isArray(given) ? given[0] : given;
      return v !== undefined && REQUEST_ID.test(v) ? v : newId('req');
    },
    logController: new LogController({ requestIdLogLabel: 'request_id', disableRequestLogging: true }),
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: true },
  });

  installValidators(app);
  installErrorHandling(app);
  installJsonForAnyContentType(app);

  app.decorateRequest('caller', null);
  app.decorateRequest('worker', null);
  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', String(req.id));
  });
  app.addHook('onResponse', async (req, reply) => {
    req.log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });

  installCors(app, config.server.corsAllowedOrigins);

  const ctx: ApiContext = { service, config, workerAuth: options.workerAuth, startedAt: Date.now(), streams: new Set(), closing: false };
  app.addHook('preClose', async () => {
    ctx.closing = true;
    for (const stream of ctx.streams) stream.abort(new StacyError('unavailable', 'the server is shutting down'));
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'StacyVM API', version: VERSION, description: 'Self-hosted sandbox infrastructure' },
      servers: [{ url: '/' }],
      components: {
        securitySchemes: {
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
          adminApiKey: { type: 'apiKey', in: 'header', name: 'X-Admin-API-Key' },
          workerToken: { type: 'apiKey', in: 'header', name: 'X-Worker-Token' },
        },
      },
    },
  });

  await app.register(
    async (api) => {
      api.addHook('onRequest', async (req) => {
        const path = routePath(req);
        const scope = scopeOf(path);
        if (scope === 'worker') {
          const params = req.params as { workerID?: string } | undefined;
          req.worker = await authenticateWorker(req, params?.workerID, ctx.workerAuth, config.worker.id);
        } else {
          req.caller = authenticateUser(req, scope, config.auth);
        }
      });
      // Bodies are optional on spawn-like routes; validate an absent body as an empty object.
      api.addHook('preValidation', async (req) => {
        if (req.body === undefined && (req.method === 'POST' || req.method === 'PUT')) req.body = {};
      });
      sandboxRoutes(api, ctx);
      fileRoutes(api, ctx);
      templateRoutes(api, ctx);
      providerRoutes(api, ctx);
      systemRoutes(api, ctx);
      workerRoutes(api, ctx);
      quotaRoutes(api, ctx);
      api.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
    },
    { prefix: API_PREFIX },
  );
  await app.ready();
  return app;
}

/** The matched route pattern relative to the API prefix, falling back to the raw path. */
function routePath(req: FastifyRequest): string {
  const url = req.routeOptions.url ?? req.url.split('?')[0] ?? '';
  return url.startsWith(API_PREFIX) ? url.slice(API_PREFIX.length) : url;
}

/**
 * Bodies are validated strictly (a string where a number belongs is a 400, never coerced);
 * query strings and path params arrive as text and are coerced to their declared types.
 */
function installValidators(app: FastifyInstance): void {
  const common = { allErrors: false, removeAdditional: true as const, useDefaults: true, strict: false };
  const bodyAjv = new Ajv.default({ ...common, coerceTypes: false });
  const textAjv = new Ajv.default({ ...common, coerceTypes: true });
  addFormats.default(bodyAjv);
  addFormats.default(textAjv);
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? bodyAjv : textAjv).compile(schema));
}

/**
 * curl and many scripts send JSON without a JSON content type; every body this API accepts is
 * JSON, so any content type is parsed as JSON (malformed → 400 bad_request).
 */
function installJsonForAnyContentType(app: FastifyInstance): void {
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch {
      const err = new SyntaxError('request body is not valid JSON') as SyntaxError & { statusCode: number };
      err.statusCode = 400;
      done(err, undefined);
    }
  });
}

/**
 * CORS for browser clients: only origins in `server.cors_allowed_origins` (or `*`) get the
 * headers; preflights are answered before authentication, as browsers send no credentials.
 */
function installCors(app: FastifyInstance, allowed: readonly string[]): void {
  if (allowed.length === 0) return;
  const any = allowed.includes('*');
  const permitted = (origin: string | undefined): origin is string => origin !== undefined && (any || allowed.includes(origin));
  app.addHook('onRequest', async (req, reply) => {
    const origin = req.headers.origin;
    if (!permitted(origin)) return;
    reply.header('access-control-allow-origin', origin);
    reply.header('vary', 'Origin');
    reply.header('access-control-expose-headers', 'X-Request-ID, Retry-After');
  });
  app.options(`${API_PREFIX}/*`, { schema: { hide: true } }, async (req, reply) => {
    if (!permitted(req.headers.origin)) return reply.code(204).send();
    return reply
      .code(204)
      .header('access-control-allow-methods', 'GET, POST, PUT, DELETE, OPTIONS')
      .header('access-control-allow-headers', 'Content-Type, X-API-Key, X-Admin-API-Key, X-User-ID, X-Request-ID')
      .header('access-control-max-age', '600')
      .send();
  });
}
