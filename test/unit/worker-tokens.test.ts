import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import {
  CLOCK_SKEW_SECONDS,
  MAX_TOKEN_LIFETIME_SECONDS,
  WORKER_SCOPES,
  WorkerAuthenticator,
  inspectWorkerToken,
  issueWorkerToken,
  mintWorkerToken,
  verifyWorkerToken,
  type SignedTokenClaims,
  type VerifyOptions,
  type WorkerAuthSettings,
} from '../../src/workerproto/index.js';
import { loadConfig } from '../../src/config/load.js';
import { codeOf, SIGNING_KEY as KEY } from '../fixtures/workerproto.js';

const OLD_KEY = 'o'.repeat(32);
const clock = new ManualClock();
const nowS = Math.floor(clock.now() / 1000);

function claims(over: Partial<SignedTokenClaims> = {}): SignedTokenClaims {
  return { worker_id: 'w1', jti: 'jti-1', aud: 'worker:rpc', scopes: ['worker:exec', 'worker:spawn'], iat: nowS, exp: nowS + 600, ...over };
}

function opts(over: Partial<VerifyOptions> = {}): VerifyOptions {
  return { keys: [KEY], audience: 'worker:rpc', expectedWorkerId: 'w1', now: clock.now(), revokedJtis: [], ...over };
}

/** Re-encodes the claims segment without re-signing. */
function withClaims(token: string, edit: (c: Record<string, unknown>) => void): string {
  const [prefix, payload, sig] = token.split('.') as [string, string, string];
  const c = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
  edit(c);
  return `${prefix}.${Buffer.from(JSON.stringify(c)).toString('base64url')}.${sig}`;
}

