import type {
  ExecLogRecord,
  LeaseRecord,
  QuotaRecord,
  SandboxRecord,
  SandboxState,
  TemplateRecord,
  WorkerRecord,
} from '../core/types.js';

export interface SandboxFilter {
  states?: readonly SandboxState[];
  ownerId?: string;
  workerId?: string;
  provider?: string;
  /** Only sandboxes with expiresAt <= this instant (epoch ms). */
  expiresBefore?: number;
}

export type SandboxPatch = Partial<Omit<SandboxRecord, 'id' | 'createdAt'>>;
export type TemplatePatch = Partial<Omit<TemplateRecord, 'name' | 'createdAt'>>;

/** A worker with the count of its sandboxes in the asked-for states. */
export interface WorkerLoad {
  worker: WorkerRecord;
  /** Its sandboxes in the given states. */
  active: number;
  /** Of those, the ones of the given owner (0 when no owner was given). */
  ownerActive: number;
}

export interface AcquireLeaseInput {
  resourceId: string;
  resourceType: string;
  holderId: string;
  ttlMs: number;
}

/**
 * The durable source of truth. Implementations: SQLite (single node) and PostgreSQL (cluster).
 * Both pass the same contract suite in test/contracts/store.
 *
 * Errors: `not_found` for a missing row where the method says so, `conflict` for a duplicate
 * key, `lease_conflict` when a lease is held by someone else or has expired.
 */
export interface Store {
  readonly dialect: 'sqlite' | 'postgres';
  /** Applies pending migrations; safe to call on every start and from several processes. */
  migrate(): Promise<void>;
  /** Throws when the database cannot be reached. */
  ping(): Promise<void>;
  close(): Promise<void>;
  /** The store's clock (epoch ms): the database server's on PostgreSQL, the host's on SQLite. */
  now(): Promise<number>;

  /** Inserts; `conflict` when the id exists. */
  createSandbox(record: SandboxRecord): Promise<void>;
  getSandbox(id: string): Promise<SandboxRecord | undefined>;
  /** Applies the patch (and bumps updatedAt); `not_found` when missing. */
  updateSandbox(id: string, patch: SandboxPatch): Promise<SandboxRecord>;
  listSandboxes(filter?: SandboxFilter): Promise<SandboxRecord[]>;
  countSandboxes(filter?: SandboxFilter): Promise<number>;
  /** Removes records; used to forget destroyed sandboxes after retention. Returns rows removed. */
  deleteSandboxes(ids: readonly string[]): Promise<number>;

  appendExecLog(log: Omit<ExecLogRecord, 'id'>): Promise<ExecLogRecord>;
  listExecLogs(sandboxId: string, limit: number): Promise<ExecLogRecord[]>;

  /** `conflict` when the name exists. */
  createTemplate(template: TemplateRecord): Promise<void>;
  getTemplate(name: string): Promise<TemplateRecord | undefined>;
  listTemplates(): Promise<TemplateRecord[]>;
  /** `not_found` when missing. */
  updateTemplate(name: string, patch: TemplatePatch): Promise<TemplateRecord>;
  /** `not_found` when missing. */
  deleteTemplate(name: string): Promise<void>;

  /** Insert or update by id; createdAt of an existing row is kept. Returns the stored row. */
  saveWorker(worker: WorkerRecord): Promise<WorkerRecord>;
  getWorker(id: string): Promise<WorkerRecord | undefined>;
  listWorkers(): Promise<WorkerRecord[]>;
  /** `not_found` when missing. */
  deleteWorker(id: string): Promise<void>;
  /**
   * Every registered worker, by id, with its count of sandboxes in `states`, in total and of
   * `ownerId`: what placement needs, in one query instead of a list of every sandbox.
   */
  listWorkerLoads(states: readonly SandboxState[], ownerId: string | null): Promise<WorkerLoad[]>;

  /**
   * Succeeds when no lease exists, the lease has expired, or `holderId` already holds it; every
   * success increments `generation`. `lease_conflict` when another holder's lease is unexpired.
   * Atomic: concurrent acquires on one resource have at most one winner. Expiry uses the
   * store's clock.
   */
  acquireLease(input: AcquireLeaseInput): Promise<LeaseRecord>;
  /** Only the current holder, only before expiry; increments generation. `lease_conflict` otherwise. */
  renewLease(resourceId: string, holderId: string, ttlMs: number): Promise<LeaseRecord>;
  /** Only the current holder; `lease_conflict` when someone else holds it. Missing lease is a no-op. */
  releaseLease(resourceId: string, holderId: string): Promise<void>;
  getLease(resourceId: string): Promise<LeaseRecord | undefined>;
  /**
   * Deletes leases that expired at or before `expiredBefore` (store-clock epoch ms) and whose
   * resource is gone: for `sandbox` leases, no sandbox record with that id exists any more.
   * Returns rows removed. Generations stay monotonic: a later acquire of a pruned resource
   * starts above every generation ever pruned.
   */
  pruneLeases(expiredBefore: number): Promise<number>;
  listLeases(filter?: { holderId?: string }): Promise<LeaseRecord[]>;

  getQuota(ownerId: string): Promise<QuotaRecord | undefined>;
  listQuotas(): Promise<QuotaRecord[]>;
  putQuota(quota: QuotaRecord): Promise<QuotaRecord>;
  /** `not_found` when missing. */
  deleteQuota(ownerId: string): Promise<void>;
}
