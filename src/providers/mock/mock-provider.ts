/**
 * Provider `mock`: each sandbox is a directory on the host and commands run as plain host
 * processes. There is NO isolation (capabilities.isolation = 'none'): a command can read and
 * write anything the server's user can. Only the file API is confined to the sandbox
 * directory (see jail.ts). Use it for tests and for hosts without a container runtime, never
 * for untrusted code.
 *
 * Layout under the root: `<root>/<runtimeId>/meta.json` (labels, env, for inventory across
 * restarts), `console.log` (lifecycle lines), `execs/` (one record per running command, see
 * exec-records.ts) and `fs/` (the sandbox's `/`, with `workspace/` and `tmp/`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, constants as fsConstants } from 'node:fs';
import { access, appendFile, mkdir, open, readFile, readdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { StacyError, badRequest, notFound, providerError, timeoutError } from '../../core/errors.js';
import type { Config } from '../../config/types.js';
import { MAX_TIMER_MS, execArgv, processEvents, validateExecRequest } from '../exec-util.js';
import type {
  ExecEvent,
  ExecRequest,
  FileEntry,
  Provider,
  ProviderCapabilities,
  ProviderHealth,
  RuntimeInfo,
  RuntimeStatus,
  SpawnResult,
  SpawnSpec,
} from '../provider.js';
import { forgetExec, killOrphanExecs, recordExec } from './exec-records.js';
import { Jail } from './jail.js';

const RUNTIME_ID = /^mock-[0-9a-f]{16}$/;
const KILL_WAIT_MS = 5_000;
const STAGING_PREFIX = '.spawning-';
const STAGING_MAX_AGE_MS = 10 * 60_000;

/** The last `maxBytes` of a file as text (the first line may be partial). */
async function readTail(file: string, maxBytes: number): Promise<string> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, maxBytes);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString('utf8');
  } finally {
    await handle.close();
  }
}

interface RuntimeMeta {
  runtimeId: string;
  sandboxId: string;
  workerId: string;
  ownerId: string | null;
  image: string;
  env: Record<string, string>;
  labels: Record<string, string>;
  createdAt: number;
}

interface Runtime {
  meta: RuntimeMeta;
  dir: string;
  jail: Jail;
}

export interface MockProviderOptions {
  /** Directory holding one subdirectory per sandbox; created on demand. */
  root: string;
  now?: () => number;
  /** Size at which a sandbox's console log is trimmed to its newer half; default 1 MiB. */
  consoleLogMaxBytes?: number;
}

/** The mock root from config: `providers.mock.root`, or `<dataDir>/mock` when empty. */
export function mockRootFrom(config: Pick<Config, 'dataDir' | 'providers'>): string {
  return config.providers.mock.root !== '' ? config.providers.mock.root : join(config.dataDir, 'mock');
}

export class MockProvider implements Provider {
  readonly name = 'mock';
  readonly capabilities: ProviderCapabilities = {
    isolation: 'none',
    features: ['exec:shell', 'exec:argv', 'exec:stream', 'files', 'inventory', 'console_log'],
  };

  private readonly root: string;
  private readonly now: () => number;
  private readonly consoleLogMaxBytes: number;
  /** Live process groups per runtime, so destroy can kill what is still running. */
  private readonly running = new Map<string, Set<ChildProcess>>();
  /** Runtimes being destroyed: new work on them is refused at once. */
  private readonly destroying = new Set<string>();
  /** Console bytes appended per runtime dir since its size was last checked. */
  private readonly consoleWritten = new Map<string, number>();

  constructor(options: MockProviderOptions) {
    this.root = options.root;
    this.now = options.now ?? Date.now;
    this.consoleLogMaxBytes = options.consoleLogMaxBytes ?? 1024 * 1024;
  }

  private runtimeDir(runtimeId: string): string {
    return join(this.root, runtimeId);
  }

  private async load(runtimeId: string): Promise<Runtime | undefined> {
    if (!RUNTIME_ID.test(runtimeId) || this.destroying.has(runtimeId)) return undefined;
    const dir = this.runtimeDir(runtimeId);
    let meta: RuntimeMeta;
    try {
      meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as RuntimeMeta;
    } catch {
      return undefined;
    }
    try {
      return { meta, dir, jail: new Jail(await realpath(join(dir, 'fs'))) };
    } catch {
      return undefined;
    }
  }