describe('signed worker tokens', () => {
  it('have the documented format', () => {
    const t = issueWorkerToken(claims(), KEY);
    const parts = t.split('.');
    expect(parts).toHaveLength(3);
    expect(parts[0]).toBe('stacyvm-worker-v1');
    expect(JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString())).toEqual(claims());
    expect(Buffer.from(parts[2] as string, 'base64url')).toHaveLength(32);
  });

  it('a valid token verifies and returns its claims', () => {
    expect(verifyWorkerToken(issueWorkerToken(claims({ nbf: nowS }), KEY), opts())).toEqual(claims({ nbf: nowS }));
  });

  it('rejects an expired token (beyond the skew) as unauthorized', () => {
    const t = issueWorkerToken(claims({ iat: nowS - 700, exp: nowS - 100 }), KEY);
    expect(codeOf(() => verifyWorkerToken(t, opts()))).toBe('unauthorized');
  });

  it('tolerates 30 s of skew around exp and nbf, not more', () => {
    const t = issueWorkerToken(claims({ iat: nowS - 600, exp: nowS - 10 }), KEY);
    expect(verifyWorkerToken(t, opts()).jti).toBe('jti-1');
    expect(codeOf(() => verifyWorkerToken(t, opts({ now: (nowS - 10 + CLOCK_SKEW_SECONDS) * 1000 })))).toBe('unauthorized');
    const future = issueWorkerToken(claims({ iat: nowS + 20, exp: nowS + 600 }), KEY);
    expect(verifyWorkerToken(future, opts()).jti).toBe('jti-1');
  });

  it('rejects a not-yet-valid token', () => {
    const byNbf = issueWorkerToken(claims({ nbf: nowS + 120, exp: nowS + 600 }), KEY);
    expect(codeOf(() => verifyWorkerToken(byNbf, opts()))).toBe('unauthorized');
    const byIat = issueWorkerToken(claims({ iat: nowS + 120, exp: nowS + 600 }), KEY);
    expect(codeOf(() => verifyWorkerToken(byIat, opts()))).toBe('unauthorized');
  });

  it('rejects the wrong audience as forbidden', () => {
    const t = issueWorkerToken(claims({ aud: 'worker:control-plane' }), KEY);
    expect(codeOf(() => verifyWorkerToken(t, opts()))).toBe('forbidden');
    expect(verifyWorkerToken(t, opts({ audience: 'worker:control-plane' })).aud).toBe('worker:control-plane');
  });

  it('rejects a revoked jti', () => {
    const t = issueWorkerToken(claims(), KEY);
    expect(codeOf(() => verifyWorkerToken(t, opts({ revokedJtis: ['other', 'jti-1'] })))).toBe('unauthorized');
  });

  it('rejects a tampered signature', () => {
    const t = issueWorkerToken(claims(), KEY);
    const sig = t.split('.')[2] as string;
    const flipped = Buffer.from(sig, 'base64url');
    flipped[0] = (flipped[0] as number) ^ 1;
    const tampered = `${t.slice(0, t.lastIndexOf('.'))}.${flipped.toString('base64url')}`;
    expect(codeOf(() => verifyWorkerToken(tampered, opts()))).toBe('unauthorized');
    expect(codeOf(() => verifyWorkerToken(`${t.slice(0, t.lastIndexOf('.'))}.`, opts()))).toBe('unauthorized');
    expect(codeOf(() => verifyWorkerToken(`${t}A`, opts()))).toBe('unauthorized');
  });

  it('rejects a token signed with an unknown key', () => {
    expect(codeOf(() => verifyWorkerToken(issueWorkerToken(claims(), 'x'.repeat(32)), opts()))).toBe('unauthorized');
  });

  it('rejects tampered claims', () => {
    const t = issueWorkerToken(claims(), KEY);
    for (const edit of [
      (c: Record<string, unknown>) => (c.worker_id = 'w2'),
      (c: Record<string, unknown>) => (c.scopes = [...WORKER_SCOPES]),
      (c: Record<string, unknown>) => (c.exp = (c.exp as number) + 60),
      (c: Record<string, unknown>) => (c.aud = 'worker:control-plane'),
    ]) {
      expect(codeOf(() => verifyWorkerToken(withClaims(t, edit), opts()))).toBe('unauthorized');
    }
  });

  it("rejects another worker's token as forbidden", () => {
    const t = issueWorkerToken(claims({ worker_id: 'w2' }), KEY);
    expect(codeOf(() => verifyWorkerToken(t, opts()))).toBe('forbidden');
    expect(verifyWorkerToken(t, opts({ expectedWorkerId: 'w2' })).worker_id).toBe('w2');
  });

  it('caps the lifetime at 15 minutes, at issue and at verification', () => {
    const over = claims({ exp: nowS + MAX_TOKEN_LIFETIME_SECONDS + 1 });
    expect(codeOf(() => issueWorkerToken(over, KEY))).toBe('bad_request');
    expect(issueWorkerToken(claims({ exp: nowS + MAX_TOKEN_LIFETIME_SECONDS }), KEY)).toMatch(/^stacyvm-worker-v1\./);
    // A token minted elsewhere with a longer lifetime (correctly signed) is still refused.
    const [prefix] = issueWorkerToken(claims(), KEY).split('.');
    const payload = Buffer.from(JSON.stringify(over)).toString('base64url');
    const sig = createHmac('sha256', KEY).update(`${prefix}.${payload}`).digest('base64url');
    expect(codeOf(() => verifyWorkerToken(`${prefix}.${payload}.${sig}`, opts()))).toBe('unauthorized');
  });

  it('rejects malformed claims at issue', () => {
    expect(codeOf(() => issueWorkerToken(claims({ scopes: ['worker:root' as never] }), KEY))).toBe('bad_request');
    expect(codeOf(() => issueWorkerToken(claims({ exp: nowS }), KEY))).toBe('bad_request');
    expect(codeOf(() => issueWorkerToken(claims({ worker_id: 'a b' }), KEY))).toBe('bad_request');
    expect(codeOf(() => issueWorkerToken(claims({ jti: '' }), KEY))).toBe('bad_request');
    expect(codeOf(() => issueWorkerToken(claims(), ''))).toBe('bad_request');
  });

  it('rotation: any listed key verifies; a removed key no longer does', () => {
    const old = issueWorkerToken(claims(), OLD_KEY);
    expect(verifyWorkerToken(old, opts({ keys: [KEY, OLD_KEY] })).jti).toBe('jti-1');
    expect(codeOf(() => verifyWorkerToken(old, opts({ keys: [KEY] })))).toBe('unauthorized');
  });

  it('with no keys configured signed tokens are refused', () => {
    expect(codeOf(() => verifyWorkerToken(issueWorkerToken(claims(), KEY), opts({ keys: [] })))).toBe('unauthorized');
  });

  it.each(['', 'garbage', 'stacyvm-worker-v1', 'stacyvm-worker-v1..', 'stacyvm-worker-v2.e30.AAAA', 'stacyvm-worker-v1.e30.AA.AA'])(
    'rejects malformed token %j',
    (token) => {
      expect(codeOf(() => verifyWorkerToken(token, opts()))).toBe('unauthorized');
    },
  );
});

