import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, rm, stat as fsStat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import Docker from 'dockerode';
import picomatch from 'picomatch';
import { extract, pack } from 'tar-stream';
import type { DockerProviderConfig } from '../../config/types.js';
import { StacyError, badRequest, conflict, notFound, providerError, timeoutError } from '../../core/errors.js';
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
import { MAX_TIMER_MS, execArgv, validateExecRequest } from '../exec-util.js';
import { dockerConnectionOptions, redactDockerConfig } from './config.js';
import { demuxDockerStream } from './demux.js';

/** Labels every StacyVM container carries; inventory finds containers by the first one. */
export const LABEL_SANDBOX_ID = 'stacyvm.sandbox_id';
export const LABEL_WORKER_ID = 'stacyvm.worker_id';
export const LABEL_OWNER_ID = 'stacyvm.owner_id';
export const LABEL_CREATED_AT = 'stacyvm.created_at';

/** Environment variable marking every process an exec starts, so its whole tree can be killed. */
export const EXEC_MARKER_ENV = 'STACYVM_EXEC_ID';

const WORKSPACE = '/workspace';

/**
 * PID 1 under Docker's init (tini, `Init: true`): a shell that idles forever and exits on
 * SIGTERM. tini reaps every orphaned exec process, so zombies never pile up.
 */
const IDLE_CMD = ['/bin/sh', '-c', 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'];

/**
 * Kills every process of an exec: those whose environment carries the marker, plus every
 * process in their sessions (each exec starts as a session leader, so this also catches
 * children that cleared their environment). Each round first stops every such process, so none
 * can react to a sibling's death (a shell running `sleep; echo` would otherwise go on to the
 * next command), then kills them. Rounds repeat until a scan finds nothing, catching children
 * forked mid-scan. A round forks only one grep, so the kill still gets through when a fork bomb
 * holds the pids limit. Session/group 0 and 1 and the script's own are never targeted.
 */
const KILL_TREE_SCRIPT = `m="${EXEC_MARKER_ENV}=$1"; self=$$
read -r own < /proc/self/stat; set -- \${own##*) }; ownsid=$4
for round in 1 2 3 4 5 6 7 8 9 10; do
  sids=" "
  for f in $(grep -lzxF -- "$m" /proc/[0-9]*/environ 2>/dev/null); do
    p=\${f#/proc/}; p=\${p%/environ}
    read -r line < "/proc/$p/stat" 2>/dev/null || continue
    set -- \${line##*) }
    [ "$4" -gt 1 ] 2>/dev/null && [ "$4" != "$ownsid" ] && case "$sids" in *" $4 "*) ;; *) sids="$sids$4 " ;; esac
  done
  [ "$sids" = " " ] && exit 0
  victims=""
  for d in /proc/[0-9]*; do
    p=\${d#/proc/}
    [ "$p" = "$self" ] && continue
    read -r line < "$d/stat" 2>/dev/null || continue
    set -- \${line##*) }
    case "$sids" in *" $4 "*) victims="$victims $p"; kill -STOP "$p" 2>/dev/null ;; esac
  done
  for p in $victims; do kill -KILL "$p" 2>/dev/null; done
done
exit 1`;

/** Exit codes the file helper scripts use to report conditions (anything else is a failure). */
const EXIT_NOT_FOUND = 3;
const EXIT_WRONG_TYPE = 4;

/** Emits `size mtime hexmode\n name\0` per entry, so names may hold any byte but NUL. */
const STAT_SCRIPT = `[ -e "$1" ] || [ -L "$1" ] || exit ${EXIT_NOT_FOUND}
stat -c '%s %Y %f' -- "$1" && printf '%s\\0' "$1"`;

const LIST_SCRIPT = `[ -e "$1" ] || exit ${EXIT_NOT_FOUND}
[ -d "$1" ] || exit ${EXIT_WRONG_TYPE}
cd -- "$1" || exit 1
for f in .* *; do
  { [ "$f" = . ] || [ "$f" = .. ]; } && continue
  { [ -e "$f" ] || [ -L "$f" ]; } || continue
  stat -c '%s %Y %f' -- "$f" && printf '%s\\0' "$f"
done`;

const DELETE_SCRIPT = `{ [ -e "$1" ] || [ -L "$1" ]; } || exit ${EXIT_NOT_FOUND}
if [ "$2" = recursive ]; then exec rm -rf -- "$1"; fi
if [ -d "$1" ] && ! [ -L "$1" ]; then rmdir -- "$1" 2>/dev/null || exit ${EXIT_WRONG_TYPE}; exit 0; fi
exec rm -f -- "$1"`;

/** A destination parent that cannot be created (e.g. a dangling link in the way) is not_found. */
const MOVE_SCRIPT = `{ [ -e "$1" ] || [ -L "$1" ]; } || exit ${EXIT_NOT_FOUND}
d=$(dirname -- "$2"); [ -d "$d" ] || mkdir -p -- "$d" 2>/dev/null || exit ${EXIT_NOT_FOUND}
exec mv -f -- "$1" "$2"`;

/** chmod follows links, so a link whose target is missing is not_found like a missing path. */
const CHMOD_SCRIPT = `[ -e "$1" ] || exit ${EXIT_NOT_FOUND}
exec chmod "$2" -- "$1"`;

const MKDIR_SCRIPT = `[ -d "$1" ] || mkdir -p -- "$1" 2>/dev/null || exit ${EXIT_NOT_FOUND}`;

/** Why an exec never started: exit 3 missing workdir $1, 127 no program $2, else 126. */
const START_FAILURE_SCRIPT = `cd -- "$1" 2>/dev/null || exit ${EXIT_NOT_FOUND}
case "$2" in */*) [ -e "$2" ] || exit 127; exit 126 ;; esac
command -v -- "$2" >/dev/null 2>&1 || exit 127
exit 126`;

/** Exit 4 when writing a file at $1 cannot work: it is a directory, or an ancestor is not one. */
const WRITE_CLASH_SCRIPT = `[ -d "$1" ] && exit ${EXIT_WRONG_TYPE}
p=$(dirname -- "$1")
while [ "$p" != / ]; do
  if [ -e "$p" ]; then [ -d "$p" ] || exit ${EXIT_WRONG_TYPE}; exit 0; fi
  p=$(dirname -- "$p")
done
exit 0`;

/** Helper commands (stat, list, kill …) are internal and short; this bounds a wedged one. */
const HELPER_TIMEOUT_MS = 60_000;
/** Symlink hops followed inside the container when reading a file (like the kernel's 40). */
const MAX_SYMLINK_HOPS = 40;

export interface PullProgress {
  image: string;
  status: string;
  id?: string;
  progress?: string;
}

/** The subset of a pino logger the provider uses; credentials are never passed to it. */
export interface DockerProviderLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface DockerProviderOptions {
  config: DockerProviderConfig;
  log?: DockerProviderLogger;
  /** Called for every status line of an image pull (for events and progress displays). */
  onPullProgress?: (sandboxId: string, progress: PullProgress) => void;
  /** A ready client instead of one built from `config.socket` (tests, custom TLS). */
  docker?: Docker;
}

interface DockerApiError {
  statusCode?: number;
  json?: { message?: string } | null;
  message?: string;
}

const statusOf = (err: unknown): number | undefined => (err as DockerApiError | null)?.statusCode;

function daemonMessage(err: unknown): string {
  const e = err as DockerApiError | null;
  const msg = e?.json?.message ?? e?.message ?? String(err);
  return msg.trim();
}

/** Splits `repo[:tag]` (a registry port is not a tag) and defaults the tag to latest. */
export function imageReference(image: string): { repo: string; tag: string; ref: string } {
  const at = image.indexOf('@');
  if (at >= 0) return { repo: image.slice(0, at), tag: image.slice(at + 1), ref: image };
  const colon = image.lastIndexOf(':');
  if (colon > image.lastIndexOf('/')) return { repo: image.slice(0, colon), tag: image.slice(colon + 1), ref: image };
  return { repo: image, tag: 'latest', ref: `${image}:latest` };
}

const DOCKER_HUB = 'docker.io';

/** The registry host an image reference pulls from (`docker.io` for Hub short names). */
export function registryOf(image: string): string {
  const slash = image.indexOf('/');
  if (slash < 0) return DOCKER_HUB;
  const first = image.slice(0, slash);
  return first.includes('.') || first.includes(':') || first === 'localhost' ? normalizeRegistry(first) : DOCKER_HUB;
}

/** `https://index.docker.io/v1/`, `registry-1.docker.io`, `` … → `docker.io`; others lose scheme and path. */
export function normalizeRegistry(address: string): string {
  const host = address.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '').toLowerCase();
  return host === '' || host === 'index.docker.io' || host === 'registry-1.docker.io' ? DOCKER_HUB : host;
}

