/**
 * Domain types shared by every layer. Timestamps are epoch milliseconds internally and are
 * rendered as ISO-8601 only at the API edge.
 */

export const SANDBOX_STATES = ['creating', 'running', 'unhealthy', 'expired', 'stopped', 'destroyed', 'error'] as const;
export type SandboxState = (typeof SANDBOX_STATES)[number];

/** States in which a sandbox still counts against limits and may own a runtime. */
export const ACTIVE_SANDBOX_STATES: readonly SandboxState[] = ['creating', 'running', 'unhealthy', 'stopped', 'error'];
/** Terminal states: the runtime is gone (or must be) and the record is history. */
export const TERMINAL_SANDBOX_STATES: readonly SandboxState[] = ['destroyed', 'expired'];

export interface SandboxRecord {
  id: string;
  state: SandboxState;
  provider: string;
  image: string;
  memoryMb: number;
  vcpus: number;
  ownerId: string | null;
  workerId: string | null;
  /** The provider's handle for the runtime; null until the runtime exists. */
  runtimeId: string | null;
  template: string | null;
  metadata: Record<string, string>;
  createdAt: number;
  updatedAt: number;
  expiresAt: number;
  /** Why the sandbox is in `error`/`unhealthy`, for operators. */
  stateReason: string | null;
}

export interface ExecLogRecord {
  id: number;
  sandboxId: string;
  command: string;
  args: string[];
  mode: 'shell' | 'argv';
  exitCode: number | null;
  /** Outcome: ok (any exit code), timeout, error. */
  outcome: 'ok' | 'timeout' | 'error';
  durationMs: number;
  startedAt: number;
}

export interface TemplateRecord {
  name: string;
  image: string | null;
  provider: string | null;
  memoryMb: number | null;
  vcpus: number | null;
  ttlMs: number | null;
  networkMode: string | null;
  env: Record<string, string>;
  metadata: Record<string, string>;
  createdAt: number;
  updatedAt: number;
}

export const WORKER_STATUSES = ['online', 'draining', 'offline', 'unhealthy'] as const;
export type WorkerStatus = (typeof WORKER_STATUSES)[number];

export interface WorkerCapacity {
  maxSandboxes?: number;
  maxSandboxesPerOwner?: number;
  rpcUrl?: string;
  previewDomain?: string;
}

export interface WorkerRecord {
  id: string;
  hostname: string;
  status: WorkerStatus;
  /** Provider names this worker runs; empty means any. */
  providers: string[];
  capabilities: string[];
  capacity: WorkerCapacity;
  lastHeartbeat: number;
  createdAt: number;
  updatedAt: number;
}

export interface LeaseRecord {
  resourceId: string;
  resourceType: string;
  holderId: string;
  /** Fencing token: incremented by every successful acquire and renew. */
  generation: number;
  expiresAt: number;
  createdAt: number;
  updatedAt: number;
}

export interface QuotaRecord {
  ownerId: string;
  maxSandboxes: number | null;
  maxMemoryMb: number | null;
  maxVcpus: number | null;
  maxTtlMs: number | null;
  updatedAt: number;
}