describe('mintWorkerToken and inspectWorkerToken', () => {
  it('mints with the first key, a fresh jti, every scope and a capped lifetime by default', () => {
    const a = mintWorkerToken([KEY, OLD_KEY], { workerId: 'w1', audience: 'worker:rpc', now: clock.now() });
    const b = mintWorkerToken([KEY, OLD_KEY], { workerId: 'w1', audience: 'worker:rpc', now: clock.now() });
    expect(a.claims.jti).not.toBe(b.claims.jti);
    expect(a.claims.exp - a.claims.iat).toBe(MAX_TOKEN_LIFETIME_SECONDS);
    expect([...a.claims.scopes].sort()).toEqual([...WORKER_SCOPES].sort());
    expect(verifyWorkerToken(a.token, opts({ keys: [KEY] }))).toEqual(a.claims);
    expect(codeOf(() => verifyWorkerToken(a.token, opts({ keys: [OLD_KEY] })))).toBe('unauthorized');
  });

  it('refuses a lifetime over the cap and an empty key list', () => {
    expect(codeOf(() => mintWorkerToken([KEY], { workerId: 'w1', audience: 'worker:rpc', now: clock.now(), ttlMs: 16 * 60_000 }))).toBe('bad_request');
    expect(codeOf(() => mintWorkerToken([], { workerId: 'w1', audience: 'worker:rpc', now: clock.now() }))).toBe('bad_request');
  });

  it('inspect decodes claims without verifying', () => {
    const t = issueWorkerToken(claims({ iat: nowS - 900, exp: nowS - 300 }), 'x'.repeat(32));
    expect(inspectWorkerToken(t)).toMatchObject({ worker_id: 'w1', jti: 'jti-1' });
    expect(codeOf(() => inspectWorkerToken('static-token'))).toBe('bad_request');
    expect(codeOf(() => inspectWorkerToken(`stacyvm-worker-v1.${Buffer.from('[1]').toString('base64url')}.x`))).toBe('bad_request');
  });
});

