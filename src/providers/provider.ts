import type { Readable } from 'node:stream';

/**
 * A Provider turns a sandbox request into an isolated runtime and operates on it. Every
 * implementation passes the one contract suite in test/contracts/provider.
 *
 * Error contract (all StacyError): an unknown or destroyed runtime → `not_found`; exec past its
 * deadline → `timeout` (after killing the whole process tree); a missing image →
 * `image_not_found`; a runtime failure → `provider_error`. A non-zero exit code is a result.
 * Paths handed to file operations are already normalised absolute sandbox paths (see
 * core/paths.ts); the provider must still make sure symlinks inside the sandbox never lead
 * to the host.
 */
export interface Provider {
  readonly name: string;
  readonly capabilities: ProviderCapabilities;

  spawn(spec: SpawnSpec): Promise<SpawnResult>;
  /** `missing` when the provider has no such runtime (never throws not_found). */
  status(runtimeId: string): Promise<RuntimeStatus>;
  /** Idempotent: destroying a missing runtime succeeds. */
  destroy(runtimeId: string): Promise<void>;

  /**
   * Runs a command and yields output as it is produced, then exactly one `exit` event last.
   * Breaking out of the iteration (or aborting `signal`) kills the command's process tree.
   */
  execStream(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecEvent>;

  writeFile(runtimeId: string, path: string, content: Buffer | Readable, mode?: number): Promise<void>;
  /** `not_found` when the file is missing; a directory is `bad_request`. */
  readFile(runtimeId: string, path: string): Promise<Readable>;
  listFiles(runtimeId: string, path: string): Promise<FileEntry[]>;
  deleteFile(runtimeId: string, path: string, recursive: boolean): Promise<void>;
  moveFile(runtimeId: string, fromPath: string, toPath: string): Promise<void>;
  chmod(runtimeId: string, path: string, mode: number): Promise<void>;
  stat(runtimeId: string, path: string): Promise<FileEntry>;
  /** Absolute paths matching a glob (`*`, `?`, `**`, `[...]`), sorted. */
  glob(runtimeId: string, pattern: string): Promise<string[]>;

  /** The last `lines` lines of the runtime's console (PID 1's output). */
  consoleLog(runtimeId: string, lines: number): Promise<string[]>;
  health(): Promise<ProviderHealth>;
  /** Runtimes this provider knows about, for start-up reconciliation. Optional. */
  inventory?(): Promise<RuntimeInfo[]>;
  /** Releases provider-wide resources (connections, timers). Runtimes keep running. */
  close?(): Promise<void>;
}

export interface ProviderCapabilities {
  /** `none` means commands run as plain host processes (mock): never for untrusted code. */
  isolation: 'none' | 'container' | 'vm';
  /** Provider-specific feature flags, e.g. `network:bridge`, `memory_limit`. */
  features: string[];
}

export interface SpawnSpec {
  sandboxId: string;
  image: string;
  memoryMb: number;
  vcpus: number;
  ownerId: string | null;
  workerId: string;
  env: Record<string, string>;
  networkMode?: string;
  /** Stored on the runtime (labels/annotations) so inventory can map it back. */
  labels: Record<string, string>;
}

export interface SpawnResult {
  runtimeId: string;
}

export type RuntimeStatus = 'running' | 'stopped' | 'missing';

export interface ExecRequest {
  command: string;
  args: string[];
  /** shell: `/bin/sh -c` with args shell-quoted and appended; argv: exec directly, no shell. */
  mode: 'shell' | 'argv';
  env: Record<string, string>;
  workdir?: string;
  timeoutMs: number;
}

export type ExecEvent =
  | { type: 'stdout' | 'stderr'; data: Buffer }
  | { type: 'exit'; exitCode: number; durationMs: number };

export interface FileEntry {
  name: string;
  path: string;
  size: number;
  isDir: boolean;
  /** epoch ms */
  modTime: number;
  /** permission bits, e.g. 0o644 */
  mode: number;
}

export interface ProviderHealth {
  healthy: boolean;
  latencyMs: number;
  error?: string;
  /** Free-form, already redacted details (binary versions, socket path, isolation level). */
  details: Record<string, unknown>;
}

export interface RuntimeInfo {
  runtimeId: string;
  status: RuntimeStatus;
  /** From labels/annotations when the runtime was created by StacyVM. */
  sandboxId?: string;
  workerId?: string;
  ownerId?: string;
  createdAt?: number;
}
