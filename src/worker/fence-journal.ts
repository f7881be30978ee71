/**
 * The worker's lease floors on disk, so a restarted worker still refuses generations older than
 * ones it accepted before (see LeaseFence). One small JSON file per worker id in the data dir,
 * replaced atomically: written to a temporary file, fsynced, renamed over the old one, and the
 * directory fsynced, so a crash leaves either the old or the new file, never a torn one.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { toIso } from '../core/clock.js';
import { StacyError } from '../core/errors.js';
import type { FenceEntry, FenceJournal } from '../workerproto/index.js';

const FORMAT = 1;

/** Where worker `workerId` keeps its floors under `dataDir`. */
export function fenceJournalPath(dataDir: string, workerId: string): string {
  return join(dataDir, `worker-${workerId}.lease-fence.json`);
}

interface FileShape {
  format: number;
  worker_id: string;
  resources: Record<string, { generation: number; expires_at: string }>;
}

export class FileFenceJournal implements FenceJournal {
  constructor(
    readonly path: string,
    private readonly workerId: string,
  ) {}

  /**
   * The saved floors; empty when the file does not exist yet. A file that cannot be read or
   * parsed is an error rather than an empty fence: starting without the floors would readmit
   * stale generations, so the operator decides (removing the file forgets them).
   */
  load(): Map<string, FenceEntry> {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      throw new StacyError('internal', `cannot read the lease fence ${this.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    const bad = (why: string) => new StacyError('internal', `lease fence ${this.path} is unreadable (${why}); remove it to start with an empty fence`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw bad('not JSON');
    }
    const p = parsed as Partial<FileShape> | null;
    if (p === null || typeof p !== 'object' || p.format !== FORMAT || typeof p.resources !== 'object' || p.resources === null) throw bad(`expected format ${FORMAT}`);
    if (p.worker_id !== this.workerId) throw bad(`it belongs to worker ${JSON.stringify(p.worker_id)}`);
    const out = new Map<string, FenceEntry>();
    for (const [id, e] of Object.entries(p.resources)) {
      const expiresAt = Date.parse(e?.expires_at ?? '');
      if (!Number.isSafeInteger(e?.generation) || !Number.isFinite(expiresAt)) throw bad(`entry ${JSON.stringify(id)}`);
      out.set(id, { generation: e.generation, expiresAt });
    }
    return out;
  }

  save(entries: ReadonlyMap<string, FenceEntry>): void {
    const resources: FileShape['resources'] = {};
    for (const [id, e] of entries) resources[id] = { generation: e.generation, expires_at: toIso(e.expiresAt) };
    const body: FileShape = { format: FORMAT, worker_id: this.workerId, resources };
    const dir = dirname(this.path);
    mkdirSync(dir, { recursive: true });
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      // writeFileSync on a descriptor loops until every byte is written; one writeSync may
      // write fewer (a disk filling up) without throwing, which would rename a torn file in.
      writeFileSync(fd, JSON.stringify(body));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    // The rename is durable only once the directory entry is.
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}