describe('WorkerAuthenticator', () => {
  const settings: WorkerAuthSettings = {
    workerToken: 'shared-token',
    workerTokens: { w1: 'w1-token', w2: 'w2-token' },
    workerSigningKeys: [KEY, OLD_KEY],
    revokedTokenIds: ['revoked-jti'],
  };
  const auth = new WorkerAuthenticator(settings, clock);

  it('accepts the shared token for a worker without its own token, with every scope', () => {
    const c = auth.authenticate('w3', 'shared-token', 'worker:control-plane');
    expect(c).toMatchObject({ worker_id: 'w3', credential: 'shared', expires: null });
    expect([...c.scopes].sort()).toEqual([...WORKER_SCOPES].sort());
  });

  it('a per-worker token overrides the shared token for that id', () => {
    expect(auth.authenticate('w1', 'w1-token', 'worker:rpc')).toMatchObject({ worker_id: 'w1', credential: 'per_worker' });
    expect(() => auth.authenticate('w1', 'shared-token', 'worker:rpc')).toThrow(StacyError);
    expect(codeOf(() => auth.authenticate('w1', 'shared-token', 'worker:rpc'))).toBe('unauthorized');
  });

  it("refuses another worker's static token", () => {
    expect(codeOf(() => auth.authenticate('w1', 'w2-token', 'worker:rpc'))).toBe('unauthorized');
    expect(codeOf(() => auth.authenticate('w3', 'w2-token', 'worker:rpc'))).toBe('unauthorized');
  });

  it('accepts a signed token and reports its scopes, expiry and jti', () => {
    const t = issueWorkerToken(claims({ aud: 'worker:control-plane', jti: 'j9' }), KEY);
    expect(auth.authenticate('w1', t, 'worker:control-plane')).toEqual({
      worker_id: 'w1',
      scopes: ['worker:exec', 'worker:spawn'],
      expires: (nowS + 600) * 1000,
      credential: 'signed',
      jti: 'j9',
    });
  });

  it('a signed token signed with a still-listed old key verifies', () => {
    expect(auth.authenticate('w1', issueWorkerToken(claims(), OLD_KEY), 'worker:rpc').credential).toBe('signed');
  });

  it.each([
    ['no worker id', undefined, 'shared-token', 'unauthorized'],
    ['an invalid worker id', 'a/b', 'shared-token', 'unauthorized'],
    ['no token', 'w3', undefined, 'unauthorized'],
    ['an empty token', 'w3', '', 'unauthorized'],
    ['a wrong token', 'w3', 'nope', 'unauthorized'],
    ['a revoked signed token', 'w1', issueWorkerToken(claims({ jti: 'revoked-jti' }), KEY), 'unauthorized'],
    ['an expired signed token', 'w1', issueWorkerToken(claims({ iat: nowS - 900, exp: nowS - 60 }), KEY), 'unauthorized'],
    ['a not-yet-valid signed token', 'w1', issueWorkerToken(claims({ nbf: nowS + 300 }), KEY), 'unauthorized'],
    ['a signed token for the other audience', 'w1', issueWorkerToken(claims({ aud: 'worker:control-plane' }), KEY), 'forbidden'],
    ["another worker's signed token", 'w1', issueWorkerToken(claims({ worker_id: 'w2' }), KEY), 'forbidden'],
  ] as const)('refuses %s', (_name, id, token, code) => {
    expect(codeOf(() => auth.authenticate(id, token, 'worker:rpc'))).toBe(code);
  });

  it('with no credentials configured nothing is accepted', () => {
    const none = new WorkerAuthenticator({ workerToken: '', workerTokens: {}, workerSigningKeys: [], revokedTokenIds: [] }, clock);
    expect(codeOf(() => none.authenticate('w1', '', 'worker:rpc'))).toBe('unauthorized');
    expect(codeOf(() => none.authenticate('w1', 'anything', 'worker:rpc'))).toBe('unauthorized');
    expect(codeOf(() => none.authenticate('w1', issueWorkerToken(claims(), KEY), 'worker:rpc'))).toBe('unauthorized');
  });

  it('takes Config.auth directly', () => {
    const config = loadConfig({ env: { STACYVM_AUTH_WORKER_TOKENS: 'w1=abc', STACYVM_AUTH_WORKER_TOKEN: 'shared' } });
    const a = new WorkerAuthenticator(config.auth, clock);
    expect(a.authenticate('w1', 'abc', 'worker:rpc').credential).toBe('per_worker');
    expect(a.authenticate('w9', 'shared', 'worker:rpc').credential).toBe('shared');
  });

  it('follows the injected clock', () => {
    const c = new ManualClock();
    const a = new WorkerAuthenticator(settings, c);
    const s = Math.floor(c.now() / 1000);
    const t = issueWorkerToken(claims({ iat: s, exp: s + 60 }), KEY);
    expect(a.authenticate('w1', t, 'worker:rpc').worker_id).toBe('w1');
    c.advance((60 + CLOCK_SKEW_SECONDS) * 1000);
    expect(codeOf(() => a.authenticate('w1', t, 'worker:rpc'))).toBe('unauthorized');
  });
});
