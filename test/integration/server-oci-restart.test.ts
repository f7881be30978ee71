/**
 * The real server on the oci provider survives its own `kill -9`: a new server on the same data
 * directory finds its 5 live sandboxes running and usable with their files, settles a runtime
 * whose record vanished per `reconcile.unknown_runtimes`, and destroying everything leaves no
 * runc container, bundle or overlay mount behind.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasBinary, hostSupports, isRoot } from '../host.js';
import { CLI, type ServerProcess, call, makeDataDir, removeDir, startServerProcess } from './server-process.js';

const runFile = promisify(execFile);
const supported = hostSupports('server on oci restart', isRoot, hasBinary('runc'), hasBinary('busybox'));

const env = (unknownRuntimes: 'adopt' | 'destroy'): Record<string, string> => ({
  STACYVM_PROVIDERS_DEFAULT: 'oci',
  STACYVM_PROVIDERS_OCI_ENABLED: 'true',
  STACYVM_DEFAULTS_IMAGE: 'busybox',
  STACYVM_RECONCILE_UNKNOWN_RUNTIMES: unknownRuntimes,
});

let server: ServerProcess | undefined;
let dataDir: string | undefined;

const ociRoot = (): string => join(dataDir!, 'oci');
const stateRoot = (): string => join(ociRoot(), 'runc-state');
const bundlesRoot = (): string => join(ociRoot(), 'bundles');

/** Container ids runc knows under the server's state root. */
function runcContainers(): string[] {
  if (!existsSync(stateRoot())) return [];
  return execFileSync('runc', ['--root', stateRoot(), 'list', '--quiet'], { encoding: 'utf8' }).split('\n').filter((l) => l.length > 0);
}
/** Runtime ids (bundle directories) belonging to a sandbox: the provider names them `<sandbox id>-<hex>`. */
function bundlesOf(sandboxId: string): string[] {
  if (!existsSync(bundlesRoot())) return [];
  return readdirSync(bundlesRoot()).filter((d) => d.startsWith(`${sandboxId}-`));
}
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(dir));
}

/** Removes a sandbox's record (and its lease) while no server runs, as if the store had lost it. */
function forgetRecord(id: string): void {
  const db = new Database(join(dataDir!, 'stacyvm.db'));
  try {
    expect(db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id).changes).toBe(1);
    db.prepare('DELETE FROM leases WHERE resource_id = ?').run(id);
  } finally {
    db.close();
  }
}

async function exec(id: string, command: string): Promise<{ exit_code: number; stdout: string }> {
  const res = await call('POST', `${server!.api}/sandboxes/${id}/exec`, { command });
  expect(res.status).toBe(200);
  return res.body as { exit_code: number; stdout: string };
}

beforeAll(async () => {
  if (!supported) return;
  dataDir = await makeDataDir();
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) childEnv[k] = v;
  await runFile(process.execPath, [CLI, 'image', 'build-busybox', 'busybox'], { env: { ...childEnv, STACYVM_DATA_DIR: dataDir }, timeout: 60_000 });
}, 90_000);

afterAll(async () => {
  await server?.stop().catch(() => undefined);
  if (dataDir === undefined) return;
  // Whatever a failed test left: containers first, then the overlay mounts, then the files.
  for (const id of runcContainers()) execFileSync('runc', ['--root', stateRoot(), 'delete', '--force', id], { stdio: 'ignore' });
  for (const line of mountsUnder(ociRoot())) {
    const mountPoint = line.split(' ')[4];
    if (mountPoint !== undefined) await runFile('umount', ['-l', mountPoint]).catch(() => undefined);
  }
  await removeDir(dataDir);
}, 120_000);

describe.runIf(supported)('server on oci after kill -9', () => {
  const ids: string[] = [];
  let stray = '';

  it('a restarted server finds all 5 sandboxes running, usable and with their files; a runtime without a record is destroyed', async () => {
    server = await startServerProcess({ dataDir, env: env('destroy') });
    for (let i = 0; i < 6; i++) {
      const sb = await call('POST', `${server.api}/sandboxes`, {});
      expect(sb.status).toBe(201);
      expect(sb.body).toMatchObject({ provider: 'oci', state: 'running' });
      const id = sb.body.id as string;
      expect((await call('POST', `${server.api}/sandboxes/${id}/files`, { path: '/workspace/mark.txt', content: `mark ${id}` })).status).toBe(200);
      if (i < 5) ids.push(id);
      else stray = id;
    }
    const strayRuntimes = bundlesOf(stray);
    expect(strayRuntimes).toHaveLength(1);
    const strayRuntime = strayRuntimes[0]!;
    expect(runcContainers()).toContain(strayRuntime);

    await server.kill9();
    forgetRecord(stray);
    server = await startServerProcess({ dataDir, env: env('destroy') });

    const listed = (await call('GET', `${server.api}/sandboxes`)).body as { id: string; state: string }[];
    for (const id of ids) expect(listed.find((s) => s.id === id)).toMatchObject({ state: 'running' });
    expect(listed.find((s) => s.id === stray)).toBeUndefined();
    for (const id of ids) {
      expect(await exec(id, 'cat /workspace/mark.txt; echo; hostname')).toMatchObject({ exit_code: 0, stdout: `mark ${id}\n${id}\n` });
      const file = await fetch(`${server.api}/sandboxes/${id}/files?path=/workspace/mark.txt`, { signal: AbortSignal.timeout(20_000) });
      expect(await file.text()).toBe(`mark ${id}`);
    }
    // reconcile.unknown_runtimes = destroy: the recordless runtime is gone entirely.
    expect(runcContainers()).not.toContain(strayRuntime);
    expect(existsSync(join(bundlesRoot(), strayRuntime))).toBe(false);
    expect(mountsUnder(join(bundlesRoot(), strayRuntime))).toEqual([]);
  }, 180_000);

  it('with reconcile.unknown_runtimes = adopt, a runtime whose record vanished comes back under its sandbox id', async () => {
    const lost = ids[4]!;
    await server!.kill9();
    forgetRecord(lost);
    server = await startServerProcess({ dataDir, env: env('adopt') });
    const sb = await call('GET', `${server.api}/sandboxes/${lost}`);
    expect(sb.status).toBe(200);
    expect(sb.body).toMatchObject({ id: lost, provider: 'oci', state: 'running', metadata: { adopted: 'true' } });
    expect(await exec(lost, 'cat /workspace/mark.txt')).toMatchObject({ exit_code: 0, stdout: `mark ${lost}` });
  }, 120_000);

  it('destroying all 5 leaves no runc container, bundle or overlay mount', async () => {
    const runtimes = ids.flatMap(bundlesOf);
    expect(runtimes).toHaveLength(5);
    for (const id of ids) expect((await call('DELETE', `${server!.api}/sandboxes/${id}`)).body).toEqual({ status: 'destroyed' });
    const left = runcContainers();
    for (const rt of runtimes) {
      expect(left).not.toContain(rt);
      expect(existsSync(join(bundlesRoot(), rt))).toBe(false);
    }
    expect(left).toEqual([]);
    expect(mountsUnder(ociRoot())).toEqual([]);
    const listed = (await call('GET', `${server!.api}/sandboxes`)).body as { id: string; state: string }[];
    for (const id of ids) expect(listed.find((s) => s.id === id && s.state !== 'destroyed')).toBeUndefined();
  }, 120_000);
});