/**
 * Only VM-backed runtimes (Kata, Firecracker) claim `vm`; runc and gVisor's runsc are container
 * runtimes (runsc with a user-space kernel, named in the `runtime:` feature flag).
 */
export function runtimeIsolation(runtime: string): 'container' | 'vm' {
  return /kata|firecracker|fc-|qemu|clh/i.test(runtime) ? 'vm' : 'container';
}

/** `''`, `root`, `0`, `0:0`, `root:root` … all run as uid 0. */
function isRootUser(user: string): boolean {
  const name = user.split(':')[0] ?? '';
  return name === '' || name === 'root' || name === '0';
}

function parseStatRecords(out: Buffer, dir: string | null): FileEntry[] {
  const entries: FileEntry[] = [];
  for (const record of out.toString('utf8').split('\0')) {
    if (record.length === 0) continue;
    const nl = record.indexOf('\n');
    const [size, mtime, rawMode] = record.slice(0, nl).split(' ');
    const name = record.slice(nl + 1);
    const mode = Number.parseInt(rawMode ?? '', 16);
    const path = dir === null ? name : posix.join(dir, name);
    entries.push({
      name: posix.basename(path) || '/',
      path,
      size: Number(size),
      isDir: (mode & 0o170000) === 0o040000,
      modTime: Number(mtime) * 1000,
      mode: mode & 0o7777,
    });
  }
  return entries;
}

/**
 * Sandboxes as Docker containers on the Engine API. Every container runs tini as PID 1, with
 * all capabilities dropped (unless configured), no-new-privileges, seccomp, a pids limit and
 * memory/CPU limits; files move through the archive API, which resolves paths inside the
 * container's root filesystem so a symlink can never lead to a host file.
 */
