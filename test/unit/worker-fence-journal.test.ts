/**
 * The worker's lease floors on disk: a fence built on the same journal after a "restart" still
 * refuses older generations, the file is replaced atomically, an unreadable file stops the
 * worker rather than silently forgetting, and the retention rule never drops a live resource.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock, toIso } from '../../src/core/clock.js';
import { FENCE_RETAIN_MS, LeaseFence, type WireLease } from '../../src/workerproto/index.js';
import { FileFenceJournal, fenceJournalPath } from '../../src/worker/fence-journal.js';
import { codeOf } from '../fixtures/workerproto.js';

const SB = 'sb-0123abcd';
const OTHER = 'sb-0000beef';

describe('FileFenceJournal', () => {
  let dir: string;
  let clock: ManualClock;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-fence-'));
    clock = new ManualClock();
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const path = () => fenceJournalPath(dir, 'w1');
  const fence = (isLive: (id: string) => boolean = () => false) =>
    new LeaseFence('w1', clock, { journal: new FileFenceJournal(path(), 'w1'), isLive });
  const lease = (generation: number, resource = SB, ttlMs = 60_000): WireLease => ({
    resource_id: resource,
    holder_id: 'w1',
    generation,
    expires_at: toIso(clock.now() + ttlMs),
  });

  it('a fence rebuilt from the journal still refuses generations older than one accepted before', () => {
    const before = fence();
    before.admit(lease(7), SB);
    before.admit(lease(2, OTHER), OTHER);

    const after = fence();
    expect(after.highestGeneration(SB)).toBe(7);
    expect(codeOf(() => after.admit(lease(6), SB))).toBe('lease_conflict');
    expect(codeOf(() => after.admit(lease(7), SB))).toBeUndefined();
    expect(codeOf(() => after.admit(lease(1, OTHER), OTHER))).toBe('lease_conflict');
  });

  it('writes through a temporary file and leaves only the journal behind', () => {
    fence().admit(lease(3), SB);
    expect(readdirSync(dir)).toEqual(['worker-w1.lease-fence.json']);
    expect(JSON.parse(readFileSync(path(), 'utf8'))).toEqual({
      format: 1,
      worker_id: 'w1',
      resources: { [SB]: { generation: 3, expires_at: toIso(clock.now() + 60_000) } },
    });
  });

  it('a refused lease writes nothing', () => {
    const f = fence();
    f.admit(lease(3), SB);
    const text = readFileSync(path(), 'utf8');
    expect(codeOf(() => f.admit(lease(2), SB))).toBe('lease_conflict');
    expect(codeOf(() => f.admit({ ...lease(9), holder_id: 'w2' }, SB))).toBe('lease_conflict');
    expect(readFileSync(path(), 'utf8')).toBe(text);
  });

  it('an unreadable journal or one of another worker is an error, not an empty fence', () => {
    writeFileSync(path(), '{"format":1,"worker_id":"w1","resou');
    expect(codeOf(() => fence())).toBe('internal');
    writeFileSync(path(), JSON.stringify({ format: 1, worker_id: 'w2', resources: {} }));
    expect(codeOf(() => fence())).toBe('internal');
  });

  it('a journal that cannot be written refuses the call instead of admitting it unrecorded', () => {
    const f = new LeaseFence('w1', clock, { journal: new FileFenceJournal(join(dir, 'not-a-dir', 'j.json'), 'w1') });
    writeFileSync(join(dir, 'not-a-dir'), 'x');
    expect(codeOf(() => f.admit(lease(1), SB))).toBe('unavailable');
    expect(f.highestGeneration(SB)).toBeUndefined();
  });

  it('drops a floor only when the resource is gone from the worker and its lease expired beyond the retention', () => {
    const live = new Set([SB]);
    const f = fence((id) => live.has(id));
    f.admit(lease(4), SB);
    f.admit(lease(9, OTHER), OTHER);
    clock.advance(60_000 + FENCE_RETAIN_MS - 1);
    expect(f.prune()).toBe(0);
    clock.advance(1);
    // OTHER is gone and past retention; SB still has a runtime here, so its floor stays whatever its age.
    expect(f.prune()).toBe(1);
    expect(f.highestGeneration(OTHER)).toBeUndefined();
    expect(f.highestGeneration(SB)).toBe(4);
    expect(fence((id) => live.has(id)).highestGeneration(OTHER)).toBeUndefined();
    live.clear();
    clock.advance(1);
    expect(f.prune()).toBe(1);
    expect(f.size).toBe(0);
    expect(existsSync(path())).toBe(true);
  });
});
