import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { forgetExec, killOrphanExecs, recordExec } from '../../src/providers/mock/exec-records.js';

const started: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const child of started.splice(0)) if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), 'SIGKILL');
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** A process group like a mock exec makes: a shell leader with a background child. */
function startGroup(): ChildProcess {
  const child = spawn('/bin/sh', ['-c', 'sleep 300 & sleep 300; wait'], { detached: true, stdio: 'ignore' });
  started.push(child);
  return child;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** True once no running (non-zombie) process is left in the group. */
async function groupGone(pgid: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const members = readdirSync('/proc')
      .filter((e) => /^\d+$/.test(e))
      .map((pid) => {
        try {
          const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
          const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
          return { state: fields[0], pgrp: Number(fields[2]) };
        } catch {
          return undefined;
        }
      })
      .filter((p) => p !== undefined && p.pgrp === pgid && p.state !== 'Z');
    if (members.length === 0) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

async function runtimeDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-exec-records-'));
  dirs.push(dir);
  return dir;
}

describe('mock exec records', () => {
  it('kills every process of a recorded group left by a dead server, and forgets the record', async () => {
    const dir = await runtimeDir();
    const child = startGroup();
    const pgid = child.pid as number;
    await new Promise((r) => setTimeout(r, 100)); // let the shell start its background sleep
    expect(recordExec(dir, pgid)).toBeDefined();
    const killed = await killOrphanExecs(dir, new Set());
    expect(killed).toBeGreaterThanOrEqual(2);
    expect(await groupGone(pgid)).toBe(true);
    expect(await readdir(join(dir, 'execs'))).toEqual([]);
  });

  it('leaves the groups this server still runs alone', async () => {
    const dir = await runtimeDir();
    const child = startGroup();
    const pgid = child.pid as number;
    recordExec(dir, pgid);
    expect(await killOrphanExecs(dir, new Set([pgid]))).toBe(0);
    expect(alive(pgid)).toBe(true);
  });

  it('never kills a process whose id was recycled after the record was written', async () => {
    const dir = await runtimeDir();
    const child = startGroup();
    const pgid = child.pid as number;
    // A record for the same group id but a leader that started later than this one: the
    // live processes are older than the record, so they are not the recorded command.
    await mkdir(join(dir, 'execs'), { recursive: true });
    await writeFile(join(dir, 'execs', `${pgid}-${Number.MAX_SAFE_INTEGER}`), '');
    expect(await killOrphanExecs(dir, new Set())).toBe(0);
    expect(alive(pgid)).toBe(true);
  });

  it('forgetting a record of a runtime already removed is harmless', () => {
    expect(() => forgetExec('/nonexistent/execs/1-2')).not.toThrow();
    expect(() => forgetExec(undefined)).not.toThrow();
  });
});
