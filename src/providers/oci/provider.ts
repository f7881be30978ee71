import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync } from 'node:fs';
import { chown, mkdir, readFile, readdir, rm, rmdir, stat as fsStat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { PassThrough } from 'node:stream';
import type { Readable } from 'node:stream';
import picomatch from 'picomatch';
import type { OciProviderConfig } from '../../config/types.js';
import { StacyError, badRequest, notFound, providerError, timeoutError } from '../../core/errors.js';
import type { ImageStore } from '../../images/store.js';
import { findStaticBusybox } from '../../images/store.js';
import { runTool } from '../../images/proc.js';
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
import { allocateAddress, createSandboxNetwork, ensureBridge, parseSubnet, removeSandboxNetwork } from './network.js';
import { BUSYBOX_IN_CONTAINER, DEFAULT_CAPS, buildRuntimeSpec, capabilitySet } from './spec.js';

const ANNOTATION = {
  sandboxId: 'io.stacyvm.sandbox-id',
  workerId: 'io.stacyvm.worker-id',
  ownerId: 'io.stacyvm.owner-id',
  createdAt: 'io.stacyvm.created-at',
  image: 'io.stacyvm.image',
  labelPrefix: 'io.stacyvm.label.',
};

/** What the provider remembers about a runtime, on disk in the bundle so restarts lose nothing. */
interface RuntimeMeta {
  runtimeId: string;
  sandboxId: string;
  workerId: string;
  ownerId: string | null;
  createdAt: number;
  uid: number;
  gid: number;
  env: string[];
  caps: string[];
  cgroupsPath: string;
  network: 'none' | 'bridge';
  /** The sandbox's address on the bridge (bridge mode). */
  address?: string;
}

export interface OciProviderOptions {
  config: OciProviderConfig;
  images: ImageStore;
  /** Static busybox bind-mounted into every sandbox (PID 1 and file operations). */
  busyboxPath?: string;
  /** When set, health fails unless this image resolves (so `auto` only picks a usable oci). */
  defaultImage?: string;
}

/** Exit codes of the file-operation scripts, mapped to catalog errors. */
const FILE_EXIT: Record<number, (path: string) => StacyError> = {
  3: (p) => notFound('file', p),
  4: (p) => badRequest(`${p} is a directory`),
  5: (p) => badRequest(`${p} is not a directory`),
  6: (p) => new StacyError('conflict', `${p} is a non-empty directory (use recursive)`),
  7: (p) => new StacyError('forbidden', `permission denied: ${p}`),
  // FIFOs and devices could block or never end; only regular files are read.
  9: (p) => badRequest(`${p} is not a regular file`),
};

const B = BUSYBOX_IN_CONTAINER;

/** Environment variable naming the exec a process belongs to (see killExecTree). */
const EXEC_MARKER = 'STACYVM_EXEC_ID';

/**
 * Sandboxes as runc containers: one OCI bundle per sandbox under `<root>/bundles/<id>`, an overlay
 * rootfs (image read-only below, per-sandbox upper), runc state under `<root>/runc-state` so other
 * runc users are never touched. All state lives on disk; a restarted server re-adopts everything.
 */
export class OciProvider implements Provider {
  readonly name = 'oci';
  readonly capabilities: ProviderCapabilities;
  private readonly cfg: OciProviderConfig;
  private readonly images: ImageStore;
  private readonly stateRoot: string;
  private readonly bundlesRoot: string;
  private readonly busybox: string | null;
  private readonly defaultImage: string | undefined;
  private readonly metaCache = new Map<string, RuntimeMeta>();
  private bridgeReady: Promise<void> | null = null;
  /** Serialises address allocation so concurrent spawns never pick the same address. */
  private addressLock: Promise<unknown> = Promise.resolve();

  constructor(opts: OciProviderOptions) {
    this.cfg = opts.config;
    this.images = opts.images;
    this.stateRoot = join(opts.config.root, 'runc-state');
    this.bundlesRoot = join(opts.config.root, 'bundles');
    this.busybox = opts.busyboxPath ?? findStaticBusybox();
    this.defaultImage = opts.defaultImage;
    this.capabilities = {
      isolation: 'container',
      features: ['memory_limit', 'cpu_limit', 'pids_limit', 'seccomp', 'readonly_rootfs', 'network:none', 'network:bridge'],
    };
  }

  private runc(args: string[], allowFailure = false): ReturnType<typeof runTool> {
    return runTool(this.cfg.runcPath, ['--root', this.stateRoot, ...args], { allowFailure, timeoutMs: 60_000 });
  }

  private bundleOf(runtimeId: string): string {
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(runtimeId) || runtimeId.startsWith('.')) throw notFound('runtime', runtimeId);
    return join(this.bundlesRoot, runtimeId);
  }

  private userIds(): { uid: number; gid: number } {
    const m = /^(\d+)(?::(\d+))?$/.exec(this.cfg.user.trim());
    if (!m) throw badRequest(`providers.oci.user must be "uid:gid" (numeric), got ${JSON.stringify(this.cfg.user)}`);
    const uid = Number(m[1]);
    return { uid, gid: m[2] === undefined ? uid : Number(m[2]) };
  }

  async spawn(spec: SpawnSpec): Promise<SpawnResult> {
    if (!this.busybox) throw providerError('oci provider needs a static busybox on the host (apt-get install busybox-static)');
    const image = await this.images.resolve(spec.image);
    const safeSandbox = spec.sandboxId.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64);
    const runtimeId = `${safeSandbox}-${randomBytes(3).toString('hex')}`;
    const bundle = this.bundleOf(runtimeId);
    const { uid, gid } = this.userIds();
    const caps = [...new Set([...DEFAULT_CAPS, ...this.cfg.addedCaps.map(normCap)])];
    const cgroupsPath = `/stacyvm/${runtimeId}`;
    const env = mergeEnv(image.meta.env, { HOME: uid === 0 ? '/root' : '/workspace', ...spec.env, SANDBOX_ID: spec.sandboxId });
    const meta: RuntimeMeta = {
      runtimeId,
      sandboxId: spec.sandboxId,
      workerId: spec.workerId,
      ownerId: spec.ownerId,
      createdAt: Date.now(),
      uid,
      gid,
      env,
      caps,
      cgroupsPath,
      network: 'none',
    };
    const annotations: Record<string, string> = {
      [ANNOTATION.sandboxId]: spec.sandboxId,
      [ANNOTATION.workerId]: spec.workerId,
      [ANNOTATION.createdAt]: String(meta.createdAt),
      [ANNOTATION.image]: image.meta.name,
    };
    if (spec.ownerId !== null) annotations[ANNOTATION.ownerId] = spec.ownerId;
    for (const [k, v] of Object.entries(spec.labels)) annotations[ANNOTATION.labelPrefix + k] = v;
    const network = spec.networkMode ?? this.cfg.networkMode;
    if (network !== 'none' && network !== 'bridge') {
      throw badRequest(`oci provider: unknown network mode ${JSON.stringify(network)} (use "none" or "bridge")`);
    }
    meta.network = network;
    try {
      for (const d of ['upper', 'work', 'rootfs', 'workspace']) await mkdir(join(bundle, d), { recursive: true, mode: 0o755 });
      await chown(join(bundle, 'workspace'), uid, gid);
      await writeFile(join(bundle, 'hosts'), `127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t${spec.sandboxId}\n`);
      await writeFile(join(bundle, 'hostname'), `${spec.sandboxId}\n`);
      let netnsPath: string | undefined;
      if (network === 'bridge') {
        await this.ensureBridge();
        meta.address = await this.allocate(runtimeId, bundle, meta);
        netnsPath = await createSandboxNetwork(runtimeId, this.cfg.bridgeName, this.cfg.bridgeSubnet, meta.address);
        await writeFile(join(bundle, 'resolv.conf'), await hostNameservers());
      } else {
        await writeFile(join(bundle, 'stacyvm.json'), JSON.stringify(meta));
      }
      await runTool('mount', [
        '-t',
        'overlay',
        'overlay',
        '-o',
        `lowerdir=${image.rootfs},upperdir=${join(bundle, 'upper')},workdir=${join(bundle, 'work')}`,
        join(bundle, 'rootfs'),
      ]);
      const config = buildRuntimeSpec({
        sandboxId: spec.sandboxId,
        uid,
        gid,
        env,
        memoryMb: spec.memoryMb,
        vcpus: spec.vcpus,
        pidsLimit: this.cfg.pidsLimit,
        caps,
        readOnlyRootfs: this.cfg.readOnlyRootfs,
        busyboxHostPath: this.busybox,
        workspaceHostPath: join(bundle, 'workspace'),
        hostsHostPath: join(bundle, 'hosts'),
        hostnameHostPath: join(bundle, 'hostname'),
        cgroupsPath,
        annotations,
        netnsPath,
        resolvConfHostPath: netnsPath ? join(bundle, 'resolv.conf') : undefined,
      });
      await writeFile(join(bundle, 'config.json'), JSON.stringify(config, null, 1));
      await this.startContainer(runtimeId, bundle);
      this.metaCache.set(runtimeId, meta);
      return { runtimeId };
    } catch (err) {
      const log = await this.consoleLog(runtimeId, 20).catch(() => []);
      await this.destroy(runtimeId).catch(() => undefined);
      if (err instanceof StacyError && err.code !== 'provider_error') throw err;
      throw providerError(`oci spawn failed: ${(err as Error).message}${log.length ? `; console: ${log.join(' | ')}` : ''}`, err);
    }
  }

  private ensureBridge(): Promise<void> {
    this.bridgeReady ??= ensureBridge(this.cfg.bridgeName, this.cfg.bridgeSubnet).catch((err: unknown) => {
      this.bridgeReady = null;
      throw err;
    });
    return this.bridgeReady;
  }

  /** Picks a free bridge address and records it in the bundle before anyone else can pick it. */
  private allocate(runtimeId: string, bundle: string, meta: RuntimeMeta): Promise<string> {
    const next = this.addressLock.then(async () => {
      const used = new Set<string>();
      for (const d of await readdir(this.bundlesRoot).catch(() => [] as string[])) {
        if (d === runtimeId) continue;
        try {
          const m = JSON.parse(await readFile(join(this.bundlesRoot, d, 'stacyvm.json'), 'utf8')) as RuntimeMeta;
          if (m.address) used.add(m.address);
        } catch {
          // not a runtime bundle
        }
      }
      const address = allocateAddress(parseSubnet(this.cfg.bridgeSubnet), used);
      await writeFile(join(bundle, 'stacyvm.json'), JSON.stringify({ ...meta, address }));
      return address;
    });
    this.addressLock = next.catch(() => undefined);
    return next;
  }

  /** `runc run --detach` with PID 1's stdout/stderr going to the console log file. */
  private startContainer(runtimeId: string, bundle: string): Promise<void> {
    const fd = openSync(join(bundle, 'console.log'), 'a', 0o640);
    return new Promise<void>((resolve, reject) => {
      const child = spawn(
        this.cfg.runcPath,
        ['--root', this.stateRoot, 'run', '--detach', '--bundle', bundle, runtimeId],
        { stdio: ['ignore', fd, fd] },
      );
      child.on('error', (err) => {
        closeSync(fd);
        reject(providerError(`runc: ${err.message}`, err));
      });
      child.on('exit', (code) => {
        closeSync(fd);
        if (code === 0) resolve();
        else reject(providerError(`runc run exited with ${code}`));
      });
    });
  }

  private async meta(runtimeId: string): Promise<RuntimeMeta> {
    const cached = this.metaCache.get(runtimeId);
    if (cached) return cached;
    try {
      const m = JSON.parse(await readFile(join(this.bundleOf(runtimeId), 'stacyvm.json'), 'utf8')) as RuntimeMeta;
      this.metaCache.set(runtimeId, m);
      return m;
    } catch {
      throw notFound('runtime', runtimeId);
    }
  }

  private async runcState(runtimeId: string): Promise<{ status: string; pid: number } | null> {
    const r = await this.runc(['state', runtimeId], true);
    if (r.code !== 0) return null;
    try {
      return JSON.parse(r.stdout) as { status: string; pid: number };
    } catch {
      return null;
    }
  }

  async status(runtimeId: string): Promise<RuntimeStatus> {
    let bundle: string;
    try {
      bundle = this.bundleOf(runtimeId);
    } catch {
      return 'missing';
    }
    const st = await this.runcState(runtimeId);
    if (st) return st.status === 'running' ? 'running' : 'stopped';
    return existsSync(join(bundle, 'stacyvm.json')) ? 'stopped' : 'missing';
  }

  async destroy(runtimeId: string): Promise<void> {
    let bundle: string;
    try {
      bundle = this.bundleOf(runtimeId);
    } catch {
      return;
    }
    const meta = await this.meta(runtimeId).catch(() => null);
    const st = await this.runcState(runtimeId);
    if (st) {
      if (st.status === 'running' || st.status === 'paused' || st.status === 'created') {
        await this.runc(['kill', runtimeId, 'KILL'], true);
      }
      const r = await this.runc(['delete', '--force', runtimeId], true);
      if (r.code !== 0 && (await this.runcState(runtimeId)) !== null) {
        throw providerError(`runc delete ${runtimeId} failed: ${r.stderr.trim()}`);
      }
    }
    const rootfs = join(bundle, 'rootfs');
    if (await isMountPoint(rootfs)) {
      const u = await runTool('umount', [rootfs], { allowFailure: true });
      if (u.code !== 0) await runTool('umount', ['-l', rootfs], { allowFailure: true });
    }
    if (meta) await removeCgroups(meta.cgroupsPath);
    await removeSandboxNetwork(runtimeId);
    this.metaCache.delete(runtimeId);
    await rm(bundle, { recursive: true, force: true });
  }

  /**
   * Why a process could not be started, when runc refused before it ran: the runtime is gone
   * (`not_found`) or not running (`conflict`). Null when the container is running.
   */
  private async notRunningError(runtimeId: string): Promise<StacyError | null> {
    const st = await this.runcState(runtimeId);
    if (!st) return notFound('runtime', runtimeId);
    if (st.status !== 'running') return new StacyError('conflict', `runtime ${runtimeId} is ${st.status}`);
    return null;
  }

  /** Starts a process in the container; stdout/stderr are pipes, stdin is a pipe or /dev/null. */
  private async startProcess(
    meta: RuntimeMeta,
    proc: { args: string[]; env: string[]; cwd: string; uid: number; gid: number; caps: string[] },
    stdin: boolean,
  ): Promise<{
    child: ReturnType<typeof spawn>;
    pidFile: string;
    started: () => boolean;
    runcLog: () => Promise<string>;
    cleanup: () => Promise<void>;
  }> {
    const bundle = this.bundleOf(meta.runtimeId);
    const tag = randomBytes(6).toString('hex');
    const processFile = join(bundle, `exec-${tag}.json`);
    const pidFile = join(bundle, `exec-${tag}.pid`);
    // runc's log lines go to a file the provider reads to learn why a start failed.
    const logFile = join(bundle, `exec-${tag}.log`);
    const processSpec = {
      terminal: false,
      user: { uid: proc.uid, gid: proc.gid },
      args: proc.args,
      env: proc.env,
      cwd: proc.cwd,
      capabilities: capabilitySet(proc.caps, proc.uid === 0),
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }],
      noNewPrivileges: true,
    };
    await writeFile(processFile, JSON.stringify(processSpec));
    const child = spawn(
      this.cfg.runcPath,
      ['--root', this.stateRoot, '--log', logFile, '--log-format', 'json', 'exec', '--process', processFile, '--pid-file', pidFile, meta.runtimeId],
      { stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] },
    );
    const cleanup = async (): Promise<void> => {
      await rm(processFile, { force: true });
      await rm(pidFile, { force: true });
      await rm(logFile, { force: true });
    };
    // runc writes the pid file once the process runs; without it runc refused to start it.
    const runcLog = (): Promise<string> => readFile(logFile, 'utf8').catch(() => '');
    return { child, pidFile, started: () => existsSync(pidFile), runcLog, cleanup };
  }

  async *execStream(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    const meta = await this.meta(runtimeId);
    const args =
      request.mode === 'shell'
        ? ['/bin/sh', '-c', [request.command, ...request.args.map(shellQuote)].join(' ')]
        : [request.command, ...request.args];
    if (args[0] === undefined || args[0] === '') throw badRequest('command is required');
    if (!(request.timeoutMs > 0)) throw badRequest('timeout must be positive');
    for (const [k, v] of Object.entries(request.env)) if (v.includes('\0')) throw badRequest(`env ${k}: must not contain NUL bytes`);
    if ([...args, request.workdir ?? ''].some((a) => a.includes('\0'))) throw badRequest('command, args and workdir must not contain NUL bytes');
    const started = Date.now();
    // Inherited by everything the command starts, so the kill finds daemons that left the session.
    const marker = randomBytes(8).toString('hex');
    const { child, pidFile, started: didStart, runcLog, cleanup } = await this.startProcess(
      meta,
      { args, env: [...mergeEnv(meta.env, request.env).filter((e) => !e.startsWith(`${EXEC_MARKER}=`)), `${EXEC_MARKER}=${marker}`], cwd: request.workdir ?? '/workspace', uid: meta.uid, gid: meta.gid, caps: meta.caps },
      false,
    );
    const queue = new EventQueue<ExecEvent>({
      pause: () => {
        child.stdout!.pause();
        child.stderr!.pause();
      },
      resume: () => {
        child.stdout!.resume();
        child.stderr!.resume();
      },
    });
    let exited = false;
    let timedOut = false;
    child.stdout!.on('data', (d: Buffer) => queue.push({ type: 'stdout', data: d }));
    child.stderr!.on('data', (d: Buffer) => queue.push({ type: 'stderr', data: d }));
    child.on('error', (err) => queue.fail(providerError(`runc exec: ${err.message}`, err)));
    child.on('close', (code, sig) => {
      exited = true;
      let exitCode = code ?? 128 + (sig ? 9 : 0);
      const finish = (): void => {
        queue.push({ type: 'exit', exitCode, durationMs: Date.now() - started });
        queue.end();
      };
      if (exitCode === 0 || didStart()) return finish();
      void (async () => {
        const err = await this.notRunningError(runtimeId);
        if (err) return queue.fail(err);
        // runc refused to start the process: say why the way a shell would.
        const why = await runcLog();
        if (/chdir to cwd .*no such file or directory/.test(why)) return queue.fail(notFound('workdir', request.workdir ?? '/workspace'));
        if (/chdir to cwd .*not a directory/.test(why)) return queue.fail(badRequest(`workdir ${request.workdir ?? ''} is not a directory`));
        // runc has already printed its reason on stderr.
        if (/executable file not found|no such file or directory/.test(why)) exitCode = 127;
        else if (/permission denied/.test(why)) exitCode = 126;
        else {
          return queue.fail(providerError(`runc exec failed: ${why.trim().slice(-500)}`));
        }
        finish();
      })();
    });
    // One kill at a time, remembered, so the stream does not end (with its timeout error, say)
    // while a kill the timer started is still working through a forking process tree.
    let killing: Promise<void> | undefined;
    const killTree = (): Promise<void> => {
      if (exited && killing === undefined) return Promise.resolve();
      killing ??= this.killExecTree(meta, pidFile, marker);
      return killing;
    };
    const timer = setTimeout(() => {
      timedOut = true;
      void killTree();
    }, Math.max(1, request.timeoutMs));
    const onAbort = (): void => void killTree();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const ev of queue) {
        if (ev.type === 'exit' && timedOut) throw timeoutError(`command timed out after ${request.timeoutMs} ms`);
        yield ev;
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (!exited) {
        await killTree();
        await waitForExit(child, 5000);
      }
      // The exec process may exit before the rest of its tree is gone.
      await killing;
      void cleanup();
    }
  }

  /**
   * Kills an exec's process tree: the exec process, everything in its session (orphans keep the
   * session id after their parent dies), everything carrying the exec's environment marker
   * (daemons that called setsid) and all descendants, found among the container's cgroup
   * members. Repeats until nothing is left so a forking loop cannot outrun it.
   */
  private async killExecTree(meta: RuntimeMeta, pidFile: string, marker: string): Promise<void> {
    let root = NaN;
    for (let i = 0; i < 50 && Number.isNaN(root); i++) {
      root = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim() || NaN);
      if (Number.isNaN(root)) await sleep(20);
    }
    const tag = Buffer.from(`${EXEC_MARKER}=${marker}\0`);
    for (let round = 0; round < 20; round++) {
      const procs = await cgroupProcesses(meta.cgroupsPath);
      const targets = new Set<number>();
      for (const p of procs) {
        if (p.pid === root || p.sid === root) targets.add(p.pid);
        else if ((await readFile(`/proc/${p.pid}/environ`).catch(() => Buffer.alloc(0))).includes(tag)) targets.add(p.pid);
      }
      let grew = true;
      while (grew) {
        grew = false;
        for (const p of procs) {
          if (!targets.has(p.pid) && targets.has(p.ppid)) {
            targets.add(p.pid);
            grew = true;
          }
        }
      }
      if (targets.size === 0) return;
      for (const pid of targets) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await sleep(10);
    }
  }

  /** Runs a busybox script as the sandbox user inside the container; positional args are data. */
  private async fileScript(
    runtimeId: string,
    script: string,
    args: string[],
    stdin?: Buffer | Readable,
  ): Promise<{ stdout: Buffer; code: number; stderr: string }> {
    const meta = await this.meta(runtimeId);
    const { child, started, cleanup } = await this.startProcess(
      meta,
      { args: [B, 'sh', '-c', `B=${B}; ${script}`, 'sh', ...args], env: ['PATH=/nonexistent'], cwd: '/', uid: meta.uid, gid: meta.gid, caps: [] },
      stdin !== undefined,
    );
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
    if (stdin !== undefined) {
      const sink = child.stdin!;
      sink.on('error', () => undefined);
      if (Buffer.isBuffer(stdin)) sink.end(stdin);
      else stdin.pipe(sink);
    }
    const code = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c) => resolve(c ?? 1));
    });
    if (code !== 0 && !started()) {
      const e = await this.notRunningError(runtimeId);
      if (e) {
        void cleanup();
        throw e;
      }
    }
    void cleanup();
    return { stdout: Buffer.concat(out), code, stderr: err };
  }

  private fileError(code: number, path: string, stderr: string): StacyError {
    const f = FILE_EXIT[code];
    if (f) return f(path);
    // Exit 8: a tool failed; its message says why (busybox prints strerror text).
    if (/Permission denied|Read-only file system|Operation not permitted/.test(stderr)) return new StacyError('forbidden', `permission denied: ${path}`);
    if (/No such file or directory|Not a directory|File exists|nonexistent directory/.test(stderr)) return notFound('file', path);
    return providerError(`file operation on ${path} failed (exit ${code}): ${stderr.trim().slice(-500)}`);
  }

  async writeFile(runtimeId: string, path: string, content: Buffer | Readable, mode?: number): Promise<void> {
    const chmodPart = `; $B chmod ${((mode ?? 0o644) & 0o7777).toString(8)} "$1" || exit 8`;
    const script =
      `[ -d "$1" ] && exit 4; $B mkdir -p "$($B dirname "$1")" || exit 8; ` +
      `$B cat > "$1" || exit 8${chmodPart}`;
    const r = await this.fileScript(runtimeId, script, [path], content);
    if (r.code !== 0) throw this.fileError(r.code, path, r.stderr);
  }

  async readFile(runtimeId: string, path: string): Promise<Readable> {
    const meta = await this.meta(runtimeId);
    // One process: a marker byte says the checks passed and the file's bytes follow.
    const script = `B=${B}; [ -e "$1" ] || exit 3; [ -d "$1" ] && exit 4; [ -f "$1" ] || exit 9; [ -r "$1" ] || exit 7; printf K; exec $B cat "$1"`;
    const { child, started, cleanup } = await this.startProcess(
      meta,
      { args: [B, 'sh', '-c', script, 'sh', path], env: ['PATH=/nonexistent'], cwd: '/', uid: meta.uid, gid: meta.gid, caps: [] },
      false,
    );
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-1000)));
    const closed = new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
    const wasStarted = closed.then(() => started());
    void wasStarted.finally(cleanup);
    const stdout = child.stdout!;
    const first = await new Promise<Buffer | null>((resolve) => {
      const onReadable = (): void => {
        const b = stdout.read(1) as Buffer | null;
        if (b !== null) {
          stdout.off('readable', onReadable);
          stdout.off('end', onEnd);
          resolve(b);
        }
      };
      const onEnd = (): void => resolve(null);
      stdout.on('readable', onReadable);
      stdout.once('end', onEnd);
    });
    if (first === null || first.toString() !== 'K') {
      const code = await closed;
      if (!(await wasStarted)) throw (await this.notRunningError(runtimeId)) ?? this.fileError(code, path, stderr);
      throw this.fileError(code, path, stderr);
    }
    const out = new PassThrough();
    stdout.pipe(out);
    void closed.then((code) => {
      if (code !== 0) out.destroy(this.fileError(code, path, stderr));
    });
    out.on('close', () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    return out;
  }

  private static readonly STAT_FMT = "'%s|%f|%Y|%n'";

  private parseStat(line: string): FileEntry | null {
    const m = /^(\d+)\|([0-9a-f]+)\|(\d+)\|(.*)$/.exec(line);
    if (!m) return null;
    const rawMode = parseInt(m[2]!, 16);
    const p = m[4]!;
    return {
      name: posix.basename(p) || '/',
      path: p,
      size: Number(m[1]),
      isDir: (rawMode & 0o170000) === 0o040000,
      modTime: Number(m[3]) * 1000,
      mode: rawMode & 0o7777,
    };
  }

  async listFiles(runtimeId: string, path: string): Promise<FileEntry[]> {
    const script =
      `[ -e "$1" ] || exit 3; [ -d "$1" ] || exit 5; [ -r "$1" ] && [ -x "$1" ] || exit 7; ` +
      `$B find "$1" -mindepth 1 -maxdepth 1 -exec $B stat -c ${OciProvider.STAT_FMT} {} +`;
    const r = await this.fileScript(runtimeId, script, [path]);
    if (r.code !== 0) throw this.fileError(r.code, path, r.stderr);
    return r.stdout
      .toString('utf8')
      .split('\n')
      .map((l) => this.parseStat(l))
      .filter((e): e is FileEntry => e !== null)
      .map((e) => ({ ...e, path: posix.join(path, e.name) }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async stat(runtimeId: string, path: string): Promise<FileEntry> {
    const r = await this.fileScript(runtimeId, `[ -e "$1" ] || [ -L "$1" ] || exit 3; $B stat -c ${OciProvider.STAT_FMT} "$1"`, [path]);
    if (r.code !== 0) throw this.fileError(r.code, path, r.stderr);
    const e = this.parseStat(r.stdout.toString('utf8').trim());
    if (!e) throw providerError(`unexpected stat output for ${path}`);
    return { ...e, path, name: posix.basename(path) || '/' };
  }

  async deleteFile(runtimeId: string, path: string, recursive: boolean): Promise<void> {
    if (path === '/') throw badRequest('refusing to delete /');
    const dirPart = recursive ? `$B rm -rf "$1" || exit 8` : `$B rmdir "$1" 2>/dev/null || { [ -w "$($B dirname "$1")" ] || exit 7; exit 6; }`;
    const script = `[ -e "$1" ] || [ -L "$1" ] || exit 3; if [ -d "$1" ] && [ ! -L "$1" ]; then ${dirPart}; else $B rm -f "$1" || exit 8; fi`;
    const r = await this.fileScript(runtimeId, script, [path]);
    if (r.code !== 0) throw this.fileError(r.code, path, r.stderr);
  }

  async moveFile(runtimeId: string, fromPath: string, toPath: string): Promise<void> {
    const script = `[ -e "$1" ] || [ -L "$1" ] || exit 3; $B mkdir -p "$($B dirname "$2")" || exit 8; $B mv -f "$1" "$2" || exit 8`;
    const r = await this.fileScript(runtimeId, script, [fromPath, toPath]);
    if (r.code !== 0) throw this.fileError(r.code, fromPath, r.stderr);
  }

  async chmod(runtimeId: string, path: string, mode: number): Promise<void> {
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest('mode must be between 0 and 0o7777');
    const r = await this.fileScript(runtimeId, `[ -e "$1" ] || exit 3; $B chmod ${mode.toString(8)} "$1" || exit 8`, [path]);
    if (r.code !== 0) throw this.fileError(r.code, path, r.stderr);
  }

  async glob(runtimeId: string, pattern: string): Promise<string[]> {
    if (!pattern.startsWith('/')) throw badRequest('glob pattern must be absolute');
    // Walk only below the pattern's literal prefix; pseudo filesystems are never searched.
    const parts = pattern.split('/');
    const literal: string[] = [];
    for (const p of parts.slice(1)) {
      if (/[*?[\]{}]/.test(p)) break;
      literal.push(p);
    }
    const isLiteral = literal.length === parts.length - 1;
    const base = '/' + (isLiteral ? literal.slice(0, -1) : literal).join('/');
    const script =
      `[ -d "$1" ] || exit 0; $B find "$1" \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -print 2>/dev/null; exit 0`;
    const r = await this.fileScript(runtimeId, script, [base]);
    const match = picomatch(pattern, { dot: true });
    return [...new Set(r.stdout.toString('utf8').split('\n'))]
      .map((l) => (l.length > 1 && l.endsWith('/') ? l.slice(0, -1) : l))
      .filter((l) => l !== '' && match(l))
      .sort();
  }

  async consoleLog(runtimeId: string, lines: number): Promise<string[]> {
    const bundle = this.bundleOf(runtimeId);
    let text: string;
    try {
      text = await readFile(join(bundle, 'console.log'), 'utf8');
    } catch {
      if (!existsSync(bundle)) throw notFound('runtime', runtimeId);
      return [];
    }
    const all = text.split('\n');
    if (all[all.length - 1] === '') all.pop();
    return lines <= 0 ? [] : all.slice(-lines);
  }

  async health(): Promise<ProviderHealth> {
    const started = Date.now();
    const details: Record<string, unknown> = { isolation: 'container', root: this.cfg.root };
    try {
      if (process.getuid?.() !== 0) throw new Error('the oci provider must run as root');
      const v = await runTool(this.cfg.runcPath, ['--version'], { timeoutMs: 10_000 });
      details.runc = v.stdout.split('\n')[0]?.trim();
      if (!this.busybox) throw new Error('static busybox not found (apt-get install busybox-static)');
      details.busybox = this.busybox;
      const fsList = await readFile('/proc/filesystems', 'utf8');
      if (!/\boverlay\b/.test(fsList)) throw new Error('kernel has no overlay filesystem');
      await mkdir(this.stateRoot, { recursive: true, mode: 0o700 });
      await this.runc(['list', '--quiet']);
      if (this.defaultImage !== undefined) {
        const img = await this.images.resolve(this.defaultImage);
        details.defaultImage = `${this.defaultImage} → ${img.meta.name} (${img.meta.digest.slice(0, 19)})`;
      }
      return { healthy: true, latencyMs: Date.now() - started, details };
    } catch (err) {
      return { healthy: false, latencyMs: Date.now() - started, error: (err as Error).message, details };
    }
  }

  async inventory(): Promise<RuntimeInfo[]> {
    let dirs: string[];
    try {
      dirs = await readdir(this.bundlesRoot);
    } catch {
      dirs = [];
    }
    const r = await this.runc(['list', '--format', 'json'], true);
    const live = new Map<string, string>();
    if (r.code === 0 && r.stdout.trim() !== '' && r.stdout.trim() !== 'null') {
      for (const c of JSON.parse(r.stdout) as { id: string; status: string }[]) live.set(c.id, c.status);
    }
    const ids = new Set([...dirs.filter((d) => !d.startsWith('.')), ...live.keys()]);
    const out: RuntimeInfo[] = [];
    for (const id of [...ids].sort()) {
      const status: RuntimeStatus = live.get(id) === 'running' ? 'running' : 'stopped';
      const info: RuntimeInfo = { runtimeId: id, status };
      try {
        const cfg = JSON.parse(await readFile(join(this.bundlesRoot, id, 'config.json'), 'utf8')) as {
          annotations?: Record<string, string>;
        };
        const a = cfg.annotations ?? {};
        if (a[ANNOTATION.sandboxId]) info.sandboxId = a[ANNOTATION.sandboxId];
        if (a[ANNOTATION.workerId]) info.workerId = a[ANNOTATION.workerId];
        if (a[ANNOTATION.ownerId]) info.ownerId = a[ANNOTATION.ownerId];
        if (a[ANNOTATION.createdAt]) info.createdAt = Number(a[ANNOTATION.createdAt]);
      } catch {
        // a bundle without config is a half-created runtime; report it so it gets destroyed
      }
      out.push(info);
    }
    return out;
  }
}

/** The host's non-loopback nameservers, for sandboxes with a route out. */
async function hostNameservers(): Promise<string> {
  const text = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  const servers = text
    .split('\n')
    .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
    .filter((s): s is string => s !== undefined && !/^(127\.|::1$)/.test(s));
  return servers.map((s) => `nameserver ${s}\n`).join('');
}

function normCap(c: string): string {
  const u = c.trim().toUpperCase();
  return u.startsWith('CAP_') ? u : `CAP_${u}`;
}

/** Later keys win; `env` entries are `KEY=value`. */
export function mergeEnv(base: string[], extra: Record<string, string>): string[] {
  const m = new Map<string, string>();
  for (const e of base) {
    const i = e.indexOf('=');
    if (i > 0) m.set(e.slice(0, i), e.slice(i + 1));
  }
  for (const [k, v] of Object.entries(extra)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw badRequest(`invalid environment variable name ${JSON.stringify(k)}`);
    m.set(k, v);
  }
  return [...m].map(([k, v]) => `${k}=${v}`);
}

export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function waitForExit(child: ReturnType<typeof spawn>, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve();
    }, ms);
    child.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

async function isMountPoint(path: string): Promise<boolean> {
  try {
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    return mounts.split('\n').some((l) => l.split(' ')[4] === path);
  } catch {
    return false;
  }
}

const CGROUP_BASES = ['/sys/fs/cgroup/pids', '/sys/fs/cgroup', '/sys/fs/cgroup/unified'];

/** Host processes in the sandbox's cgroup with parent and session ids (host pid namespace). */
async function cgroupProcesses(cgroupsPath: string): Promise<{ pid: number; ppid: number; sid: number }[]> {
  let pids: number[] = [];
  for (const base of CGROUP_BASES) {
    try {
      const text = await readFile(join(base, cgroupsPath, 'cgroup.procs'), 'utf8');
      pids = text.split('\n').filter(Boolean).map(Number);
      break;
    } catch {
      // try the next hierarchy layout
    }
  }
  const out: { pid: number; ppid: number; sid: number }[] = [];
  for (const pid of pids) {
    try {
      const s = await readFile(`/proc/${pid}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      out.push({ pid, ppid: Number(f[1]), sid: Number(f[3]) });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** runc delete removes the cgroups; this catches leftovers from a crash mid-delete. */
async function removeCgroups(cgroupsPath: string): Promise<void> {
  let controllers: string[];
  try {
    controllers = await readdir('/sys/fs/cgroup');
  } catch {
    return;
  }
  for (const c of ['', ...controllers]) {
    const dir = join('/sys/fs/cgroup', c, cgroupsPath);
    try {
      if ((await fsStat(dir)).isDirectory()) await rmdir(dir);
    } catch {
      // absent, or not ours to remove
    }
  }
}

/**
 * Single-consumer async queue bridging child-process events into an async iterator. It tells
 * the producer to pause above `high` queued items and to resume once the consumer has drained
 * below `low`, so a slow consumer never makes the server buffer a command's whole output.
 */
class EventQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private done = false;
  private error: unknown = null;
  private wake: (() => void) | null = null;
  private paused = false;

  constructor(
    private readonly flow: { pause: () => void; resume: () => void } = { pause: () => undefined, resume: () => undefined },
    private readonly high = 64,
    private readonly low = 16,
  ) {}

  push(item: T): void {
    this.items.push(item);
    if (!this.paused && this.items.length >= this.high) {
      this.paused = true;
      this.flow.pause();
    }
    this.notify();
  }
  end(): void {
    this.done = true;
    this.notify();
  }
  fail(err: unknown): void {
    this.error = err;
    this.notify();
  }
  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.items.length > 0) {
        const item = this.items.shift() as T;
        if (this.paused && this.items.length <= this.low) {
          this.paused = false;
          this.flow.resume();
        }
        yield item;
        continue;
      }
      if (this.error !== null) throw this.error;
      if (this.done) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}