export class DockerProvider implements Provider {
  readonly name = 'docker';
  readonly capabilities: ProviderCapabilities;
  private readonly docker: Docker;
  private readonly config: DockerProviderConfig;
  private readonly seccompOpt: string | null;
  private readonly log: DockerProviderLogger | undefined;
  private readonly onPullProgress: DockerProviderOptions['onPullProgress'];
  /** Container ids known to carry our labels, so hot paths skip an inspect. */
  private readonly known = new Set<string>();

  constructor(options: DockerProviderOptions) {
    this.config = options.config;
    this.log = options.log;
    this.onPullProgress = options.onPullProgress;
    this.docker = options.docker ?? new Docker(dockerConnectionOptions(options.config.socket));
    this.seccompOpt = DockerProvider.seccompOption(options.config.seccompProfile);
    this.capabilities = {
      isolation: runtimeIsolation(options.config.runtime),
      features: [
        'memory_limit',
        'cpu_limit',
        'pids_limit',
        `network:${options.config.networkMode}`,
        `runtime:${options.config.runtime}`,
      ],
    };
  }

  /** `''` keeps Docker's default profile; `unconfined` disables it; anything else is a JSON file. */
  private static seccompOption(profile: string): string | null {
    if (profile === '') return null;
    if (profile === 'unconfined') return 'seccomp=unconfined';
    let json: string;
    try {
      json = readFileSync(profile, 'utf8');
      JSON.parse(json);
    } catch (err) {
      throw badRequest(`providers.docker.seccomp_profile: cannot load ${JSON.stringify(profile)}: ${(err as Error).message}`);
    }
    return `seccomp=${json}`;
  }

  /** The config with credentials removed, for API output and logs. */
  redactedConfig(): Record<string, unknown> {
    return redactDockerConfig(this.config);
  }

  async spawn(spec: SpawnSpec): Promise<SpawnResult> {
    const image = imageReference(spec.image);
    const imageUser = await this.ensureImage(image, spec.sandboxId);
    const labels: Record<string, string> = {
      ...spec.labels,
      [LABEL_SANDBOX_ID]: spec.sandboxId,
      [LABEL_WORKER_ID]: spec.workerId,
      [LABEL_CREATED_AT]: String(Date.now()),
    };
    if (spec.ownerId !== null) labels[LABEL_OWNER_ID] = spec.ownerId;
    const securityOpt = ['no-new-privileges:true'];
    if (this.seccompOpt !== null) securityOpt.push(this.seccompOpt);
    const memory = spec.memoryMb * 1024 * 1024;
    let container: Docker.Container;
    try {
      container = await this.docker.createContainer({
        name: `stacyvm-${spec.sandboxId}`,
        Image: image.ref,
        Cmd: IDLE_CMD,
        Entrypoint: [],
        Hostname: spec.sandboxId,
        WorkingDir: WORKSPACE,
        // SANDBOX_ID last so a spec env cannot mask which sandbox a command runs in.
        Env: [...Object.entries(spec.env).map(([k, v]) => `${k}=${v}`), `SANDBOX_ID=${spec.sandboxId}`],
        Labels: labels,
        // A read-only root still needs a writable workspace the archive API can reach, which a
        // volume is and a tmpfs is not (docker cp writes beneath tmpfs mounts).
        Volumes: this.config.readOnlyRootfs ? { [WORKSPACE]: {} } : undefined,
        NetworkDisabled: (spec.networkMode ?? this.config.networkMode) === 'none',
        HostConfig: {
          Init: true,
          Runtime: this.config.runtime,
          NetworkMode: spec.networkMode ?? this.config.networkMode,
          Memory: memory,
          MemorySwap: memory,
          NanoCpus: Math.round(spec.vcpus * 1e9),
          PidsLimit: this.config.pidsLimit,
          CapDrop: this.config.droppedCaps,
          CapAdd: this.config.addedCaps,
          SecurityOpt: securityOpt,
          ReadonlyRootfs: this.config.readOnlyRootfs,
          Tmpfs: this.config.readOnlyRootfs ? { '/tmp': 'rw,nosuid,nodev,size=64m' } : undefined,
          RestartPolicy: { Name: 'no' },
        },
      });
    } catch (err) {
      if (statusOf(err) === 409) throw conflict(`docker: a container for sandbox ${spec.sandboxId} already exists`);
      if (statusOf(err) === 404) throw new StacyError('image_not_found', `image ${JSON.stringify(spec.image)} not found`);
      throw providerError(`docker: create container for ${spec.sandboxId}: ${daemonMessage(err)}`, err);
    }
    try {
      await container.start();
    } catch (err) {
      await container.remove({ force: true, v: true }).catch(() => undefined);
      throw providerError(`docker: start container for ${spec.sandboxId}: ${daemonMessage(err)}`, err);
    }
    if (!isRootUser(imageUser)) {
      // Docker creates a missing WorkingDir owned by root; an image that runs as another user
      // would get a workspace it cannot write. Root owns it, so chmod needs no capability.
      const exitCode = await this.rootExec(container, ['/bin/sh', '-c', `mkdir -p ${WORKSPACE} && chmod 1777 ${WORKSPACE}`]).catch(() => -1);
      if (exitCode !== 0) {
        await container.remove({ force: true, v: true }).catch(() => undefined);
        throw providerError(`docker: could not make ${WORKSPACE} writable for user ${imageUser} in ${spec.sandboxId}`);
      }
    }
    this.known.add(container.id);
    this.log?.info({ sandboxId: spec.sandboxId, containerId: container.id, image: image.ref }, 'docker container started');
    return { runtimeId: container.id };
  }

