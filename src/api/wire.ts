/**
 * The one place where domain objects become wire objects and back: snake_case keys,
 * Go-style duration strings, ISO-8601 timestamps and octal mode strings exist only here.
 */
import { Type, type Static } from '@sinclair/typebox';
import { badRequest, formatDuration, parseDuration, toIso } from '../core/index.js';
import type { LeaseRecord, QuotaRecord, SandboxRecord, TemplateRecord, WorkerCapacity } from '../core/types.js';
import type { FileEntry } from '../providers/provider.js';
import type {
  AdmissionReport,
  Diagnostics,
  ExecOutcome,
  HeartbeatInput,
  PoolStatus,
  ProviderDetail,
  ProviderSummary,
  QuotaUsage,
  SchedulerStatus,
  SpawnRequest,
  TemplateInput,
  WorkerView,
} from '../orchestrator/service.js';

// ---------- schemas ----------

const StringMap = Type.Record(Type.String(), Type.String());
const FreeObject = Type.Record(Type.String(), Type.Unknown());

export const ErrorBody = Type.Object({ code: Type.String(), message: Type.String() });
export const StatusBody = Type.Object({ status: Type.String() });

export const SpawnBody = Type.Object({
  image: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  provider: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  template: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  memory_mb: Type.Optional(Type.Integer({ minimum: 1 })),
  vcpus: Type.Optional(Type.Integer({ minimum: 1 })),
  ttl: Type.Optional(Type.String()),
  owner_id: Type.Optional(Type.String({ maxLength: 128 })),
  metadata: Type.Optional(StringMap),
  env: Type.Optional(StringMap),
  network_mode: Type.Optional(Type.String({ maxLength: 64 })),
});
export type SpawnBodyT = Static<typeof SpawnBody>;

export const SandboxWire = Type.Object({
  id: Type.String(),
  state: Type.String(),
  provider: Type.String(),
  image: Type.String(),
  memory_mb: Type.Integer(),
  vcpus: Type.Number(),
  owner_id: Type.Optional(Type.String()),
  worker_id: Type.Optional(Type.String()),
  created_at: Type.String(),
  expires_at: Type.String(),
  metadata: StringMap,
  preview_domain: Type.Optional(Type.String()),
  /** Why the sandbox is in its state (unhealthy, destroyed, error, …), when there is a reason. */
  state_reason: Type.Optional(Type.String()),
});

export const SchedulerWire = Type.Object({
  worker_id: Type.String(),
  selected_worker_id: Type.Union([Type.String(), Type.Null()]),
  eligible_workers: Type.Integer(),
  reason: Type.Optional(Type.String()),
});

export const AdmissionWire = Type.Object({
  allowed: Type.Boolean(),
  queueable: Type.Boolean(),
  reason: Type.Optional(Type.String()),
  active_sandboxes: Type.Integer(),
  max_sandboxes: Type.Integer(),
  active_owner_sandboxes: Type.Optional(Type.Integer()),
  max_owner_sandboxes: Type.Optional(Type.Integer()),
  max_ttl: Type.Optional(Type.String()),
  scheduler: SchedulerWire,
});

export const ExtendBody = Type.Object({ ttl: Type.String() });

export const ExecBody = Type.Object({
  command: Type.String({ minLength: 1 }),
  args: Type.Optional(Type.Array(Type.String())),
  mode: Type.Optional(Type.Union([Type.Literal('shell'), Type.Literal('argv')])),
  env: Type.Optional(StringMap),
  workdir: Type.Optional(Type.String()),
  timeout: Type.Optional(Type.String()),
  stream: Type.Optional(Type.Boolean()),
});
export type ExecBodyT = Static<typeof ExecBody>;

export const ExecResultWire = Type.Object({
  exit_code: Type.Integer(),
  stdout: Type.String(),
  stderr: Type.String(),
  duration: Type.String(),
});

export const FileWriteBody = Type.Object({
  path: Type.String(),
  content: Type.String(),
  mode: Type.Optional(Type.String()),
  encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')])),
});
export const FileEntryWire = Type.Object({
  name: Type.String(),
  path: Type.String(),
  size: Type.Number(),
  is_dir: Type.Boolean(),
  mod_time: Type.String(),
  mode: Type.String(),
});