  private async runtime(runtimeId: string): Promise<Runtime> {
    const rt = await this.load(runtimeId);
    if (rt === undefined) throw notFound('runtime', runtimeId);
    return rt;
  }

  /**
   * Appends a lifecycle line. The log of a long-lived, busy sandbox is trimmed to its newest
   * half once it passes consoleLogMaxBytes, checked every sixteenth of that written.
   */
  private async log(dir: string, line: string): Promise<void> {
    const file = join(dir, 'console.log');
    const text = `${new Date(this.now()).toISOString()} ${line}\n`;
    try {
      await appendFile(file, text);
      const written = (this.consoleWritten.get(dir) ?? 0) + text.length;
      if (written < this.consoleLogMaxBytes / 16) {
        this.consoleWritten.set(dir, written);
        return;
      }
      this.consoleWritten.delete(dir);
      if ((await stat(file)).size > this.consoleLogMaxBytes) {
        const tail = await readTail(file, Math.floor(this.consoleLogMaxBytes / 2));
        await writeFile(file, tail.slice(tail.indexOf('\n') + 1));
      }
    } catch {
      // The console log is best-effort: a full disk must not fail the operation it describes.
    }
  }

  async spawn(spec: SpawnSpec): Promise<SpawnResult> {
    const runtimeId = `mock-${randomBytes(8).toString('hex')}`;
    const dir = this.runtimeDir(runtimeId);
    // Built under a hidden name and renamed into place, so a crash mid-spawn never leaves a
    // half-made runtime that inventory or status could see; leftovers are swept later.
    const staging = join(this.root, `${STAGING_PREFIX}${runtimeId}`);
    try {
      await mkdir(join(staging, 'fs', 'workspace'), { recursive: true, mode: 0o755 });
      await mkdir(join(staging, 'fs', 'tmp'), { recursive: true, mode: 0o755 });
      const meta: RuntimeMeta = {
        runtimeId,
        sandboxId: spec.sandboxId,
        workerId: spec.workerId,
        ownerId: spec.ownerId,
        image: spec.image,
        env: spec.env,
        labels: spec.labels,
        createdAt: this.now(),
      };
      await writeFile(join(staging, 'meta.json'), JSON.stringify(meta), { mode: 0o600 });
      const line = `${new Date(this.now()).toISOString()} spawned sandbox=${spec.sandboxId} image=${spec.image} isolation=none\n`;
      await writeFile(join(staging, 'console.log'), line);
      await rename(staging, dir);
    } catch (err) {
      await rm(staging, { recursive: true, force: true }).catch(() => undefined);
      throw providerError(`mock: cannot create sandbox directory under ${this.root}`, err);
    }
    return { runtimeId };
  }

  /** Removes staging directories of spawns that died midway (older than STAGING_MAX_AGE_MS). */
  private async sweepStaging(names: string[]): Promise<void> {
    for (const name of names.filter((n) => n.startsWith(STAGING_PREFIX))) {
      const path = join(this.root, name);
      try {
        if (Date.now() - (await stat(path)).mtimeMs > STAGING_MAX_AGE_MS) await rm(path, { recursive: true, force: true });
      } catch {
        // Gone already, or finished and renamed meanwhile.
      }
    }
  }

  async status(runtimeId: string): Promise<RuntimeStatus> {
    return (await this.load(runtimeId)) === undefined ? 'missing' : 'running';
  }

  async destroy(runtimeId: string): Promise<void> {
    if (!RUNTIME_ID.test(runtimeId)) return;
    this.destroying.add(runtimeId);
    try {
      const children = [...(this.running.get(runtimeId) ?? [])];
      await Promise.all(children.map((child) => killTree(child)));
      await killOrphanExecs(this.runtimeDir(runtimeId), this.ownGroups());
      await rm(this.runtimeDir(runtimeId), { recursive: true, force: true, maxRetries: 3 });
      this.consoleWritten.delete(this.runtimeDir(runtimeId));
    } catch (err) {
      throw providerError(`mock: cannot remove ${runtimeId}`, err);
    } finally {
      this.destroying.delete(runtimeId);
    }
  }