  /** Makes sure the image is present (pulling it if needed) and returns the user it runs as. */
  private async ensureImage(image: { repo: string; tag: string; ref: string }, sandboxId: string): Promise<string> {
    try {
      return (await this.docker.getImage(image.ref).inspect()).Config?.User ?? '';
    } catch (err) {
      if (statusOf(err) !== 404) throw providerError(`docker: inspect image ${image.ref}: ${daemonMessage(err)}`, err);
    }
    this.log?.info({ sandboxId, image: image.ref }, 'pulling image');
    // Credentials go only to the registry they belong to, never to whichever one an image names.
    const configured = this.config.registryAuth;
    const auth = configured !== null && normalizeRegistry(configured.serveraddress) === registryOf(image.ref) ? configured : undefined;
    let stream: NodeJS.ReadableStream;
    try {
      stream = (await this.docker.pull(image.ref, auth === undefined ? {} : { authconfig: auth })) as NodeJS.ReadableStream;
    } catch (err) {
      throw this.pullError(image.ref, err);
    }
    await new Promise<void>((resolve, reject) => {
      this.docker.modem.followProgress(
        stream,
        (err: Error | null, output: Array<{ error?: string }>) => {
          const failed = output?.find((o) => typeof o.error === 'string');
          if (err !== null) reject(this.pullError(image.ref, err));
          else if (failed !== undefined) reject(this.pullError(image.ref, new Error(failed.error)));
          else resolve();
        },
        (event: { status?: string; id?: string; progress?: string }) => {
          if (typeof event.status !== 'string') return;
          const progress: PullProgress = { image: image.ref, status: event.status };
          if (event.id !== undefined) progress.id = event.id;
          if (event.progress !== undefined) progress.progress = event.progress;
          this.onPullProgress?.(sandboxId, progress);
        },
      );
    });
    this.log?.info({ sandboxId, image: image.ref }, 'image pulled');
    try {
      return (await this.docker.getImage(image.ref).inspect()).Config?.User ?? '';
    } catch (err) {
      throw providerError(`docker: inspect pulled image ${image.ref}: ${daemonMessage(err)}`, err);
    }
  }

  /**
   * The daemon answers 404 for an unknown repository or tag, and reports an in-stream error
   * after the fact for some registries; either way the client asked for an image that does
   * not exist there, which is a 400 for them rather than a server fault.
   */
  private pullError(ref: string, err: unknown): StacyError {
    const status = statusOf(err);
    const msg = daemonMessage(err);
    if (status === 404 || status === undefined) {
      return new StacyError('image_not_found', `image ${JSON.stringify(ref)} not found: ${msg}`, { cause: err });
    }
    const hint = this.config.registryAuth === null ? ' (a private registry needs providers.docker.registry_auth)' : '';
    return providerError(`docker: pull ${ref}: ${msg}${hint}`, err);
  }

  async status(runtimeId: string): Promise<RuntimeStatus> {
    const info = await this.inspectOwned(runtimeId);
    if (info === null) return 'missing';
    return info.State.Running ? 'running' : 'stopped';
  }

  /** Inspects a container and returns null when it is missing or not one of ours. */
  private async inspectOwned(runtimeId: string): Promise<Docker.ContainerInspectInfo | null> {
    if (!/^[0-9a-f]{12,64}$/.test(runtimeId)) return null;
    try {
      const info = await this.docker.getContainer(runtimeId).inspect();
      if (info.Config.Labels?.[LABEL_SANDBOX_ID] === undefined) return null;
      this.known.add(info.Id);
      return info;
    } catch (err) {
      if (statusOf(err) === 404) {
        this.known.delete(runtimeId);
        return null;
      }
      throw providerError(`docker: inspect ${runtimeId}: ${daemonMessage(err)}`, err);
    }
  }

  /** Throws not_found unless the runtime is a StacyVM container that still exists. */
  private async requireContainer(runtimeId: string): Promise<Docker.Container> {
    if (!this.known.has(runtimeId) && (await this.inspectOwned(runtimeId)) === null) throw notFound('runtime', runtimeId);
    return this.docker.getContainer(runtimeId);
  }

  /** Maps an error from a container-scoped call; a 404 means the container is gone. */
  private containerError(runtimeId: string, op: string, err: unknown): StacyError {
    if (err instanceof StacyError) return err;
    const status = statusOf(err);
    if (status === 404) {
      this.known.delete(runtimeId);
      return notFound('runtime', runtimeId);
    }
    if (status === 409) return conflict(`docker: ${op}: ${daemonMessage(err)}`);
    return providerError(`docker: ${op} on ${runtimeId}: ${daemonMessage(err)}`, err);
  }

