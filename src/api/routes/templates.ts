import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { badRequest } from '../../core/errors.js';
import { type ApiContext, callerOf } from '../context.js';
import {
  ErrorBody,
  SandboxWire,
  SpawnBody,
  type SpawnBodyT,
  StatusBody,
  TemplateBody,
  type TemplateBodyT,
  TemplateWire,
  sandboxOut,
  spawnIn,
  templateIn,
  templateOut,
} from '../wire.js';

const NameParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }) });
const errors = { '4xx': ErrorBody, '5xx': ErrorBody };

export function templateRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { service } = ctx;
  const preview = ctx.config.server.previewDomain;

  app.post<{ Body: TemplateBodyT }>(
    '/templates',
    { schema: { tags: ['templates'], body: TemplateBody, response: { 201: TemplateWire, ...errors } } },
    async (req, reply) => {
      if (req.body.name === undefined) throw badRequest('name: required');
      const t = await service.createTemplate(templateIn(req.body.name, req.body));
      return reply.code(201).send(templateOut(t));
    },
  );

  app.get('/templates', { schema: { tags: ['templates'], response: { 200: Type.Array(TemplateWire), ...errors } } }, async () =>
    (await service.listTemplates()).map(templateOut),
  );

  app.get<{ Params: { name: string } }>(
    '/templates/:name',
    { schema: { tags: ['templates'], params: NameParams, response: { 200: TemplateWire, ...errors } } },
    async (req) => templateOut(await service.getTemplate(req.params.name)),
  );

  app.put<{ Params: { name: string }; Body: TemplateBodyT }>(
    '/templates/:name',
    { schema: { tags: ['templates'], params: NameParams, body: TemplateBody, response: { 200: TemplateWire, ...errors } } },
    async (req) => {
      if (req.body.name !== undefined && req.body.name !== req.params.name) throw badRequest('name: cannot rename a template');
      return templateOut(await service.updateTemplate(req.params.name, templateIn(req.params.name, req.body)));
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/templates/:name',
    { schema: { tags: ['templates'], params: NameParams, response: { 200: StatusBody, ...errors } } },
    async (req) => {
      await service.deleteTemplate(req.params.name);
      return { status: 'deleted' };
    },
  );

  app.post<{ Params: { name: string }; Body: SpawnBodyT }>(
    '/templates/:name/spawn',
    { schema: { tags: ['templates'], params: NameParams, body: SpawnBody, response: { 201: SandboxWire, ...errors } } },
    async (req, reply) => {
      const sb = await service.spawnFromTemplate(req.params.name, spawnIn(req.body), callerOf(req));
      return reply.code(201).send(sandboxOut(sb, preview));
    },
  );
}
