import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { badRequest } from '../../core/errors.js';
import { normalizeSandboxPath } from '../../core/paths.js';
import { type ApiContext, callerOf } from '../context.js';
import { ErrorBody, FileEntryWire, FileWriteBody, StatusBody, fileEntryOut, modeIn } from '../wire.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });
const PathQuery = Type.Object({ path: Type.String() });
const errors = { '4xx': ErrorBody, '5xx': ErrorBody };

/**
 * Paths are checked here as well as in the orchestrator so a traversal attempt is refused at
 * the edge; the raw string is still what the service receives.
 */
function checkPath(path: string, field = 'path'): string {
  normalizeSandboxPath(path, field);
  return path;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export function fileRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;

  app.post<{ Params: { id: string }; Body: Static<typeof FileWriteBody> }>(
    '/sandboxes/:id/files',
    { schema: { tags: ['files'], params: IdParams, body: FileWriteBody, response: { 200: StatusBody, ...errors } } },
    async (req) => {
      const { path, content, mode, encoding } = req.body;
      let bytes: Buffer;
      if (encoding === 'base64') {
        const compact = content.replace(/\s+/g, '');
        if (!BASE64.test(compact) || compact.length % 4 === 1) throw badRequest('content: not valid base64');
        bytes = Buffer.from(compact, 'base64');
      } else {
        bytes = Buffer.from(content, 'utf8');
      }
      await service.writeFile(req.params.id, checkPath(path), bytes, mode === undefined ? undefined : modeIn(mode), callerOf(req));
      return { status: 'written' };
    },
  );

  app.get<{ Params: { id: string }; Querystring: { path: string } }>(
    '/sandboxes/:id/files',
    { schema: { tags: ['files'], params: IdParams, querystring: PathQuery, response: errors } },
    async (req, reply) => {
      const stream = await service.readFile(req.params.id, checkPath(req.query.path), callerOf(req));
      return reply.type('application/octet-stream').send(stream);
    },
  );

  app.delete<{ Params: { id: string }; Querystring: { path: string; recursive?: boolean } }>(
    '/sandboxes/:id/files',
    {
      schema: {
        tags: ['files'],
        params: IdParams,
        querystring: Type.Object({ path: Type.String(), recursive: Type.Optional(Type.Boolean()) }),
        response: { 200: StatusBody, ...errors },
      },
    },
    async (req) => {
      await service.deleteFile(req.params.id, checkPath(req.query.path), req.query.recursive ?? false, callerOf(req));
      return { status: 'deleted' };
    },
  );

  app.get<{ Params: { id: string }; Querystring: { path?: string } }>(
    '/sandboxes/:id/files/list',
    {
      schema: {
        tags: ['files'],
        params: IdParams,
        querystring: Type.Object({ path: Type.Optional(Type.String()) }),
        response: { 200: Type.Array(FileEntryWire), ...errors },
      },
    },
    async (req) => (await service.listFiles(req.params.id, checkPath(req.query.path ?? '/'), callerOf(req))).map(fileEntryOut),
  );

  app.get<{ Params: { id: string }; Querystring: { path: string } }>(
    '/sandboxes/:id/files/stat',
    { schema: { tags: ['files'], params: IdParams, querystring: PathQuery, response: { 200: FileEntryWire, ...errors } } },
    async (req) => fileEntryOut(await service.stat(req.params.id, checkPath(req.query.path), callerOf(req))),
  );

  app.get<{ Params: { id: string }; Querystring: { pattern: string } }>(
    '/sandboxes/:id/files/glob',
    {
      schema: {
        tags: ['files'],
        params: IdParams,
        querystring: Type.Object({ pattern: Type.String({ minLength: 1, maxLength: 4096 }) }),
        response: { 200: Type.Array(Type.String()), ...errors },
      },
    },
    async (req) => {
      const { pattern } = req.query;
      if (pattern.includes('\0')) throw badRequest('pattern: must not contain NUL bytes');
      if (pattern.split('/').includes('..')) throw badRequest('pattern: ".." is not allowed');
      return service.glob(req.params.id, pattern, callerOf(req));
    },
  );

  app.post<{ Params: { id: string }; Body: { old_path: string; new_path: string } }>(
    '/sandboxes/:id/files/move',
    {
      schema: {
        tags: ['files'],
        params: IdParams,
        body: Type.Object({ old_path: Type.String(), new_path: Type.String() }),
        response: { 200: StatusBody, ...errors },
      },
    },
    async (req) => {
      await service.moveFile(req.params.id, checkPath(req.body.old_path, 'old_path'), checkPath(req.body.new_path, 'new_path'), callerOf(req));
      return { status: 'moved' };
    },
  );

  app.post<{ Params: { id: string }; Body: { path: string; mode: string } }>(
    '/sandboxes/:id/files/chmod',
    {
      schema: {
        tags: ['files'],
        params: IdParams,
        body: Type.Object({ path: Type.String(), mode: Type.String() }),
        response: { 200: StatusBody, ...errors },
      },
    },
    async (req) => {
      await service.chmod(req.params.id, checkPath(req.body.path), modeIn(req.body.mode), callerOf(req));
      return { status: 'changed' };
    },
  );
}