  async destroy(runtimeId: string): Promise<void> {
    // A container this instance created or inspected carries our labels for good; only an
    // unfamiliar id needs the ownership check before it may be removed.
    if (!this.known.has(runtimeId) && (await this.inspectOwned(runtimeId)) === null) return;
    try {
      await this.docker.getContainer(runtimeId).remove({ force: true, v: true });
    } catch (err) {
      // 404: already gone; 409: a concurrent removal is in progress and will finish it.
      const status = statusOf(err);
      if (status !== 404 && status !== 409) throw providerError(`docker: remove ${runtimeId}: ${daemonMessage(err)}`, err);
    }
    this.known.delete(runtimeId);
  }

  execStream(runtimeId: string, request: ExecRequest, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    return this.runExec(runtimeId, request, signal, false);
  }

  /** `internal`: a provider helper, whose start failures are not classified (no recursion). */
  private async *runExec(runtimeId: string, request: ExecRequest, signal: AbortSignal | undefined, internal: boolean): AsyncGenerator<ExecEvent> {
    validateExecRequest(request);
    signal?.throwIfAborted();
    const container = await this.requireContainer(runtimeId);
    const marker = randomBytes(12).toString('hex');
    const cmd = execArgv(request);
    const workdir = request.workdir ?? WORKSPACE;
    // The marker is how a timeout finds the command's processes; a client value must not mask it.
    const env = Object.entries(request.env)
      .filter(([k]) => k !== EXEC_MARKER_ENV)
      .map(([k, v]) => `${k}=${v}`);
    env.push(`${EXEC_MARKER_ENV}=${marker}`);
    const started = Date.now();
    let stream: NodeJS.ReadWriteStream;
    let exec: Docker.Exec;
    try {
      exec = await container.exec({
        Cmd: cmd,
        Env: env,
        WorkingDir: workdir,
        AttachStdout: true,
        AttachStderr: true,
        AttachStdin: false,
        Tty: false,
      });
      stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadWriteStream;
    } catch (err) {
      // dockerd answers 409 or 500 when the container is not running; look at it to tell a
      // stopped sandbox (conflict) from one being destroyed (gone).
      if (statusOf(err) === 409 || statusOf(err) === 500) {
        const info = await this.inspectOwned(runtimeId).catch(() => null);
        if (info === null || info.State.Status === 'removing' || info.State.Status === 'dead') throw notFound('runtime', runtimeId);
        if (!info.State.Running) throw conflict(`sandbox runtime ${runtimeId} is not running`);
      }
      throw this.containerError(runtimeId, 'exec', err);
    }
    let finished = false;
    let timedOut = false;
    let aborted = false;
    let killing: Promise<void> | null = null;
    const killTree = (): Promise<void> => {
      killing ??= this.killExecTree(container, marker);
      return killing;
    };
    const timer = setTimeout(
      () => {
        timedOut = true;
        void killTree();
      },
      Math.min(request.timeoutMs, MAX_TIMER_MS),
    );
    const onAbort = (): void => {
      aborted = true;
      void killTree();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      let startChecked = false;
      let failedStart = false;
      const diagnostic: Buffer[] = [];
      for await (const chunk of demuxDockerStream(stream as AsyncIterable<Buffer>)) {
        if (!startChecked) {
          startChecked = true;
          failedStart = await this.execFailedToStart(exec);
        }
        // When the runtime cannot start the command it writes its own error to stdout; that
        // is a diagnostic, not the command's output.
        if (failedStart) diagnostic.push(chunk.data);
        else yield { type: chunk.stream, data: chunk.data };
      }
      clearTimeout(timer);
      if (killing !== null) await killing;
      if (timedOut) throw timeoutError(`command exceeded its ${request.timeoutMs} ms timeout and was killed`);
      if (aborted) throw signal?.reason instanceof Error ? signal.reason : badRequest('exec aborted');
      let exitCode = await this.execExitCode(exec, runtimeId);
      if (failedStart && !internal) {
        // Docker says 126 for every start failure; tell a missing workdir (not_found) from a
        // missing program (127, as a shell would) and one that cannot be executed (126).
        const why = await this.helper(runtimeId, START_FAILURE_SCRIPT, [workdir, cmd[0] ?? '']);
        if (why.exitCode === EXIT_NOT_FOUND) throw notFound('workdir', workdir);
        if (why.exitCode === 126 || why.exitCode === 127) exitCode = why.exitCode;
      }
      if (diagnostic.length > 0) yield { type: 'stderr', data: Buffer.concat(diagnostic) };
      finished = true;
      yield { type: 'exit', exitCode, durationMs: Date.now() - started };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      (stream as unknown as { destroy?: () => void }).destroy?.();
      // Leaving early (break, throw in the consumer) must not leave the command running.
      if (!finished) await killTree();
    }
  }

  /**
   * True when the runtime never started the command (missing binary or working directory):
   * the exec ends without ever having had a pid. Asked once, at the first output.
   */
  private async execFailedToStart(exec: Docker.Exec): Promise<boolean> {
    for (let attempt = 0; attempt < 50; attempt++) {
      let info: Docker.ExecInspectInfo;
      try {
        info = await exec.inspect();
      } catch {
        return false;
      }
      if (info.Pid > 0) return false;
      if (!info.Running) return true;
      await new Promise((r) => setTimeout(r, 10));
    }
    return false;
  }

