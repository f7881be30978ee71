/**
 * The Store implementation shared by both dialects. Everything dialect-specific (connection,
 * clock, migration locking, error classification) sits behind `DialectAdapter`; the queries
 * here are written once. Every mutation is a single statement so that no transaction spans an
 * `await` — better-sqlite3 is synchronous, and a transaction left open across the event loop
 * would block other connections in the same process until the busy timeout.
 */
import { sql, type Kysely, type RawBuilder, type Selectable } from 'kysely';
import { StacyError, badRequest, conflict, notFound } from '../core/errors.js';
import type {
  ExecLogRecord,
  LeaseRecord,
  QuotaRecord,
  SandboxRecord,
  SandboxState,
  TemplateRecord,
  WorkerRecord,
  WorkerStatus,
} from '../core/types.js';
import type { StoreDialect } from './migrations.js';
import type {
  Database,
  ExecLogsTable,
  LeasesTable,
  QuotasTable,
  SandboxesTable,
  TemplatesTable,
  WorkersTable,
} from './schema.js';
import type {
  AcquireLeaseInput,
  SandboxFilter,
  SandboxPatch,
  Store,
  TemplatePatch,
  WorkerLoad,
} from './store.js';

/** What a database error means to the store; anything else is rethrown unchanged. */
export type DbErrorKind = 'unique_violation' | 'foreign_key_violation';

/** The dialect-specific half of a store. */
export interface DialectAdapter {
  readonly dialect: StoreDialect;
  readonly db: Kysely<Database>;
  /** An SQL expression for the store clock in epoch ms, evaluated where the dialect allows. */
  nowExpression(): RawBuilder<number>;
  now(): Promise<number>;
  migrate(): Promise<void>;
  classifyError(err: unknown): DbErrorKind | undefined;
  close(): Promise<void>;
}

/** Large id lists are deleted in chunks to stay under both dialects' bound-parameter limits. */
const DELETE_CHUNK = 500;

export class KyselyStore implements Store {
  readonly dialect: StoreDialect;
  private readonly db: Kysely<Database>;
  private closed = false;

  constructor(private readonly adapter: DialectAdapter) {
    this.dialect = adapter.dialect;
    this.db = adapter.db;
  }

  migrate(): Promise<void> {
    return this.adapter.migrate();
  }

  /** Versions recorded in schema_migrations, ascending; for diagnostics and tests. */
  async appliedMigrations(): Promise<number[]> {
    const rows = await this.db.selectFrom('schema_migrations').select('version').orderBy('version').execute();
    return rows.map((r) => Number(r.version));
  }