  execStream(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    return { [Symbol.asyncIterator]: () => this.runExec(runtimeId, request, signal)[Symbol.asyncIterator]() };
  }

  private async *runExec(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncGenerator<ExecEvent> {
    validateExecRequest(request);
    const rt = await this.runtime(runtimeId);
    signal?.throwIfAborted();
    const workdir = request.workdir ?? '/workspace';
    const cwd = await rt.jail.resolve(workdir);
    if (!(await stat(cwd)).isDirectory()) throw badRequest(`workdir ${workdir}: not a directory`);
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      HOME: join(rt.jail.root, 'workspace'),
      TMPDIR: join(rt.jail.root, 'tmp'),
      LANG: 'C.UTF-8',
      SANDBOX_ID: rt.meta.sandboxId,
      ...rt.meta.env,
      ...request.env,
    };
    const [file, ...args] = execArgv(request);
    await this.log(rt.dir, `exec started mode=${request.mode}`);
    // From here on nothing awaits until the output is wired up: a quiet command can close
    // its pipes and exit within a tick, and those events must not be missed.
    const startedAt = this.now();
    // A new process group per command, so a timeout or cancel kills everything it started.
    let child: ChildProcess;
    try {
      child = spawn(file as string, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      throw providerError('mock: cannot start the command', err);
    }
    trackClose(child);
    const record = child.pid === undefined ? undefined : recordExec(rt.dir, child.pid);
    child.once('close', () => forgetExec(record));
    const group = this.running.get(runtimeId) ?? new Set<ChildProcess>();
    this.running.set(runtimeId, group);
    group.add(child);
    // A destroy that began after the runtime check above did not see this child: kill it now.
    if (this.destroying.has(runtimeId)) void killTree(child);

    let ended: 'timeout' | 'aborted' | undefined;
    const timer = setTimeout(() => {
      ended ??= 'timeout';
      void killTree(child);
    }, Math.min(request.timeoutMs, MAX_TIMER_MS));
    const onAbort = (): void => {
      ended ??= 'aborted';
      void killTree(child);
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    const exited = new Promise<number>((resolve, reject) => {
      let spawnError: number | undefined;
      child.once('error', (err: NodeJS.ErrnoException) => {
        // The binary could not be started (argv mode): report it like a shell would.
        spawnError = err.code === 'ENOENT' ? 127 : 126;
      });
      child.once('close', (code, sig) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        group.delete(child);
        if (group.size === 0 && this.running.get(runtimeId) === group) this.running.delete(runtimeId);
        if (ended === 'timeout') {
          void this.log(rt.dir, `exec timed out after ${request.timeoutMs}ms`);
          reject(timeoutError(`command exceeded its ${request.timeoutMs}ms timeout and was killed`));
          return;
        }
        if (ended === 'aborted') {
          reject(signal?.reason instanceof Error ? signal.reason : new StacyError('bad_request', 'exec cancelled'));
          return;
        }
        if (spawnError !== undefined && !existsSync(cwd)) {
          // The sandbox was destroyed between the lookup and the start.
          reject(notFound('runtime', runtimeId));
          return;
        }
        const exitCode = spawnError ?? code ?? 128 + (sig === null ? 0 : (osConstants.signals[sig] ?? 0));
        void this.log(rt.dir, `exec exited code=${exitCode}`);
        resolve(exitCode);
      });
    });
    try {
      yield* processEvents({
        stdout: child.stdout as Readable,
        stderr: child.stderr as Readable,
        exited,
        startedAt,
        now: this.now,
        cancel: () => killTree(child),
      });
    } finally {
      await killTree(child);
    }
  }

  async writeFile(runtimeId: string, path: string, content: Buffer | Readable, mode?: number): Promise<void> {
    await (await this.runtime(runtimeId)).jail.writeFile(path, content, mode);
  }

  async readFile(runtimeId: string, path: string): Promise<Readable> {
    return (await this.runtime(runtimeId)).jail.readFile(path);
  }

  async listFiles(runtimeId: string, path: string): Promise<FileEntry[]> {
    return (await this.runtime(runtimeId)).jail.list(path);
  }

  async deleteFile(runtimeId: string, path: string, recursive: boolean): Promise<void> {
    await (await this.runtime(runtimeId)).jail.delete(path, recursive);
  }

  async moveFile(runtimeId: string, fromPath: string, toPath: string): Promise<void> {
    await (await this.runtime(runtimeId)).jail.move(fromPath, toPath);
  }

  async chmod(runtimeId: string, path: string, mode: number): Promise<void> {
    await (await this.runtime(runtimeId)).jail.chmod(path, mode);
  }

  async stat(runtimeId: string, path: string): Promise<FileEntry> {
    return (await this.runtime(runtimeId)).jail.stat(path);
  }

  async glob(runtimeId: string, pattern: string): Promise<string[]> {
    return (await this.runtime(runtimeId)).jail.glob(pattern);
  }

  async consoleLog(runtimeId: string, lines: number): Promise<string[]> {
    const rt = await this.runtime(runtimeId);
    if (lines <= 0) return [];
    const text = await readTail(join(rt.dir, 'console.log'), this.consoleLogMaxBytes).catch(() => '');
    return text
      .split('\n')
      .filter((l) => l.length > 0)
      .slice(-lines);
  }

  async health(): Promise<ProviderHealth> {
    const started = performance.now();
    try {
      await mkdir(this.root, { recursive: true });
      await access(this.root, fsConstants.W_OK);
      return {
        healthy: true,
        latencyMs: performance.now() - started,
        details: { isolation: 'none', root: this.root, runtimes: (await this.inventory()).length },
      };
    } catch (err) {
      return {
        healthy: false,
        latencyMs: performance.now() - started,
        error: `mock root ${this.root} is not writable: ${(err as Error).message}`,
        details: { isolation: 'none', root: this.root },
      };
    }
  }

  async inventory(): Promise<RuntimeInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw providerError(`mock: cannot read ${this.root}`, err);
    }
    await this.sweepStaging(names);
    const out: RuntimeInfo[] = [];
    for (const name of names.filter((n) => RUNTIME_ID.test(n)).sort()) {
      const rt = await this.load(name);
      if (rt === undefined) continue;
      // Commands left running by a previous server process that died: nobody can reach
      // their output any more, so they must not keep running on the host.
      await killOrphanExecs(rt.dir, this.ownGroups());
      out.push({
        runtimeId: name,
        status: 'running',
        sandboxId: rt.meta.sandboxId,
        workerId: rt.meta.workerId,
        ...(rt.meta.ownerId === null ? {} : { ownerId: rt.meta.ownerId }),
        createdAt: rt.meta.createdAt,
      });
    }
    return out;
  }

  /** Process groups of the commands this instance started and still runs. */
  private ownGroups(): Set<number> {
    const groups = new Set<number>();
    for (const set of this.running.values()) for (const child of set) if (child.pid !== undefined) groups.add(child.pid);
    return groups;
  }

  /** Kills every command still running; sandbox directories stay for the next start. */
  async close(): Promise<void> {
    const all = [...this.running.values()].flatMap((set) => [...set]);
    await Promise.all(all.map((child) => killTree(child)));
  }
}

/** Close promises of spawned children, and which of them have closed (checked synchronously). */
const closedOf = new WeakMap<ChildProcess, Promise<void>>();
const closedChildren = new WeakSet<ChildProcess>();

function trackClose(child: ChildProcess): void {
  closedOf.set(
    child,
    new Promise<void>((resolve) =>
      child.once('close', () => {
        closedChildren.add(child);
        resolve();
      }),
    ),
  );
}

/**
 * SIGKILLs the child's whole process group (synchronously, before the first await) unless it
 * has already closed, then waits (bounded) for the close. A closed child is left alone: its
 * group id may already belong to someone else.
 */
function killTree(child: ChildProcess): Promise<void> {
  const closed = closedOf.get(child);
  if (closed === undefined || closedChildren.has(child)) return Promise.resolve();
  if (child.pid !== undefined) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // ESRCH: the group is already gone.
    }
  }
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, KILL_WAIT_MS)))]).finally(() =>
    clearTimeout(timer),
  );
}