export const TemplateBody = Type.Object({
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' })),
  image: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()])),
  provider: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()])),
  memory_mb: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  vcpus: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  ttl: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  network_mode: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  env: Type.Optional(StringMap),
  metadata: Type.Optional(StringMap),
});
export type TemplateBodyT = Static<typeof TemplateBody>;
export const TemplateWire = Type.Object({
  name: Type.String(),
  image: Type.Optional(Type.String()),
  provider: Type.Optional(Type.String()),
  memory_mb: Type.Optional(Type.Integer()),
  vcpus: Type.Optional(Type.Number()),
  ttl: Type.Optional(Type.String()),
  network_mode: Type.Optional(Type.String()),
  env: StringMap,
  metadata: StringMap,
  created_at: Type.String(),
  updated_at: Type.String(),
});

export const ProviderSummaryWire = Type.Object({
  name: Type.String(),
  healthy: Type.Boolean(),
  default: Type.Boolean(),
  latency_ms: Type.Number(),
  last_checked: Type.String(),
  error: Type.Optional(Type.String()),
  capabilities: Type.Object({ isolation: Type.String(), features: Type.Array(Type.String()) }),
  runtime_count: Type.Optional(Type.Integer()),
});
export const ProviderDetailWire = Type.Object({
  name: Type.String(),
  healthy: Type.Boolean(),
  default: Type.Boolean(),
  sandbox_count: Type.Integer(),
  health: Type.Object({
    healthy: Type.Boolean(),
    latency_ms: Type.Number(),
    error: Type.Optional(Type.String()),
    details: FreeObject,
  }),
  config: FreeObject,
});

const CapacityWire = Type.Object({
  max_sandboxes: Type.Optional(Type.Integer({ minimum: 0 })),
  max_sandboxes_per_owner: Type.Optional(Type.Integer({ minimum: 0 })),
  rpc_url: Type.Optional(Type.String()),
  preview_domain: Type.Optional(Type.String()),
});
export const WorkerWire = Type.Object({
  id: Type.String(),
  hostname: Type.String(),
  status: Type.String(),
  providers: Type.Array(Type.String()),
  capabilities: Type.Array(Type.String()),
  capacity: CapacityWire,
  last_heartbeat: Type.String(),
  created_at: Type.String(),
  updated_at: Type.String(),
  stale: Type.Boolean(),
});
export const HeartbeatBody = Type.Object({
  hostname: Type.String({ minLength: 1, maxLength: 255 }),
  status: Type.Union([Type.Literal('online'), Type.Literal('draining'), Type.Literal('offline'), Type.Literal('unhealthy')]),
  providers: Type.Optional(Type.Array(Type.String())),
  capabilities: Type.Optional(Type.Array(Type.String())),
  capacity: Type.Optional(CapacityWire),
});
export type HeartbeatBodyT = Static<typeof HeartbeatBody>;

export const LeaseWire = Type.Object({
  resource_id: Type.String(),
  resource_type: Type.String(),
  holder_id: Type.String(),
  generation: Type.Integer(),
  expires_at: Type.String(),
  created_at: Type.String(),
  updated_at: Type.String(),
});

export const QuotaBody = Type.Object({
  max_sandboxes: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
  max_memory_mb: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
  max_vcpus: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
  max_ttl: Type.Optional(Type.Union([Type.String(), Type.Null()])),
});
export type QuotaBodyT = Static<typeof QuotaBody>;
export const QuotaWire = Type.Object({
  owner_id: Type.String(),
  max_sandboxes: Type.Union([Type.Integer(), Type.Null()]),
  max_memory_mb: Type.Union([Type.Integer(), Type.Null()]),
  max_vcpus: Type.Union([Type.Number(), Type.Null()]),
  max_ttl: Type.Union([Type.String(), Type.Null()]),
  updated_at: Type.String(),
});
export const QuotaUsageWire = Type.Object({
  owner_id: Type.String(),
  active_sandboxes: Type.Integer(),
  memory_mb: Type.Integer(),
  vcpus: Type.Number(),
  quota: Type.Union([QuotaWire, Type.Null()]),
});

export const PoolStatusWire = Type.Object({
  enabled: Type.Boolean(),
  target_size: Type.Integer(),
  ready: Type.Integer(),
  creating: Type.Integer(),
  image: Type.String(),
  provider: Type.String(),
  claims_total: Type.Integer(),
  misses_total: Type.Integer(),
});