  async ping(): Promise<void> {
    if (this.closed) throw new StacyError('unavailable', `${this.dialect} store is closed`);
    try {
      await sql`SELECT 1`.execute(this.db);
    } catch (err) {
      throw new StacyError('unavailable', `${this.dialect} store is unreachable: ${errorText(err)}`, { cause: err });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.adapter.close();
  }

  now(): Promise<number> {
    return this.adapter.now();
  }

  // --- sandboxes -------------------------------------------------------------------------

  async createSandbox(record: SandboxRecord): Promise<void> {
    rejectNul(record);
    try {
      await this.db.insertInto('sandboxes').values(sandboxToRow(record)).execute();
    } catch (err) {
      if (this.adapter.classifyError(err) === 'unique_violation') {
        throw conflict(`sandbox ${JSON.stringify(record.id)} already exists`);
      }
      throw err;
    }
  }

  async getSandbox(id: string): Promise<SandboxRecord | undefined> {
    rejectNul(id);
    const row = await this.db.selectFrom('sandboxes').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : rowToSandbox(row);
  }

  async updateSandbox(id: string, patch: SandboxPatch): Promise<SandboxRecord> {
    rejectNul(id, patch);
    const row = await this.db
      .updateTable('sandboxes')
      .set({
        ...sandboxPatchToRow(patch),
        updated_at: patch.updatedAt ?? this.adapter.nowExpression(),
      })
      .where('id', '=', id)
      .returningAll()
      .executeTakeFirst();
    if (row === undefined) throw notFound('sandbox', id);
    return rowToSandbox(row);
  }

  async listSandboxes(filter: SandboxFilter = {}): Promise<SandboxRecord[]> {
    rejectNul(filter);
    if (filter.states?.length === 0) return [];
    const rows = await this.filteredSandboxes(filter).selectAll().orderBy('created_at').orderBy('id').execute();
    return rows.map(rowToSandbox);
  }

  async countSandboxes(filter: SandboxFilter = {}): Promise<number> {
    rejectNul(filter);
    if (filter.states?.length === 0) return 0;
    const row = await this.filteredSandboxes(filter)
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async deleteSandboxes(ids: readonly string[]): Promise<number> {
    rejectNul(ids);
    let removed = 0;
    for (let i = 0; i < ids.length; i += DELETE_CHUNK) {
      const result = await this.db
        .deleteFrom('sandboxes')
        .where('id', 'in', ids.slice(i, i + DELETE_CHUNK))
        .executeTakeFirst();
      removed += Number(result.numDeletedRows);
    }
    return removed;
  }

  private filteredSandboxes(filter: SandboxFilter) {
    let query = this.db.selectFrom('sandboxes');
    if (filter.states !== undefined) query = query.where('state', 'in', [...filter.states]);
    if (filter.ownerId !== undefined) query = query.where('owner_id', '=', filter.ownerId);
    if (filter.workerId !== undefined) query = query.where('worker_id', '=', filter.workerId);
    if (filter.provider !== undefined) query = query.where('provider', '=', filter.provider);
    if (filter.expiresBefore !== undefined) query = query.where('expires_at', '<=', filter.expiresBefore);
    return query;
  }

  // --- exec logs -------------------------------------------------------------------------

  async appendExecLog(log: Omit<ExecLogRecord, 'id'>): Promise<ExecLogRecord> {
    rejectNul(log);
    try {
      const row = await this.db
        .insertInto('exec_logs')
        .values({
          sandbox_id: log.sandboxId,
          command: log.command,
          args: JSON.stringify(log.args),
          mode: log.mode,
          exit_code: log.exitCode,
          outcome: log.outcome,
          duration_ms: log.durationMs,
          started_at: log.startedAt,
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      return rowToExecLog(row);
    } catch (err) {
      if (this.adapter.classifyError(err) === 'foreign_key_violation') throw notFound('sandbox', log.sandboxId);
      throw err;
    }
  }

  /** Newest first. */
  async listExecLogs(sandboxId: string, limit: number): Promise<ExecLogRecord[]> {
    rejectNul(sandboxId);
    if (!Number.isInteger(limit) || limit < 0) throw badRequest(`exec log limit must be a non-negative integer, got ${limit}`);
    if (limit === 0) return [];
    const rows = await this.db
      .selectFrom('exec_logs')
      .selectAll()
      .where('sandbox_id', '=', sandboxId)
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
    return rows.map(rowToExecLog);
  }

  // --- templates -------------------------------------------------------------------------

  async createTemplate(template: TemplateRecord): Promise<void> {
    rejectNul(template);
    try {
      await this.db.insertInto('templates').values(templateToRow(template)).execute();
    } catch (err) {
      if (this.adapter.classifyError(err) === 'unique_violation') {
        throw conflict(`template ${JSON.stringify(template.name)} already exists`);
      }
      throw err;
    }
  }

  async getTemplate(name: string): Promise<TemplateRecord | undefined> {
    rejectNul(name);
    const row = await this.db.selectFrom('templates').selectAll().where('name', '=', name).executeTakeFirst();
    return row === undefined ? undefined : rowToTemplate(row);
  }

  async listTemplates(): Promise<TemplateRecord[]> {
    const rows = await this.db.selectFrom('templates').selectAll().orderBy('name').execute();
    return rows.map(rowToTemplate);
  }

  async updateTemplate(name: string, patch: TemplatePatch): Promise<TemplateRecord> {
    rejectNul(name, patch);
    const row = await this.db
      .updateTable('templates')
      .set({ ...templatePatchToRow(patch), updated_at: patch.updatedAt ?? this.adapter.nowExpression() })
      .where('name', '=', name)
      .returningAll()
      .executeTakeFirst();
    if (row === undefined) throw notFound('template', name);
    return rowToTemplate(row);
  }

  async deleteTemplate(name: string): Promise<void> {
    rejectNul(name);
    const result = await this.db.deleteFrom('templates').where('name', '=', name).executeTakeFirst();
    if (Number(result.numDeletedRows) === 0) throw notFound('template', name);
  }

  // --- workers ---------------------------------------------------------------------------

  async saveWorker(worker: WorkerRecord): Promise<WorkerRecord> {
    rejectNul(worker);
    const row = await this.db
      .insertInto('workers')
      .values(workerToRow(worker))
      .onConflict((oc) =>
        oc.column('id').doUpdateSet((eb) => ({
          hostname: eb.ref('excluded.hostname'),
          status: eb.ref('excluded.status'),
          providers: eb.ref('excluded.providers'),
          capabilities: eb.ref('excluded.capabilities'),
          capacity: eb.ref('excluded.capacity'),
          last_heartbeat: eb.ref('excluded.last_heartbeat'),
          updated_at: eb.ref('excluded.updated_at'),
        })),
      )
      .returningAll()
      .executeTakeFirstOrThrow();
    return rowToWorker(row);
  }

  async getWorker(id: string): Promise<WorkerRecord | undefined> {
    rejectNul(id);
    const row = await this.db.selectFrom('workers').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : rowToWorker(row);
  }

  async listWorkers(): Promise<WorkerRecord[]> {
    const rows = await this.db.selectFrom('workers').selectAll().orderBy('id').execute();
    return rows.map(rowToWorker);
  }

  async listWorkerLoads(states: readonly SandboxState[], ownerId: string | null): Promise<WorkerLoad[]> {
    rejectNul(states, ownerId);
    if (states.length === 0) return (await this.listWorkers()).map((worker) => ({ worker, active: 0, ownerActive: 0 }));
    const result = await sql<Selectable<WorkersTable> & { active: number | string; owner_active: number | string | null }>`
      SELECT w.id, w.hostname, w.status, w.providers, w.capabilities, w.capacity, w.last_heartbeat, w.created_at, w.updated_at,
        COALESCE(c.active, 0) AS active, COALESCE(c.owner_active, 0) AS owner_active
      FROM workers w LEFT JOIN (
        SELECT worker_id, COUNT(*) AS active, SUM(CASE WHEN owner_id = ${ownerId} THEN 1 ELSE 0 END) AS owner_active
        FROM sandboxes
        WHERE state IN (${sql.join([...states])}) AND worker_id IS NOT NULL
        GROUP BY worker_id
      ) c ON c.worker_id = w.id
      ORDER BY w.id
    `.execute(this.db);
    return result.rows.map((row) => ({ worker: rowToWorker(row), active: Number(row.active), ownerActive: Number(row.owner_active ?? 0) }));
  }

  async deleteWorker(id: string): Promise<void> {
    rejectNul(id);
    const result = await this.db.deleteFrom('workers').where('id', '=', id).executeTakeFirst();
    if (Number(result.numDeletedRows) === 0) throw notFound('worker', id);
  }

  // --- leases ----------------------------------------------------------------------------
  // Each lease operation is one statement that reads the store clock once, through the
  // one-row derived table `n`, so "now" is the same value everywhere in the statement.

  async acquireLease(input: AcquireLeaseInput): Promise<LeaseRecord> {
    rejectNul(input);
    checkTtl(input.ttlMs);
    // The conflict branch only fires for the same holder or an expired lease; otherwise no row
    // comes back. On PostgreSQL a concurrent acquire waits for the row lock and re-checks the
    // WHERE against the committed row, so at most one of them wins. The floor is read under a
    // share lock there: a prune running meanwhile then either waits for this acquire or has
    // committed its raised floor before this statement reads it, never in between.
    const result = await sql<LeasesTable>`
      INSERT INTO leases (resource_id, resource_type, holder_id, generation, expires_at, created_at, updated_at)
      SELECT ${input.resourceId}, ${input.resourceType}, ${input.holderId}, n.floor + 1, n.now + ${input.ttlMs}, n.now, n.now
      FROM (SELECT ${this.adapter.nowExpression()} AS now, (SELECT generation FROM lease_floor WHERE id = 1${this.floorLock()}) AS floor) AS n
      WHERE true
      ON CONFLICT (resource_id) DO UPDATE SET
        resource_type = excluded.resource_type,
        holder_id = excluded.holder_id,
        generation = leases.generation + 1,
        expires_at = excluded.expires_at,
        updated_at = excluded.updated_at
      WHERE leases.holder_id = excluded.holder_id OR leases.expires_at <= excluded.updated_at
      RETURNING resource_id, resource_type, holder_id, generation, expires_at, created_at, updated_at
    `.execute(this.db);
    const row = result.rows[0];
    if (row === undefined) {
      throw new StacyError('lease_conflict', `lease on ${JSON.stringify(input.resourceId)} is held by another holder`);
    }
    return rowToLease(row);
  }

  async renewLease(resourceId: string, holderId: string, ttlMs: number): Promise<LeaseRecord> {
    rejectNul(resourceId, holderId);
    checkTtl(ttlMs);
    const result = await sql<LeasesTable>`
      UPDATE leases SET
        generation = generation + 1,
        expires_at = n.now + ${ttlMs},
        updated_at = n.now
      FROM (SELECT ${this.adapter.nowExpression()} AS now) AS n
      WHERE resource_id = ${resourceId} AND holder_id = ${holderId} AND expires_at > n.now
      RETURNING resource_id, resource_type, holder_id, generation, expires_at, created_at, updated_at
    `.execute(this.db);
    const row = result.rows[0];
    if (row === undefined) {
      throw new StacyError('lease_conflict', `lease on ${JSON.stringify(resourceId)} is not held by ${JSON.stringify(holderId)} or has expired`);
    }
    return rowToLease(row);
  }

  /**
   * Ends the holder's lease by moving its expiry to now. The row stays, so the next acquire
   * continues the generation sequence. Releasing a lease that already expired is a no-op,
   * whoever held it: nobody holds an expired lease.
   */
  async releaseLease(resourceId: string, holderId: string): Promise<void> {
    rejectNul(resourceId, holderId);
    const released = await sql<{ resource_id: string }>`
      UPDATE leases SET expires_at = n.now, updated_at = n.now
      FROM (SELECT ${this.adapter.nowExpression()} AS now) AS n
      WHERE resource_id = ${resourceId} AND holder_id = ${holderId} AND expires_at > n.now
      RETURNING resource_id
    `.execute(this.db);
    if (released.rows.length > 0) return;
    const current = await sql<{ holder_id: string; live: number | boolean }>`
      SELECT holder_id, (expires_at > ${this.adapter.nowExpression()}) AS live FROM leases WHERE resource_id = ${resourceId}
    `.execute(this.db);
    const row = current.rows[0];
    if (row !== undefined && row.holder_id !== holderId && Boolean(row.live)) {
      throw new StacyError('lease_conflict', `lease on ${JSON.stringify(resourceId)} is held by another holder`);
    }
  }

  /**
   * Floor first, then the delete: once the floor covers a row's generation, deleting the row
   * cannot let a later acquire restart below it. The delete re-checks expiry and the floor, so
   * a row re-acquired in between (new expiry, higher generation) stays.
   *
   * On PostgreSQL both are one statement, so the floor row stays locked until the delete
   * commits and an acquire (which reads the floor under a share lock) sees either neither or
   * both. SQLite runs one writer at a time and every statement reads the latest data, so two
   * statements are enough there.
   */
  async pruneLeases(expiredBefore: number): Promise<number> {
    if (!Number.isSafeInteger(expiredBefore)) throw badRequest(`lease prune cutoff must be an integer of epoch milliseconds, got ${expiredBefore}`);
    // Never a live lease, whatever cutoff the caller passes; and a sandbox lease only once the
    // sandbox record has been forgotten, so nobody can still be working under it.
    const prunable = sql<boolean>`leases.expires_at <= ${expiredBefore} AND leases.expires_at <= ${this.adapter.nowExpression()}
      AND (leases.resource_type <> 'sandbox' OR NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.id = leases.resource_id))`;
    const highest = sql`(SELECT COALESCE(MAX(leases.generation), 0) FROM leases WHERE ${prunable})`;
    if (this.dialect === 'postgres') {
      const result = await sql`
        WITH floor AS (UPDATE lease_floor SET generation = GREATEST(generation, ${highest}) WHERE id = 1 RETURNING generation)
        DELETE FROM leases WHERE ${prunable} AND leases.generation <= (SELECT generation FROM floor)
      `.execute(this.db);
      return Number(result.numAffectedRows ?? 0);
    }
    await sql`UPDATE lease_floor SET generation = MAX(generation, ${highest}) WHERE id = 1`.execute(this.db);
    const result = await sql`
      DELETE FROM leases WHERE ${prunable} AND leases.generation <= (SELECT generation FROM lease_floor WHERE id = 1)
    `.execute(this.db);
    return Number(result.numAffectedRows ?? 0);
  }

  /** Row-lock clause for reading the lease floor inside an acquire; SQLite needs none. */
  private floorLock(): RawBuilder<unknown> {
    return this.dialect === 'postgres' ? sql.raw(' FOR SHARE') : sql.raw('');
  }

  async getLease(resourceId: string): Promise<LeaseRecord | undefined> {
    rejectNul(resourceId);
    const row = await this.db.selectFrom('leases').selectAll().where('resource_id', '=', resourceId).executeTakeFirst();
    return row === undefined ? undefined : rowToLease(row);
  }

  async listLeases(filter: { holderId?: string } = {}): Promise<LeaseRecord[]> {
    rejectNul(filter);
    let query = this.db.selectFrom('leases').selectAll();
    if (filter.holderId !== undefined) query = query.where('holder_id', '=', filter.holderId);
    const rows = await query.orderBy('resource_id').execute();
    return rows.map(rowToLease);
  }

  // --- quotas ----------------------------------------------------------------------------

  async getQuota(ownerId: string): Promise<QuotaRecord | undefined> {
    rejectNul(ownerId);
    const row = await this.db.selectFrom('quotas').selectAll().where('owner_id', '=', ownerId).executeTakeFirst();
    return row === undefined ? undefined : rowToQuota(row);
  }

  async listQuotas(): Promise<QuotaRecord[]> {
    const rows = await this.db.selectFrom('quotas').selectAll().orderBy('owner_id').execute();
    return rows.map(rowToQuota);
  }

  async putQuota(quota: QuotaRecord): Promise<QuotaRecord> {
    rejectNul(quota);
    const row = await this.db
      .insertInto('quotas')
      .values(quotaToRow(quota))
      .onConflict((oc) =>
        oc.column('owner_id').doUpdateSet((eb) => ({
          max_sandboxes: eb.ref('excluded.max_sandboxes'),
          max_memory_mb: eb.ref('excluded.max_memory_mb'),
          max_vcpus: eb.ref('excluded.max_vcpus'),
          max_ttl_ms: eb.ref('excluded.max_ttl_ms'),
          updated_at: eb.ref('excluded.updated_at'),
        })),
      )
      .returningAll()
      .executeTakeFirstOrThrow();
    return rowToQuota(row);
  }

  async deleteQuota(ownerId: string): Promise<void> {
    rejectNul(ownerId);
    const result = await this.db.deleteFrom('quotas').where('owner_id', '=', ownerId).executeTakeFirst();
    if (Number(result.numDeletedRows) === 0) throw notFound('quota', ownerId);
  }
}

/**
 * PostgreSQL cannot store U+0000 in text or jsonb (nor take it as a parameter), SQLite can;
 * refusing it up front on every dialect keeps the two stores answering alike.
 */
function rejectNul(...values: unknown[]): void {
  const visit = (value: unknown): boolean => {
    if (typeof value === 'string') return value.includes('\u0000');
    if (Array.isArray(value)) return value.some(visit);
    if (value !== null && typeof value === 'object') return Object.entries(value).some(([k, v]) => k.includes('\u0000') || visit(v));
    return false;
  };
  if (values.some(visit)) throw badRequest('text must not contain NUL characters');
}

function checkTtl(ttlMs: number): void {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) throw badRequest(`lease ttl must be a positive integer of milliseconds, got ${ttlMs}`);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** JSON columns come back as text on SQLite and already parsed on PostgreSQL. */
function decodeJson<T>(value: unknown): T {
  return (typeof value === 'string' ? JSON.parse(value) : value) as T;
}

// Row mapping. Numbers are passed through Number() because SQLite may hand back a REAL-typed
// value for an INTEGER column written from a JS number, and PostgreSQL count() is BIGINT.

function sandboxToRow(r: SandboxRecord) {
  return {
    id: r.id,
    state: r.state,
    provider: r.provider,
    image: r.image,
    memory_mb: r.memoryMb,
    vcpus: r.vcpus,
    owner_id: r.ownerId,
    worker_id: r.workerId,
    runtime_id: r.runtimeId,
    template: r.template,
    metadata: JSON.stringify(r.metadata),
    created_at: r.createdAt,
    updated_at: r.updatedAt,
    expires_at: r.expiresAt,
    state_reason: r.stateReason,
  };
}

function sandboxPatchToRow(p: SandboxPatch) {
  const row: Partial<Record<keyof SandboxesTable, unknown>> = {};
  if (p.state !== undefined) row.state = p.state;
  if (p.provider !== undefined) row.provider = p.provider;
  if (p.image !== undefined) row.image = p.image;
  if (p.memoryMb !== undefined) row.memory_mb = p.memoryMb;
  if (p.vcpus !== undefined) row.vcpus = p.vcpus;
  if (p.ownerId !== undefined) row.owner_id = p.ownerId;
  if (p.workerId !== undefined) row.worker_id = p.workerId;
  if (p.runtimeId !== undefined) row.runtime_id = p.runtimeId;
  if (p.template !== undefined) row.template = p.template;
  if (p.metadata !== undefined) row.metadata = JSON.stringify(p.metadata);
  if (p.expiresAt !== undefined) row.expires_at = p.expiresAt;
  if (p.stateReason !== undefined) row.state_reason = p.stateReason;
  return row as Partial<Omit<SandboxesTable, 'metadata'>> & { metadata?: string };
}

function rowToSandbox(row: Selectable<SandboxesTable>): SandboxRecord {
  return {
    id: row.id,
    state: row.state as SandboxState,
    provider: row.provider,
    image: row.image,
    memoryMb: Number(row.memory_mb),
    vcpus: Number(row.vcpus),
    ownerId: row.owner_id,
    workerId: row.worker_id,
    runtimeId: row.runtime_id,
    template: row.template,
    metadata: decodeJson<Record<string, string>>(row.metadata),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
    expiresAt: Number(row.expires_at),
    stateReason: row.state_reason,
  };
}

function rowToExecLog(row: Selectable<ExecLogsTable>): ExecLogRecord {
  return {
    id: Number(row.id),
    sandboxId: row.sandbox_id,
    command: row.command,
    args: decodeJson<string[]>(row.args),
    mode: row.mode as ExecLogRecord['mode'],
    exitCode: row.exit_code === null ? null : Number(row.exit_code),
    outcome: row.outcome as ExecLogRecord['outcome'],
    durationMs: Number(row.duration_ms),
    startedAt: Number(row.started_at),
  };
}

function templateToRow(t: TemplateRecord) {
  return {
    name: t.name,
    image: t.image,
    provider: t.provider,
    memory_mb: t.memoryMb,
    vcpus: t.vcpus,
    ttl_ms: t.ttlMs,
    network_mode: t.networkMode,
    env: JSON.stringify(t.env),
    metadata: JSON.stringify(t.metadata),
    created_at: t.createdAt,
    updated_at: t.updatedAt,
  };
}

function templatePatchToRow(p: TemplatePatch) {
  const row: Partial<Record<keyof TemplatesTable, unknown>> = {};
  if (p.image !== undefined) row.image = p.image;
  if (p.provider !== undefined) row.provider = p.provider;
  if (p.memoryMb !== undefined) row.memory_mb = p.memoryMb;
  if (p.vcpus !== undefined) row.vcpus = p.vcpus;
  if (p.ttlMs !== undefined) row.ttl_ms = p.ttlMs;
  if (p.networkMode !== undefined) row.network_mode = p.networkMode;
  if (p.env !== undefined) row.env = JSON.stringify(p.env);
  if (p.metadata !== undefined) row.metadata = JSON.stringify(p.metadata);
  return row as Partial<Omit<TemplatesTable, 'env' | 'metadata'>> & { env?: string; metadata?: string };
}

function rowToTemplate(row: Selectable<TemplatesTable>): TemplateRecord {
  return {
    name: row.name,
    image: row.image,
    provider: row.provider,
    memoryMb: nullableNumber(row.memory_mb),
    vcpus: nullableNumber(row.vcpus),
    ttlMs: nullableNumber(row.ttl_ms),
    networkMode: row.network_mode,
    env: decodeJson<Record<string, string>>(row.env),
    metadata: decodeJson<Record<string, string>>(row.metadata),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

function workerToRow(w: WorkerRecord) {
  return {
    id: w.id,
    hostname: w.hostname,
    status: w.status,
    providers: JSON.stringify(w.providers),
    capabilities: JSON.stringify(w.capabilities),
    capacity: JSON.stringify(w.capacity),
    last_heartbeat: w.lastHeartbeat,
    created_at: w.createdAt,
    updated_at: w.updatedAt,
  };
}

function rowToWorker(row: Selectable<WorkersTable>): WorkerRecord {
  return {
    id: row.id,
    hostname: row.hostname,
    status: row.status as WorkerStatus,
    providers: decodeJson<string[]>(row.providers),
    capabilities: decodeJson<string[]>(row.capabilities),
    capacity: decodeJson<WorkerRecord['capacity']>(row.capacity),
    lastHeartbeat: Number(row.last_heartbeat),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

function rowToLease(row: Selectable<LeasesTable>): LeaseRecord {
  return {
    resourceId: row.resource_id,
    resourceType: row.resource_type,
    holderId: row.holder_id,
    generation: Number(row.generation),
    expiresAt: Number(row.expires_at),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

function quotaToRow(q: QuotaRecord) {
  return {
    owner_id: q.ownerId,
    max_sandboxes: q.maxSandboxes,
    max_memory_mb: q.maxMemoryMb,
    max_vcpus: q.maxVcpus,
    max_ttl_ms: q.maxTtlMs,
    updated_at: q.updatedAt,
  };
}

function rowToQuota(row: Selectable<QuotasTable>): QuotaRecord {
  return {
    ownerId: row.owner_id,
    maxSandboxes: nullableNumber(row.max_sandboxes),
    maxMemoryMb: nullableNumber(row.max_memory_mb),
    maxVcpus: nullableNumber(row.max_vcpus),
    maxTtlMs: nullableNumber(row.max_ttl_ms),
    updatedAt: Number(row.updated_at),
  };
}

function nullableNumber(value: number | null): number | null {
  return value === null ? null : Number(value);
}
