/**
 * Row shapes of the store's tables as Kysely sees them. Timestamps are epoch milliseconds
 * (INTEGER on SQLite, BIGINT parsed to number on PostgreSQL). JSON columns are written as text
 * and read back as text (SQLite) or already parsed (PostgreSQL jsonb); `decodeJson` accepts both.
 */
import type { ColumnType, Generated } from 'kysely';

/** A JSON column: written as a JSON string, read back as a string or a parsed value. */
export type JsonColumn = ColumnType<unknown, string, string>;

export interface SandboxesTable {
  id: string;
  state: string;
  provider: string;
  image: string;
  memory_mb: number;
  vcpus: number;
  owner_id: string | null;
  worker_id: string | null;
  runtime_id: string | null;
  template: string | null;
  metadata: JsonColumn;
  created_at: number;
  updated_at: number;
  expires_at: number;
  state_reason: string | null;
}

export interface ExecLogsTable {
  id: Generated<number>;
  sandbox_id: string;
  command: string;
  args: JsonColumn;
  mode: string;
  exit_code: number | null;
  outcome: string;
  duration_ms: number;
  started_at: number;
}

export interface TemplatesTable {
  name: string;
  image: string | null;
  provider: string | null;
  memory_mb: number | null;
  vcpus: number | null;
  ttl_ms: number | null;
  network_mode: string | null;
  env: JsonColumn;
  metadata: JsonColumn;
  created_at: number;
  updated_at: number;
}

export interface WorkersTable {
  id: string;
  hostname: string;
  status: string;
  providers: JsonColumn;
  capabilities: JsonColumn;
  capacity: JsonColumn;
  last_heartbeat: number;
  created_at: number;
  updated_at: number;
}

export interface LeasesTable {
  resource_id: string;
  resource_type: string;
  holder_id: string;
  generation: number;
  expires_at: number;
  created_at: number;
  updated_at: number;
}

/** One row (id = 1): every generation ever pruned is at or below `generation`. */
export interface LeaseFloorTable {
  id: number;
  generation: number;
}

export interface QuotasTable {
  owner_id: string;
  max_sandboxes: number | null;
  max_memory_mb: number | null;
  max_vcpus: number | null;
  max_ttl_ms: number | null;
  updated_at: number;
}

export interface SchemaMigrationsTable {
  version: number;
  name: string;
  applied_at: number;
}

export interface Database {
  sandboxes: SandboxesTable;
  exec_logs: ExecLogsTable;
  templates: TemplatesTable;
  workers: WorkersTable;
  leases: LeasesTable;
  lease_floor: LeaseFloorTable;
  quotas: QuotasTable;
  schema_migrations: SchemaMigrationsTable;
}