export function poolStatusOut(p: PoolStatus): Static<typeof PoolStatusWire> {
  return {
    enabled: p.enabled,
    target_size: p.targetSize,
    ready: p.ready,
    creating: p.creating,
    image: p.image,
    provider: p.provider,
    claims_total: p.claimsTotal,
    misses_total: p.missesTotal,
  };
}

export const DiagnosticsWire = Type.Object({
  version: Type.String(),
  uptime: Type.String(),
  scheduler: SchedulerWire,
  workers: Type.Object({
    total: Type.Integer(),
    online: Type.Integer(),
    stale: Type.Integer(),
    unhealthy: Type.Integer(),
    items: Type.Array(WorkerWire),
  }),
  leases: Type.Object({
    total: Type.Integer(),
    active: Type.Integer(),
    expired: Type.Integer(),
    by_holder: Type.Record(Type.String(), Type.Integer()),
  }),
  sandboxes: Type.Object({
    total: Type.Integer(),
    active: Type.Integer(),
    by_state: Type.Record(Type.String(), Type.Integer()),
    by_provider: Type.Record(Type.String(), Type.Integer()),
    by_worker: Type.Record(Type.String(), Type.Integer()),
  }),
  providers: Type.Array(ProviderSummaryWire),
  store: Type.Object({ dialect: Type.String(), healthy: Type.Boolean() }),
  config: FreeObject,
});

// ---------- wire → domain ----------

/** Parses an optional Go duration field; absent stays undefined, a bad value is a 400. */
export function durationIn(value: string | undefined | null, field: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  return parseDuration(value, field);
}

/** Parses an octal permission string ("644", "0755") to its bits; anything else is a 400. */
export function modeIn(value: string, field = 'mode'): number {
  if (!/^0?[0-7]{3,4}$/.test(value)) throw badRequest(`${field}: expected an octal mode like "644"`);
  const bits = parseInt(value, 8);
  if (bits > 0o7777) throw badRequest(`${field}: out of range`);
  return bits;
}

export function spawnIn(body: SpawnBodyT | undefined): SpawnRequest {
  const b = body ?? {};
  const out: SpawnRequest = {};
  if (b.image !== undefined) out.image = b.image;
  if (b.provider !== undefined) out.provider = b.provider;
  if (b.template !== undefined) out.template = b.template;
  if (b.memory_mb !== undefined) out.memoryMb = b.memory_mb;
  if (b.vcpus !== undefined) out.vcpus = b.vcpus;
  const ttl = durationIn(b.ttl, 'ttl');
  if (ttl !== undefined) out.ttlMs = ttl;
  if (b.owner_id !== undefined && b.owner_id !== '') out.ownerId = b.owner_id;
  if (b.metadata !== undefined) out.metadata = b.metadata;
  if (b.env !== undefined) out.env = b.env;
  if (b.network_mode !== undefined) out.networkMode = b.network_mode;
  return out;
}

export function templateIn(name: string, body: TemplateBodyT): TemplateInput {
  const out: TemplateInput = { name };
  if (body.image !== undefined) out.image = body.image;
  if (body.provider !== undefined) out.provider = body.provider;
  if (body.memory_mb !== undefined) out.memoryMb = body.memory_mb;
  if (body.vcpus !== undefined) out.vcpus = body.vcpus;
  if (body.ttl !== undefined) out.ttlMs = body.ttl === null ? null : (durationIn(body.ttl, 'ttl') ?? null);
  if (body.network_mode !== undefined) out.networkMode = body.network_mode;
  if (body.env !== undefined) out.env = body.env;
  if (body.metadata !== undefined) out.metadata = body.metadata;
  return out;
}

export function heartbeatIn(body: HeartbeatBodyT): HeartbeatInput {
  return {
    hostname: body.hostname,
    status: body.status,
    providers: body.providers ?? [],
    capabilities: body.capabilities ?? [],
    capacity: capacityIn(body.capacity ?? {}),
  };
}

function capacityIn(c: Static<typeof CapacityWire>): WorkerCapacity {
  const out: WorkerCapacity = {};
  if (c.max_sandboxes !== undefined) out.maxSandboxes = c.max_sandboxes;
  if (c.max_sandboxes_per_owner !== undefined) out.maxSandboxesPerOwner = c.max_sandboxes_per_owner;
  if (c.rpc_url !== undefined) out.rpcUrl = c.rpc_url;
  if (c.preview_domain !== undefined) out.previewDomain = c.preview_domain;
  return out;
}