  private async execExitCode(exec: Docker.Exec, runtimeId: string): Promise<number> {
    // The stream can close a moment before the daemon records the exit code.
    for (let attempt = 0; attempt < 50; attempt++) {
      let info: Docker.ExecInspectInfo;
      try {
        info = await exec.inspect();
      } catch (err) {
        // The container was removed while the command ran: destroy killed it (SIGKILL).
        if (statusOf(err) === 404) return 137;
        throw this.containerError(runtimeId, 'exec inspect', err);
      }
      if (!info.Running && info.ExitCode !== null) return info.ExitCode;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw providerError(`docker: exec on ${runtimeId} ended without an exit code`);
  }

  /** Runs an internal command as root (not the image's user), draining output; returns the exit code. */
  private async rootExec(container: Docker.Container, cmd: string[]): Promise<number> {
    const exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, User: '0' });
    const stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadableStream;
    for await (const _chunk of demuxDockerStream(stream as AsyncIterable<Buffer>)) {
      // Output is not used; draining lets the command finish.
    }
    for (let attempt = 0; attempt < 50; attempt++) {
      const info = await exec.inspect();
      if (!info.Running && info.ExitCode !== null) return info.ExitCode;
      await new Promise((r) => setTimeout(r, 20));
    }
    return -1;
  }

  private async killExecTree(container: Docker.Container, marker: string): Promise<void> {
    // A saturated pids limit can make the kill exec itself fail to start; retry briefly.
    for (let attempt = 1; attempt <= 10; attempt++) {
      try {
        const exitCode = await this.rootExec(container, ['/bin/sh', '-c', KILL_TREE_SCRIPT, 'sh', marker]);
        if (exitCode === 0) return;
        this.log?.warn({ containerId: container.id, exitCode, attempt }, 'exec tree kill incomplete');
      } catch (err) {
        // A container that is gone or stopped has no processes left to kill.
        if (statusOf(err) === 404 || statusOf(err) === 409) return;
        this.log?.warn({ containerId: container.id, err: daemonMessage(err), attempt }, 'exec tree kill failed');
      }
      await new Promise((r) => setTimeout(r, 100 * attempt));
    }
  }

  /** Runs a helper script as argv (paths are positional parameters, never spliced into code). */
  private async helper(runtimeId: string, script: string, args: string[]): Promise<{ exitCode: number; stdout: Buffer; stderr: string }> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let exitCode = -1;
    const request: ExecRequest = {
      command: '/bin/sh',
      args: ['-c', script, 'sh', ...args],
      mode: 'argv',
      env: {},
      workdir: '/',
      timeoutMs: HELPER_TIMEOUT_MS,
    };
    for await (const event of this.runExec(runtimeId, request, undefined, true)) {
      if (event.type === 'stdout') out.push(event.data);
      else if (event.type === 'stderr') err.push(event.data);
      else if (event.type === 'exit') exitCode = event.exitCode;
    }
    return { exitCode, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8').trim() };
  }

  private async helperOk(runtimeId: string, op: string, path: string, script: string, args: string[]): Promise<Buffer> {
    const result = await this.helper(runtimeId, script, args);
    if (result.exitCode === 0) return result.stdout;
    if (result.exitCode === EXIT_NOT_FOUND) throw notFound('path', path);
    if (result.exitCode === EXIT_WRONG_TYPE) {
      if (op === 'list') throw badRequest(`${path} is not a directory`);
      throw conflict(`${path} is a non-empty directory (delete it recursively)`);
    }
    // 126/127: the helper itself could not run (no sh or tool in the image) — our failure.
    // Anything else is the tool refusing the client's request (EACCES, EBUSY, EROFS …).
    const detail = result.stderr || `exit ${result.exitCode}`;
    if (result.exitCode === 126 || result.exitCode === 127) throw providerError(`docker: ${op} ${path}: ${detail}`);
    throw badRequest(`${op} ${path}: ${detail}`);
  }

  async writeFile(runtimeId: string, path: string, content: Buffer | Readable, mode = 0o644): Promise<void> {
    const container = await this.requireContainer(runtimeId);
    if (path === '/') throw badRequest('cannot write to /');
    // dockerd 20.10 answers 500 for writes to a read-only root; say so before trying. /tmp is
    // a tmpfs, which the archive API cannot reach, so /workspace is the only writable tree.
    if (this.config.readOnlyRootfs && !path.startsWith(`${WORKSPACE}/`)) {
      throw badRequest(`cannot write ${path}: the sandbox root filesystem is read-only (write under ${WORKSPACE})`);
    }
    const dir = posix.dirname(path);
    const name = posix.basename(path);
    // A tar header needs the size up front; a stream of unknown length is spooled to a temp
    // file (disk, not memory) so even large uploads never sit in the heap.
    let spool: string | null = null;
    try {
      let size: number;
      let body: () => Readable;
      if (Buffer.isBuffer(content)) {
        size = content.length;
        body = () => Readable.from([content]);
      } else {
        spool = await mkdtemp(join(tmpdir(), 'stacyvm-docker-upload-'));
        const file = join(spool, 'content');
        await pipeline(content, createWriteStream(file));
        size = (await fsStat(file)).size;
        body = () => createReadStream(file);
      }
      const put = async (): Promise<void> => {
        const tar = pack();
        const source = body();
        const entry = tar.entry({ name, size, mode: mode & 0o7777, mtime: new Date(), type: 'file' });
        const feeding = pipeline(source, entry).then(() => tar.finalize());
        feeding.catch((err: unknown) => tar.destroy(err as Error));
        try {
          // copyUIDGID: the file belongs to the container's user, so commands can modify it.
          await container.putArchive(tar as unknown as NodeJS.ReadableStream, { path: dir, noOverwriteDirNonDir: true, copyUIDGID: true });
          await feeding;
        } catch (err) {
          // The daemon refused before reading everything: release the source (a file handle
          // on the spool) instead of leaving the pipeline waiting forever.
          source.destroy();
          tar.destroy();
          throw err;
        }
      };
      try {
        await put();
      } catch (err) {
        if (statusOf(err) !== 404) throw err;
        // The parent directory is missing (or the container is gone: mkdir tells which).
        await this.helperOk(runtimeId, 'mkdir', dir, MKDIR_SCRIPT, [dir]);
        await put();
      }
    } catch (err) {
      // 400 bad path, 403 read-only root filesystem, 409 type clash (file vs directory).
      const status = statusOf(err);
      if (status === 400 || status === 403 || status === 409) throw badRequest(`cannot write ${path}: ${daemonMessage(err)}`);
      // dockerd 20.10 answers 500 when a directory is in the way or the parent is a file;
      // find out which (inside the container) before blaming the runtime.
      if (status === 500 && (await this.helper(runtimeId, WRITE_CLASH_SCRIPT, [path])).exitCode === EXIT_WRONG_TYPE) {
        throw badRequest(`cannot write ${path}: a directory is in the way or a parent is not a directory`);
      }
      throw this.containerError(runtimeId, `write ${path}`, err);
    } finally {
      if (spool !== null) await rm(spool, { recursive: true, force: true });
    }
  }

  async readFile(runtimeId: string, path: string): Promise<Readable> {
    const container = await this.requireContainer(runtimeId);
    let current = path;
    for (let hop = 0; hop <= MAX_SYMLINK_HOPS; hop++) {
      let archive: NodeJS.ReadableStream;
      try {
        archive = await container.getArchive({ path: current });
      } catch (err) {
        if (statusOf(err) === 404) {
          await this.requireContainerFresh(runtimeId);
          throw notFound('path', path);
        }
        throw this.containerError(runtimeId, `read ${path}`, err);
      }
      const first = await this.firstTarEntry(archive);
      if (first.kind === 'symlink') {
        // Resolved here, against the container's own tree: the daemon scopes every lookup to
        // the container root, so `/etc/shadow` or `/proc/1/root/...` is the container's.
        current = posix.resolve(posix.dirname(current), first.target);
        continue;
      }
      if (first.kind === 'file') return first.stream;
      throw badRequest(first.kind === 'directory' ? `${path} is a directory` : `${path} is not a regular file`);
    }
    throw badRequest(`${path}: too many levels of symbolic links`);
  }

  /** Like requireContainer but always asks the daemon (used to tell "no file" from "no container"). */
  private async requireContainerFresh(runtimeId: string): Promise<void> {
    if ((await this.inspectOwned(runtimeId)) === null) throw notFound('runtime', runtimeId);
  }

  private firstTarEntry(
    archive: NodeJS.ReadableStream,
  ): Promise<{ kind: 'file'; stream: Readable } | { kind: 'symlink'; target: string } | { kind: 'directory' | 'other' }> {
    return new Promise((resolve, reject) => {
      const ex = extract();
      let settled = false;
      const out = new PassThrough();
      ex.on('entry', (header, entry, next) => {
        if (settled) {
          entry.resume();
          next();
          return;
        }
        settled = true;
        if (header.type === 'file' || header.type === 'contiguous-file') {
          // Errors surface on `out` (a destroyed reader) or on the extractor; not twice here.
          entry.on('error', () => undefined);
          entry.pipe(out);
          entry.on('end', next);
          resolve({ kind: 'file', stream: out });
          return;
        }
        if (header.type === 'symlink') resolve({ kind: 'symlink', target: header.linkname ?? '' });
        else resolve({ kind: header.type === 'directory' ? 'directory' : 'other' });
        // Only the first entry matters; stop reading a possibly large directory archive.
        entry.resume();
        (archive as unknown as { destroy?: () => void }).destroy?.();
        ex.destroy();
      });
      ex.on('error', (err) => {
        if (!settled) {
          settled = true;
          reject(providerError(`docker: bad archive stream: ${err.message}`, err));
        } else out.destroy(err);
      });
      let drained = false;
      ex.on('finish', () => {
        drained = true;
        if (!settled) {
          settled = true;
          reject(providerError('docker: empty archive stream'));
        }
        out.end();
      });
      // A reader that stops early (destroys the stream) must not leave the daemon connection open.
      out.once('close', () => {
        if (drained) return;
        (archive as unknown as { destroy?: () => void }).destroy?.();
        ex.destroy();
      });
      archive.on('error', (err: Error) => ex.destroy(err));
      archive.pipe(ex);
    });
  }

  async listFiles(runtimeId: string, path: string): Promise<FileEntry[]> {
    const out = await this.helperOk(runtimeId, 'list', path, LIST_SCRIPT, [path]);
    return parseStatRecords(out, path).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async stat(runtimeId: string, path: string): Promise<FileEntry> {
    const out = await this.helperOk(runtimeId, 'stat', path, STAT_SCRIPT, [path]);
    const [entry] = parseStatRecords(out, null);
    if (entry === undefined) throw providerError(`docker: stat ${path}: no output`);
    return entry;
  }

  async deleteFile(runtimeId: string, path: string, recursive: boolean): Promise<void> {
    if (path === '/' || path === WORKSPACE) throw badRequest(`refusing to delete ${path}`);
    await this.helperOk(runtimeId, 'delete', path, DELETE_SCRIPT, [path, recursive ? 'recursive' : 'single']);
  }

  async moveFile(runtimeId: string, fromPath: string, toPath: string): Promise<void> {
    await this.helperOk(runtimeId, 'move', fromPath, MOVE_SCRIPT, [fromPath, toPath]);
  }

  async chmod(runtimeId: string, path: string, mode: number): Promise<void> {
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest(`mode must be between 0 and 0o7777`);
    await this.helperOk(runtimeId, 'chmod', path, CHMOD_SCRIPT, [path, mode.toString(8)]);
  }

  async glob(runtimeId: string, pattern: string): Promise<string[]> {
    if (!pattern.startsWith('/')) throw badRequest('glob pattern must be absolute');
    const scan = picomatch.scan(pattern);
    const base = scan.base === '' ? '/' : scan.base;
    // `find` lists candidates under the literal prefix; matching happens here so the pattern
    // is never interpreted by a shell.
    const result = await this.helper(runtimeId, `[ -e "$1" ] || exit ${EXIT_NOT_FOUND}; exec find "$1" -print0`, [base]);
    if (result.exitCode === EXIT_NOT_FOUND) return [];
    if (result.exitCode !== 0 && result.stdout.length === 0) throw providerError(`docker: glob ${pattern}: ${result.stderr}`);
    const isMatch = picomatch(pattern, { dot: false });
    return result.stdout
      .toString('utf8')
      .split('\0')
      .filter((p) => p.length > 0 && isMatch(p))
      .sort();
  }

  async consoleLog(runtimeId: string, lines: number): Promise<string[]> {
    const container = await this.requireContainer(runtimeId);
    let raw: Buffer;
    try {
      raw = (await container.logs({ stdout: true, stderr: true, follow: false, tail: Math.max(0, Math.floor(lines)) })) as Buffer;
    } catch (err) {
      throw this.containerError(runtimeId, 'logs', err);
    }
    const parts: Buffer[] = [];
    for await (const chunk of demuxDockerStream([raw])) parts.push(chunk.data);
    const text = Buffer.concat(parts).toString('utf8');
    const all = text.split('\n');
    if (all.at(-1) === '') all.pop();
    return lines <= 0 ? [] : all.slice(-lines);
  }

  async health(): Promise<ProviderHealth> {
    const started = Date.now();
    const details: Record<string, unknown> = { socket: this.config.socket, runtime: this.config.runtime };
    try {
      await this.docker.ping();
      const latencyMs = Date.now() - started;
      const [version, info] = await Promise.all([this.docker.version(), this.docker.info() as Promise<{ Runtimes?: Record<string, unknown>; DefaultRuntime?: string }>]);
      details.serverVersion = version.Version;
      details.apiVersion = version.ApiVersion;
      details.runtimes = Object.keys(info.Runtimes ?? {});
      details.isolation = this.capabilities.isolation;
      if (info.Runtimes !== undefined && !(this.config.runtime in info.Runtimes)) {
        return { healthy: false, latencyMs, error: `runtime ${JSON.stringify(this.config.runtime)} is not configured in dockerd`, details };
      }
      return { healthy: true, latencyMs, details };
    } catch (err) {
      return { healthy: false, latencyMs: Date.now() - started, error: `docker daemon unreachable: ${daemonMessage(err)}`, details };
    }
  }

  async inventory(): Promise<RuntimeInfo[]> {
    let containers: Docker.ContainerInfo[];
    try {
      containers = await this.docker.listContainers({ all: true, filters: { label: [LABEL_SANDBOX_ID] } });
    } catch (err) {
      throw providerError(`docker: list containers: ${daemonMessage(err)}`, err);
    }
    return containers.map((c) => {
      this.known.add(c.Id);
      const info: RuntimeInfo = { runtimeId: c.Id, status: c.State === 'running' ? 'running' : 'stopped' };
      const labels = c.Labels ?? {};
      if (labels[LABEL_SANDBOX_ID] !== undefined) info.sandboxId = labels[LABEL_SANDBOX_ID];
      if (labels[LABEL_WORKER_ID] !== undefined) info.workerId = labels[LABEL_WORKER_ID];
      if (labels[LABEL_OWNER_ID] !== undefined) info.ownerId = labels[LABEL_OWNER_ID];
      const created = Number(labels[LABEL_CREATED_AT]);
      if (Number.isFinite(created) && created > 0) info.createdAt = created;
      return info;
    });
  }

  async close(): Promise<void> {
    this.known.clear();
  }
}
