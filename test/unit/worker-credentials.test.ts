import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import { inspectWorkerToken, verifyWorkerToken } from '../../src/workerproto/index.js';
import { CredentialSource, TokenFileAuthenticator } from '../../src/worker/credentials.js';

const KEY = 'unit-signing-key-'.padEnd(40, 'u');

describe('CredentialSource', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacyvm-cred-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('re-reads a token file on every use and trims it', async () => {
    const file = join(dir, 't');
    await writeFile(file, 'first\n');
    const src = new CredentialSource('w1', { kind: 'token_file', path: file }, new ManualClock());
    expect(await src.headers('worker:rpc')).toEqual({ 'x-worker-id': 'w1', 'x-worker-token': 'first' });
    await writeFile(file, '  second  \n');
    expect(await src.token('worker:rpc')).toBe('second');
  });

  it('a missing or empty token file is unauthorized', async () => {
    const missing = new CredentialSource('w1', { kind: 'token_file', path: join(dir, 'nope') }, new ManualClock());
    await expect(missing.token('worker:rpc')).rejects.toMatchObject({ code: 'unauthorized' });
    await writeFile(join(dir, 'empty'), '\n');
    const empty = new CredentialSource('w1', { kind: 'token_file', path: join(dir, 'empty') }, new ManualClock());
    await expect(empty.token('worker:rpc')).rejects.toBeInstanceOf(StacyError);
  });

  it('mints per-audience signed tokens, reuses them until shortly before expiry, then mints anew', async () => {
    const clock = new ManualClock();
    const src = new CredentialSource('w1', { kind: 'signing_key', keys: [KEY], ttlMs: 5 * 60_000, scopes: ['worker:heartbeat'] }, clock);
    const rpc = await src.token('worker:rpc');
    const cp = await src.token('worker:control-plane');
    expect(inspectWorkerToken(rpc)).toMatchObject({ worker_id: 'w1', aud: 'worker:rpc', scopes: ['worker:heartbeat'] });
    expect(verifyWorkerToken(cp, { keys: [KEY], audience: 'worker:control-plane', now: clock.now() }).worker_id).toBe('w1');
    clock.advance(60_000);
    expect(await src.token('worker:rpc')).toBe(rpc);
    clock.advance(3 * 60_000 + 1);
    const fresh = await src.token('worker:rpc');
    expect(fresh).not.toBe(rpc);
    // The replacement is valid for its full lifetime from now.
    expect(() => verifyWorkerToken(fresh, { keys: [KEY], audience: 'worker:rpc', now: clock.now() + 4 * 60_000 })).not.toThrow();
  });
});

describe('TokenFileAuthenticator', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacyvm-tfa-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("accepts the file's current token for this worker and follows rewrites", async () => {
    const file = join(dir, 'token');
    await writeFile(file, 'one\n');
    const auth = new TokenFileAuthenticator({ workerToken: 'shared', workerTokens: {}, workerSigningKeys: [], revokedTokenIds: [] }, 'w1', file, new ManualClock());
    expect(auth.authenticate('w1', 'one', 'worker:rpc').credential).toBe('per_worker');
    // The file's token replaces the shared token for this worker id.
    expect(() => auth.authenticate('w1', 'shared', 'worker:rpc')).toThrow(StacyError);
    expect(auth.authenticate('w2', 'shared', 'worker:rpc').credential).toBe('shared');
    await writeFile(file, 'two-longer\n');
    expect(() => auth.authenticate('w1', 'one', 'worker:rpc')).toThrow(StacyError);
    expect(auth.authenticate('w1', 'two-longer', 'worker:rpc').worker_id).toBe('w1');
    await rm(file);
    expect(() => auth.authenticate('w1', 'two-longer', 'worker:rpc')).toThrow(StacyError);
  });
});