export function quotaIn(body: QuotaBodyT): Omit<QuotaRecord, 'ownerId' | 'updatedAt'> {
  return {
    maxSandboxes: body.max_sandboxes ?? null,
    maxMemoryMb: body.max_memory_mb ?? null,
    maxVcpus: body.max_vcpus ?? null,
    maxTtlMs: durationIn(body.max_ttl, 'max_ttl') ?? null,
  };
}

// ---------- domain → wire ----------

/**
 * Keys whose values are maps keyed by data (states, worker ids, operation names): their own
 * keys are kept verbatim, only the values inside are converted.
 */
const DATA_KEYED = new Set(['byState', 'byWorker', 'byProvider', 'byHolder', 'operations', 'workerTokens', 'metadata', 'env']);

const snake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Converts a free-form domain object (metrics, redacted config) to snake_case keys, deeply. */
export function snakeKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(snakeKeys);
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (DATA_KEYED.has(k) && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      const inner: Record<string, unknown> = {};
      for (const [dk, dv] of Object.entries(v)) inner[dk] = snakeKeys(dv);
      out[snake(k)] = inner;
    } else {
      out[snake(k)] = snakeKeys(v);
    }
  }
  return out;
}

/** Renders a sandbox; `previewDomain` (server config) yields `<id>.<domain>` when set. */
export function sandboxOut(s: SandboxRecord, previewDomain: string): Static<typeof SandboxWire> {
  const out: Static<typeof SandboxWire> = {
    id: s.id,
    state: s.state,
    provider: s.provider,
    image: s.image,
    memory_mb: s.memoryMb,
    vcpus: s.vcpus,
    created_at: toIso(s.createdAt),
    expires_at: toIso(s.expiresAt),
    metadata: s.metadata,
  };
  if (s.ownerId !== null) out.owner_id = s.ownerId;
  if (s.workerId !== null) out.worker_id = s.workerId;
  if (previewDomain !== '') out.preview_domain = `${s.id}.${previewDomain}`;
  if (s.stateReason !== null) out.state_reason = s.stateReason;
  return out;
}

export function schedulerOut(s: SchedulerStatus): Static<typeof SchedulerWire> {
  const out: Static<typeof SchedulerWire> = {
    worker_id: s.workerId,
    selected_worker_id: s.selectedWorkerId,
    eligible_workers: s.eligibleWorkers,
  };
  if (s.reason !== undefined) out.reason = s.reason;
  return out;
}

export function admissionOut(a: AdmissionReport): Static<typeof AdmissionWire> {
  const out: Static<typeof AdmissionWire> = {
    allowed: a.allowed,
    queueable: a.queueable,
    active_sandboxes: a.activeSandboxes,
    max_sandboxes: a.maxSandboxes,
    max_ttl: formatDuration(a.maxTtlMs),
    scheduler: schedulerOut(a.scheduler),
  };
  if (a.reason !== undefined) out.reason = a.reason;
  if (a.activeOwnerSandboxes !== undefined) out.active_owner_sandboxes = a.activeOwnerSandboxes;
  if (a.maxOwnerSandboxes !== undefined) out.max_owner_sandboxes = a.maxOwnerSandboxes;
  return out;
}

export function execOut(r: ExecOutcome): Static<typeof ExecResultWire> {
  return { exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr, duration: formatDuration(r.durationMs) };
}

/** Octal mode the way list/stat report it: at least four digits ("0644"). */
export function modeOut(bits: number): string {
  return (bits & 0o7777).toString(8).padStart(4, '0');
}

export function fileEntryOut(e: FileEntry): Static<typeof FileEntryWire> {
  return { name: e.name, path: e.path, size: e.size, is_dir: e.isDir, mod_time: toIso(e.modTime), mode: modeOut(e.mode) };
}

export function templateOut(t: TemplateRecord): Static<typeof TemplateWire> {
  const out: Static<typeof TemplateWire> = {
    name: t.name,
    env: t.env,
    metadata: t.metadata,
    created_at: toIso(t.createdAt),
    updated_at: toIso(t.updatedAt),
  };
  if (t.image !== null) out.image = t.image;
  if (t.provider !== null) out.provider = t.provider;
  if (t.memoryMb !== null) out.memory_mb = t.memoryMb;
  if (t.vcpus !== null) out.vcpus = t.vcpus;
  if (t.ttlMs !== null) out.ttl = formatDuration(t.ttlMs);
  if (t.networkMode !== null) out.network_mode = t.networkMode;
  return out;
}

