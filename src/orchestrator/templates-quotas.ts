/**
 * Templates (named spawn defaults) and per-owner quotas: the admin-managed records that shape
 * what a spawn gets and how many an owner may have.
 */
import { formatDuration } from '../core/duration.js';
import { badRequest, notFound } from '../core/errors.js';
import { type QuotaRecord, type SandboxRecord, type TemplateRecord, ACTIVE_SANDBOX_STATES } from '../core/types.js';
import type { Caller, QuotaUsage, SpawnRequest, TemplateInput } from './service.js';
import { checkOwnerId, checkTemplate, checkTemplateName } from './validate.js';
import type { OrchestratorContext } from './context.js';
import type { SandboxLifecycle } from './lifecycle.js';

/** CRUD for templates and quotas, and spawning from a template. */
export class TemplatesAndQuotas {
  constructor(private readonly ctx: OrchestratorContext, private readonly lifecycle: SandboxLifecycle) {}

  // ---------------------------------------------------------------- templates

  createTemplate(input: TemplateInput): Promise<TemplateRecord> {
    return this.ctx.op('template_create', async () => {
      checkTemplate(input, this.ctx.config, await this.ctx.providerNamesFor(input.provider));
      const now = this.ctx.clock.now();
      const record = templateRecord(input, now, now);
      await this.ctx.store.createTemplate(record);
      return record;
    });
  }

  listTemplates(): Promise<TemplateRecord[]> {
    return this.ctx.op('template_list', async () => (await this.ctx.store.listTemplates()).sort((a, b) => (a.name < b.name ? -1 : 1)));
  }

  getTemplate(name: string): Promise<TemplateRecord> {
    return this.ctx.op('template_get', async () => {
      const t = await this.ctx.store.getTemplate(name);
      if (t === undefined) throw notFound('template', name);
      return t;
    });
  }

  updateTemplate(name: string, input: TemplateInput): Promise<TemplateRecord> {
    return this.ctx.op('template_update', async () => {
      checkTemplateName(name);
      if (input.name !== name) throw badRequest('name: cannot be changed; the body name must match the path');
      checkTemplate(input, this.ctx.config, await this.ctx.providerNamesFor(input.provider));
      // PUT replaces the whole template: unset fields go back to "use the server default".
      const { name: _n, createdAt: _c, ...patch } = templateRecord(input, 0, this.ctx.clock.now());
      return this.ctx.store.updateTemplate(name, patch);
    });
  }

  deleteTemplate(name: string): Promise<void> {
    return this.ctx.op('template_delete', () => this.ctx.store.deleteTemplate(name));
  }

  spawnFromTemplate(name: string, overrides: SpawnRequest, caller: Caller): Promise<SandboxRecord> {
    return this.ctx.op('template_spawn', async () => {
      if ((await this.ctx.store.getTemplate(name)) === undefined) throw notFound('template', name);
      return this.lifecycle.spawn({ ...overrides, template: name }, caller);
    });
  }

  // ---------------------------------------------------------------- quotas

  listQuotas(): Promise<QuotaRecord[]> {
    return this.ctx.op('quota_list', async () => (await this.ctx.store.listQuotas()).sort((a, b) => (a.ownerId < b.ownerId ? -1 : 1)));
  }

  getQuota(ownerId: string): Promise<QuotaRecord> {
    return this.ctx.op('quota_get', async () => {
      const q = await this.ctx.store.getQuota(ownerId);
      if (q === undefined) throw notFound('quota', ownerId);
      return q;
    });
  }

  putQuota(ownerId: string, quota: Omit<QuotaRecord, 'ownerId' | 'updatedAt'>): Promise<QuotaRecord> {
    return this.ctx.op('quota_put', async () => {
      checkOwnerId(ownerId, 'owner');
      for (const [field, v] of Object.entries({ max_sandboxes: quota.maxSandboxes, max_memory_mb: quota.maxMemoryMb, max_vcpus: quota.maxVcpus, max_ttl: quota.maxTtlMs })) {
        if (v !== null && (!Number.isInteger(v) || v < 0)) throw badRequest(`${field}: must be a non-negative integer or null`);
      }
      if (quota.maxTtlMs !== null && quota.maxTtlMs > this.ctx.config.defaults.maxTtlMs) {
        throw badRequest(`max_ttl: ${formatDuration(quota.maxTtlMs)} exceeds the server maximum TTL of ${formatDuration(this.ctx.config.defaults.maxTtlMs)}`);
      }
      return this.ctx.store.putQuota({ ownerId, maxSandboxes: quota.maxSandboxes, maxMemoryMb: quota.maxMemoryMb, maxVcpus: quota.maxVcpus, maxTtlMs: quota.maxTtlMs, updatedAt: this.ctx.clock.now() });
    });
  }

  deleteQuota(ownerId: string): Promise<void> {
    return this.ctx.op('quota_delete', () => this.ctx.store.deleteQuota(ownerId));
  }

  quotaUsage(ownerId: string): Promise<QuotaUsage> {
    return this.ctx.op('quota_usage', async () => {
      checkOwnerId(ownerId, 'owner');
      const rows = await this.ctx.store.listSandboxes({ states: ACTIVE_SANDBOX_STATES, ownerId });
      return {
        ownerId,
        activeSandboxes: rows.length,
        memoryMb: rows.reduce((s, r) => s + r.memoryMb, 0),
        vcpus: rows.reduce((s, r) => s + r.vcpus, 0),
        quota: (await this.ctx.store.getQuota(ownerId)) ?? null,
      };
    });
  }
}


function templateRecord(input: TemplateInput, createdAt: number, updatedAt: number): TemplateRecord {
  return {
    name: input.name,
    image: input.image ?? null,
    provider: input.provider ?? null,
    memoryMb: input.memoryMb ?? null,
    vcpus: input.vcpus ?? null,
    ttlMs: input.ttlMs ?? null,
    networkMode: input.networkMode ?? null,
    env: { ...(input.env ?? {}) },
    metadata: { ...(input.metadata ?? {}) },
    createdAt,
    updatedAt,
  };
}