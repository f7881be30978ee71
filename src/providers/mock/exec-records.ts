/**
 * Mock commands are host processes in their own process groups. When the server dies with
 * `kill -9` they outlive it, so each running command leaves a record in
 * `<runtimeDir>/execs/<pgid>-<starttime>`, removed when it ends. A later server process kills
 * whatever the records name (inventory at start-up, and destroy), matching processes by
 * process group AND start time so a recycled pid is never touched.
 */
import { mkdirSync, readFileSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

const EXECS_DIR = 'execs';
const RECORD_NAME = /^(\d+)-(\d+)$/;

interface ProcStat {
  pid: number;
  pgrp: number;
  startTime: number;
}

/** Parses /proc/<pid>/stat; the command name may contain spaces and parentheses. */
function parseStat(pid: number, text: string): ProcStat | undefined {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
  // cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime
  const pgrp = Number(fields[2]);
  const startTime = Number(fields[19]);
  return Number.isFinite(pgrp) && Number.isFinite(startTime) ? { pid, pgrp, startTime } : undefined;
}

function statOf(pid: number): ProcStat | undefined {
  try {
    return parseStat(pid, readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Records a just-started command (its pid is its process group id). Synchronous on purpose:
 * the record must exist before anything else can happen, or a crash right after the spawn
 * would leave an untracked process. Returns the record path, or undefined where /proc is
 * unavailable.
 */
export function recordExec(runtimeDir: string, pgid: number): string | undefined {
  const stat = statOf(pgid);
  if (stat === undefined) return undefined;
  const dir = join(runtimeDir, EXECS_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, `${pgid}-${stat.startTime}`);
  writeFileSync(file, '', { mode: 0o600 });
  return file;
}

/** Forgets a command that has ended. */
export function forgetExec(file: string | undefined): void {
  if (file === undefined) return;
  try {
    unlinkSync(file);
  } catch {
    // Already gone with its runtime directory.
  }
}

/**
 * SIGKILLs every process in the recorded groups that this server did not start itself
 * (`ownGroups`), then removes their records. Processes are matched by group id and a start
 * time no earlier than the recorded leader's, so an unrelated process that later received a
 * recycled id is left alone.
 */
export async function killOrphanExecs(runtimeDir: string, ownGroups: ReadonlySet<number>): Promise<number> {
  const dir = join(runtimeDir, EXECS_DIR);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  const orphans = new Map<number, number>();
  for (const name of names) {
    const m = RECORD_NAME.exec(name);
    if (m === null || ownGroups.has(Number(m[1]))) continue;
    orphans.set(Number(m[1]), Number(m[2]));
  }
  if (orphans.size === 0) return 0;
  let killed = 0;
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    let text: string;
    try {
      text = await readFile(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const stat = parseStat(pid, text);
    if (stat === undefined) continue;
    const leaderStart = orphans.get(stat.pgrp);
    if (leaderStart === undefined || stat.startTime < leaderStart) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed++;
    } catch {
      // Exited meanwhile.
    }
  }
  await Promise.all([...orphans].map(([pgid, start]) => rm(join(dir, `${pgid}-${start}`), { force: true })));
  return killed;
}
