/**
 * Crash safety of the real server: `kill -9` while sandboxes are being created, used and
 * destroyed, then a restart on the same data directory. Afterwards every record is either a
 * live, working sandbox whose runtime exists or a terminal record; no runtime lacks a record;
 * nothing is stuck half-made; and nothing created before the crash is lost.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import { type ServerProcess, call, makeDataDir, removeDir, startServerProcess } from './server-process.js';

const cleanup: ServerProcess[] = [];
let marker = '';

/** How many host processes run `sleep <marker>` (the mock runs commands as host processes). */
async function sleeperPids(m: string): Promise<number[]> {
  const { stdout } = await promisify(execFile)('ps', ['-eo', 'pid=,args=']);
  return stdout
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(.*)$/.exec(l))
    .filter((x): x is RegExpExecArray => x !== null && x[2]?.trim() === `sleep ${m}`)
    .map((x) => Number(x[1]));
}
async function sleepers(m: string): Promise<number> {
  return (await sleeperPids(m)).length;
}
let dataDir: string | undefined;
afterAll(async () => {
  for (const s of cleanup) await s.kill9();
  // Our own test command, should it have survived: killed by pid, never by name.
  if (marker !== '') for (const pid of await sleeperPids(marker)) process.kill(pid, 'SIGKILL');
  if (dataDir) await removeDir(dataDir);
});

describe('restart after kill -9', () => {
  it('leaves no orphan and loses no record', async () => {
    dataDir = await makeDataDir();
    const first = await startServerProcess({ dataDir });
    cleanup.push(first);

    const kept: string[] = [];
    for (let i = 0; i < 3; i++) kept.push((await call('POST', `${first.api}/sandboxes`, { metadata: { n: String(i) } })).body.id);
    const gone = (await call('POST', `${first.api}/sandboxes`, {})).body.id as string;
    expect((await call('DELETE', `${first.api}/sandboxes/${gone}`)).status).toBe(200);
    await call('POST', `${first.api}/sandboxes/${kept[0]}/files`, { path: '/workspace/note.txt', content: 'before crash' });

    // Work in flight at the moment of the crash: a running command (seen started) and several spawns.
    marker = `${59 + Math.floor(Math.random() * 1000) / 1000}`;
    const res = await fetch(`${first.api}/sandboxes/${kept[1]}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ command: `echo started; exec sleep ${marker}`, stream: true }),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain('started');
    expect(await sleepers(marker)).toBe(1);
    const spawns = Array.from({ length: 4 }, () => call('POST', `${first.api}/sandboxes`, {}).catch(() => null));
    await new Promise((r) => setTimeout(r, 50));
    await first.kill9();
    await reader.cancel().catch(() => undefined);
    const acknowledged = (await Promise.all(spawns)).filter((r) => r?.status === 201).map((r) => r?.body.id as string);

    const second = await startServerProcess({ dataDir });
    cleanup.push(second);
    const list = (await call('GET', `${second.api}/sandboxes`)).body as { id: string; state: string }[];
    const ids = list.map((s) => s.id);
    // Nothing acknowledged before the crash is lost.
    for (const id of [...kept, ...acknowledged]) expect(ids, id).toContain(id);
    expect(ids).not.toContain(gone);
    // Every listed sandbox works and none is stuck half-made.
    for (const s of list) {
      expect(['running'], `${s.id} is ${s.state}`).toContain(s.state);
      const ex = await call('POST', `${second.api}/sandboxes/${s.id}/exec`, { command: 'echo alive' });
      expect(ex.body.stdout, s.id).toBe('alive\n');
    }
    const note = await fetch(`${second.api}/sandboxes/${kept[0]}/files?path=/workspace/note.txt`);
    expect(await note.text()).toBe('before crash');

    // No orphan runtime: every runtime the mock provider holds belongs to a live record.
    const store = openStore({ driver: 'sqlite', path: join(dataDir, 'stacyvm.db') });
    try {
      const records = await store.listSandboxes();
      expect(records.filter((r) => r.state === 'creating')).toEqual([]);
      const liveRuntimes = new Set(records.filter((r) => r.state === 'running').map((r) => r.runtimeId));
      const onDisk = (await readdir(join(dataDir, 'mock'))).filter((n) => !n.startsWith('.'));
      for (const rt of onDisk) expect(liveRuntimes.has(rt), `runtime ${rt} has no live record`).toBe(true);
      expect(records.find((r) => r.id === gone)?.state).toBe('destroyed');
    } finally {
      await store.close();
    }
    const providers = (await call('GET', `${second.api}/providers`)).body as { name: string; runtime_count?: number }[];
    expect(providers.find((p) => p.name === 'mock')?.runtime_count).toBe(list.length);
    expect(await second.stop()).toBe(0);
  });

  it('leaves no command that was running at the crash alive on the host', async () => {
    expect(marker).not.toBe('');
    for (let i = 0; i < 50 && (await sleepers(marker)) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await sleepers(marker)).toBe(0);
  });
});