export function providerSummaryOut(p: ProviderSummary): Static<typeof ProviderSummaryWire> {
  const out: Static<typeof ProviderSummaryWire> = {
    name: p.name,
    healthy: p.healthy,
    default: p.default,
    latency_ms: p.latencyMs,
    last_checked: toIso(p.lastChecked),
    capabilities: { isolation: p.capabilities.isolation, features: p.capabilities.features },
  };
  if (p.error !== undefined) out.error = p.error;
  if (p.runtimeCount !== undefined) out.runtime_count = p.runtimeCount;
  return out;
}

export function providerDetailOut(p: ProviderDetail): Static<typeof ProviderDetailWire> {
  const health: Static<typeof ProviderDetailWire>['health'] = {
    healthy: p.health.healthy,
    latency_ms: p.health.latencyMs,
    details: snakeKeys(p.health.details) as Record<string, unknown>,
  };
  if (p.health.error !== undefined) health.error = p.health.error;
  return { name: p.name, healthy: p.healthy, default: p.default, sandbox_count: p.sandboxCount, health, config: snakeKeys(p.config) as Record<string, unknown> };
}

function capacityOut(c: WorkerCapacity): Static<typeof CapacityWire> {
  const out: Static<typeof CapacityWire> = {};
  if (c.maxSandboxes !== undefined) out.max_sandboxes = c.maxSandboxes;
  if (c.maxSandboxesPerOwner !== undefined) out.max_sandboxes_per_owner = c.maxSandboxesPerOwner;
  if (c.rpcUrl !== undefined) out.rpc_url = c.rpcUrl;
  if (c.previewDomain !== undefined) out.preview_domain = c.previewDomain;
  return out;
}

export function workerOut(w: WorkerView): Static<typeof WorkerWire> {
  return {
    id: w.id,
    hostname: w.hostname,
    status: w.status,
    providers: w.providers,
    capabilities: w.capabilities,
    capacity: capacityOut(w.capacity),
    last_heartbeat: toIso(w.lastHeartbeat),
    created_at: toIso(w.createdAt),
    updated_at: toIso(w.updatedAt),
    stale: w.stale,
  };
}

export function leaseOut(l: LeaseRecord): Static<typeof LeaseWire> {
  return {
    resource_id: l.resourceId,
    resource_type: l.resourceType,
    holder_id: l.holderId,
    generation: l.generation,
    expires_at: toIso(l.expiresAt),
    created_at: toIso(l.createdAt),
    updated_at: toIso(l.updatedAt),
  };
}

export function quotaOut(q: QuotaRecord): Static<typeof QuotaWire> {
  return {
    owner_id: q.ownerId,
    max_sandboxes: q.maxSandboxes,
    max_memory_mb: q.maxMemoryMb,
    max_vcpus: q.maxVcpus,
    max_ttl: q.maxTtlMs === null ? null : formatDuration(q.maxTtlMs),
    updated_at: toIso(q.updatedAt),
  };
}

export function quotaUsageOut(u: QuotaUsage): Static<typeof QuotaUsageWire> {
  return {
    owner_id: u.ownerId,
    active_sandboxes: u.activeSandboxes,
    memory_mb: u.memoryMb,
    vcpus: u.vcpus,
    quota: u.quota === null ? null : quotaOut(u.quota),
  };
}

export function diagnosticsOut(d: Diagnostics): Static<typeof DiagnosticsWire> {
  return {
    version: d.version,
    uptime: formatDuration(d.uptimeMs),
    scheduler: schedulerOut(d.scheduler),
    workers: {
      total: d.workers.total,
      online: d.workers.online,
      stale: d.workers.stale,
      unhealthy: d.workers.unhealthy,
      items: d.workers.items.map(workerOut),
    },
    leases: { total: d.leases.total, active: d.leases.active, expired: d.leases.expired, by_holder: d.leases.byHolder },
    sandboxes: {
      total: d.sandboxes.total,
      active: d.sandboxes.active,
      by_state: d.sandboxes.byState,
      by_provider: d.sandboxes.byProvider,
      by_worker: d.sandboxes.byWorker,
    },
    providers: d.providers.map(providerSummaryOut),
    store: d.store,
    config: snakeKeys(d.config) as Record<string, unknown>,
  };
}
