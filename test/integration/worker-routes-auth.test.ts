/**
 * Every control-plane worker route × every kind of credential, against the real server
 * process: static tokens (shared and per-worker), signed tokens with every way they can be
 * wrong (expiry, skew, lifetime cap, audience, revocation, signature, key rotation, scopes),
 * and user/admin keys. Each (route, credential) pair is its own test, asserts the exact status
 * and error code, and checks that a refused call changed nothing: the worker registry keeps
 * its records and a lease keeps its generation and expiry.
 *
 * Signed tokens are built here from the wire format in docs/worker-rpc.md (HMAC-SHA256 over
 * `stacyvm-worker-v1.<base64url claims>`), not with the server's own signer, so the test also
 * pins the format.
 */
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../src/store/index.js';
import { type ServerProcess, call, makeDataDir, removeDir, startServerProcess } from './server-process.js';

const USER_KEY = 'user-key-0123456789';
const ADMIN_KEY = 'admin-key-0123456789';
const SHARED = 'shared-worker-token-0123456789';
/** w2 has its own entry in auth.worker_tokens, so the shared token no longer opens w2. */
const W2_TOKEN = 'w2-own-token-0123456789';
/** Rotation list on the server: NEW signs in a deployment, OLD is still listed so its tokens verify. */
const KEY_NEW = 'signing-key-new-'.padEnd(48, 'n');
const KEY_OLD = 'signing-key-old-'.padEnd(48, 'o');
/** Was listed before the last rotation and has been removed since. */
const KEY_RETIRED = 'signing-key-retired-'.padEnd(48, 'r');
const KEY_UNKNOWN = 'signing-key-never-configured-'.padEnd(48, 'u');
const REVOKED_JTI = 'jti-revoked-0001';
const ALL_SCOPES = ['worker:heartbeat', 'worker:spawn', 'worker:destroy', 'worker:status', 'worker:exec', 'worker:files', 'worker:logs', 'worker:lease'];
/** The control plane's own worker id (worker.id). */
const OWN_ID = 'cp-self';

const RESOURCE: Record<string, string> = { w1: 'sb-cpauth01', w2: 'sb-cpauth02', [OWN_ID]: 'sb-cpauth03' };

const serverEnv = (keys: string[]): Record<string, string> => ({
  STACYVM_AUTH_ENABLED: 'true',
  STACYVM_AUTH_API_KEY: USER_KEY,
  STACYVM_AUTH_ADMIN_API_KEY: ADMIN_KEY,
  STACYVM_AUTH_WORKER_TOKEN: SHARED,
  STACYVM_AUTH_WORKER_TOKENS: `w2=${W2_TOKEN}`,
  STACYVM_AUTH_WORKER_SIGNING_KEYS: keys.join(','),
  STACYVM_AUTH_REVOKED_TOKEN_IDS: `${REVOKED_JTI},jti-revoked-0002`,
  STACYVM_WORKER_ID: OWN_ID,
  // Keeps w1/w2 fresh for the whole run on a loaded machine, so maintenance never touches them.
  STACYVM_WORKERS_STALE_AFTER: '10m',
});

// --- signed tokens, built from the documented wire format ------------------------------------

interface Claims {
  worker_id?: string;
  jti?: string;
  aud?: string;
  scopes?: string[];
  iat?: number;
  nbf?: number;
  exp?: number;
}

let jtiSeq = 0;
const nowSec = () => Math.floor(Date.now() / 1000);

/** A signed token; `overrides` replace the defaults (w1, control-plane audience, every scope, 5 min). */
function signed(overrides: Claims = {}, key = KEY_NEW): string {
  const iat = overrides.iat ?? nowSec();
  const claims: Claims = { worker_id: 'w1', jti: `jti-cpauth-${++jtiSeq}`, aud: 'worker:control-plane', scopes: ALL_SCOPES, iat, exp: iat + 300, ...overrides };
  const input = `stacyvm-worker-v1.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`;
}

/** Flips one bit of the MAC, keeping the encoding canonical. */
function tamperSignature(token: string): string {
  const dot = token.lastIndexOf('.');
  const mac = Buffer.from(token.slice(dot + 1), 'base64url');
  mac[0] = (mac[0] as number) ^ 1;
  return `${token.slice(0, dot + 1)}${mac.toString('base64url')}`;
}

/** Widens the claims (every scope, a minute longer) and keeps the old MAC. */
function tamperClaims(token: string): string {
  const [prefix, payload, mac] = token.split('.') as [string, string, string];
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Claims;
  claims.scopes = ALL_SCOPES;
  claims.exp = (claims.exp as number) + 60;
  return `${prefix}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${mac}`;
}

// --- routes and credential kinds ------------------------------------------------------------

interface Route {
  name: string;
  scope: string;
  path: (workerId: string) => string;
  body: (tag: string) => unknown;
  /** Checks an accepted call did what the route does, for worker `id`. */
  accepted: (id: string, tag: string, res: Awaited<ReturnType<typeof call>>, before: Snapshot, after: Snapshot) => void;
}

const ROUTES: Route[] = [
  {
    name: 'POST /worker/{id}/heartbeat',
    scope: 'worker:heartbeat',
    path: (id) => `/worker/${id}/heartbeat`,
    body: (tag) => ({ hostname: `${tag}.example`, status: 'online', providers: [], capabilities: ['exec'], capacity: { max_sandboxes: 3 } }),
    accepted: (id, tag, res, before, after) => {
      expect(res.body).toMatchObject({ id, hostname: `${tag}.example`, status: 'online' });
      expect(after.workers[id]?.hostname).toBe(`${tag}.example`);
      expect(after.leases).toEqual(before.leases);
    },
  },
  {
    name: 'POST /worker/{id}/leases/{resource}/renew',
    scope: 'worker:lease',
    path: (id) => `/worker/${id}/leases/${RESOURCE[id] ?? 'sb-cpauth99'}/renew`,
    body: () => ({ ttl: '1m' }),
    accepted: (id, _tag, res, before, after) => {
      const resource = RESOURCE[id] as string;
      const was = before.leases[resource];
      expect(was, `no lease for ${resource}`).toBeDefined();
      expect(res.body.lease).toMatchObject({ resource_id: resource, holder_id: id, generation: (was?.generation ?? 0) + 1 });
      expect(after.leases[resource]?.generation).toBe((was?.generation ?? 0) + 1);
      expect(after.workers).toEqual(before.workers);
    },
  },
];

type Outcome = { status: 200 } | { status: 401; code: 'unauthorized' } | { status: 403; code: 'forbidden' };
const OK: Outcome = { status: 200 };
const E401: Outcome = { status: 401, code: 'unauthorized' };
const E403: Outcome = { status: 403, code: 'forbidden' };

interface Kind {
  kind: string;
  /** The worker id in the URL (default w1). */
  pathId?: string;
  headers: (route: Route) => Record<string, string>;
  expect: Outcome;
}

const as = (id: string, token: string) => ({ 'x-worker-id': id, 'x-worker-token': token });
const bearer = (id: string, token: string) => ({ 'x-worker-id': id, authorization: `Bearer ${token}` });
const withoutScope = (route: Route) => ALL_SCOPES.filter((s) => s !== route.scope);

const KINDS: Kind[] = [
  // Missing or non-worker credentials.
  { kind: 'none', headers: () => ({}), expect: E401 },
  { kind: 'worker id without token', headers: () => ({ 'x-worker-id': 'w1' }), expect: E401 },
  { kind: 'valid shared token without worker id', headers: () => ({ 'x-worker-token': SHARED }), expect: E401 },
  { kind: 'valid signed token without worker id', headers: () => ({ authorization: `Bearer ${signed()}` }), expect: E401 },
  { kind: 'empty token', headers: () => as('w1', ''), expect: E401 },
  { kind: 'unknown static token', headers: () => as('w1', 'not-a-worker-token-0123'), expect: E401 },
  { kind: 'user api key as X-API-Key', headers: () => ({ 'x-api-key': USER_KEY }), expect: E401 },
  { kind: 'user api key as bearer', headers: () => bearer('w1', USER_KEY), expect: E401 },
  { kind: 'user api key as X-Worker-Token', headers: () => as('w1', USER_KEY), expect: E401 },
  { kind: 'admin key as X-Admin-API-Key', headers: () => ({ 'x-admin-api-key': ADMIN_KEY }), expect: E401 },
  { kind: 'admin key as X-Worker-Token', headers: () => as('w1', ADMIN_KEY), expect: E401 },
  { kind: 'admin key as bearer with X-Admin-API-Key', headers: () => ({ ...bearer('w1', ADMIN_KEY), 'x-admin-api-key': ADMIN_KEY }), expect: E401 },
  // Another worker's credentials.
  { kind: "other worker's static token as itself", headers: () => as('w2', W2_TOKEN), expect: E403 },
  { kind: "other worker's static token as w1", headers: () => as('w1', W2_TOKEN), expect: E401 },
  { kind: "other worker's signed token as itself", headers: () => as('w2', signed({ worker_id: 'w2' })), expect: E403 },
  { kind: "other worker's signed token as w1", headers: () => as('w1', signed({ worker_id: 'w2' })), expect: E403 },
  { kind: 'valid shared token naming another worker', headers: () => as('w3', SHARED), expect: E403 },
  // Per-worker tokens override the shared one for that id.
  { kind: 'per-worker token on its own path', pathId: 'w2', headers: () => as('w2', W2_TOKEN), expect: OK },
  { kind: 'per-worker token on its own path as bearer', pathId: 'w2', headers: () => bearer('w2', W2_TOKEN), expect: OK },
  { kind: 'shared token for a worker with its own token', pathId: 'w2', headers: () => as('w2', SHARED), expect: E401 },
  { kind: 'shared token as bearer for a worker with its own token', pathId: 'w2', headers: () => bearer('w2', SHARED), expect: E401 },
  { kind: 'signed token for a worker with its own static token', pathId: 'w2', headers: () => as('w2', signed({ worker_id: 'w2' })), expect: OK },
  // The control plane's own worker record is not a remote worker's to write.
  { kind: "shared token naming the control plane's own worker", pathId: OWN_ID, headers: () => as(OWN_ID, SHARED), expect: E403 },
  { kind: "signed token for the control plane's own worker", pathId: OWN_ID, headers: () => as(OWN_ID, signed({ worker_id: OWN_ID })), expect: E403 },
  // Validity window, lifetime cap and skew.
  { kind: 'expired', headers: () => as('w1', signed({ iat: nowSec() - 600, exp: nowSec() - 120 })), expect: E401 },
  { kind: 'expired within the skew', headers: () => as('w1', signed({ iat: nowSec() - 600, exp: nowSec() - 5 })), expect: OK },
  { kind: 'not yet valid (iat beyond the skew)', headers: () => as('w1', signed({ iat: nowSec() + 180, exp: nowSec() + 480 })), expect: E401 },
  { kind: 'not yet valid (nbf beyond the skew)', headers: () => as('w1', signed({ iat: nowSec(), nbf: nowSec() + 180, exp: nowSec() + 480 })), expect: E401 },
  { kind: 'not yet valid within the skew (iat)', headers: () => as('w1', signed({ iat: nowSec() + 10, exp: nowSec() + 310 })), expect: OK },
  { kind: 'not yet valid within the skew (nbf)', headers: () => as('w1', signed({ iat: nowSec(), nbf: nowSec() + 10, exp: nowSec() + 300 })), expect: OK },
  { kind: 'lifetime longer than the 15 min cap', headers: () => as('w1', signed({ iat: nowSec() - 60, exp: nowSec() - 60 + 15 * 60 + 1 })), expect: E401 },
  { kind: 'lifetime exactly the 15 min cap', headers: () => as('w1', signed({ iat: nowSec(), exp: nowSec() + 15 * 60 })), expect: OK },
  // Audience, revocation, signature and keys.
  { kind: 'wrong audience (worker:rpc)', headers: () => as('w1', signed({ aud: 'worker:rpc' })), expect: E403 },
  { kind: 'unknown audience', headers: () => as('w1', signed({ aud: 'worker:admin' })), expect: E401 },
  { kind: 'revoked jti', headers: () => as('w1', signed({ jti: REVOKED_JTI })), expect: E401 },
  { kind: 'revoked jti as bearer', headers: () => bearer('w1', signed({ jti: REVOKED_JTI })), expect: E401 },
  { kind: 'tampered signature', headers: () => as('w1', tamperSignature(signed())), expect: E401 },
  { kind: 'tampered claims', headers: () => as('w1', tamperClaims(signed({ scopes: [] }))), expect: E401 },
  { kind: 'malformed signed token', headers: () => as('w1', 'stacyvm-worker-v1.e30.AAAA'), expect: E401 },
  { kind: 'signed with an unknown key', headers: () => as('w1', signed({}, KEY_UNKNOWN)), expect: E401 },
  { kind: 'signed with a key removed from the list', headers: () => as('w1', signed({}, KEY_RETIRED)), expect: E401 },
  { kind: 'signed with the shared static token as key', headers: () => as('w1', signed({}, SHARED)), expect: E401 },
  // Scopes.
  { kind: "signed without the route's scope", headers: (r) => as('w1', signed({ scopes: withoutScope(r) })), expect: E403 },
  { kind: 'signed with an empty scope list', headers: () => as('w1', signed({ scopes: [] })), expect: E403 },
  { kind: "signed with only the route's scope", headers: (r) => as('w1', signed({ scopes: [r.scope] })), expect: OK },
  // Valid.
  { kind: 'valid signed (X-Worker-Token)', headers: () => as('w1', signed()), expect: OK },
  { kind: 'valid signed (bearer)', headers: () => bearer('w1', signed()), expect: OK },
  { kind: 'valid signed with the old, still listed key', headers: () => as('w1', signed({}, KEY_OLD)), expect: OK },
  { kind: 'valid shared static (X-Worker-Token)', headers: () => as('w1', SHARED), expect: OK },
  { kind: 'valid shared static (bearer)', headers: () => bearer('w1', SHARED), expect: OK },
];

// --- observing what a call changed ------------------------------------------------------------

interface Snapshot {
  /** Workers by id, without the computed `stale` (and, for the server's own, its timer-driven times). */
  workers: Record<string, Record<string, unknown>>;
  leases: Record<string, { holderId: string; generation: number; expiresAt: number; updatedAt: number }>;
}

let server: ServerProcess;
let store: Store;

async function snapshot(): Promise<Snapshot> {
  const res = await call('GET', `${server.api}/workers`, undefined, { 'x-admin-api-key': ADMIN_KEY });
  expect(res.status, res.text).toBe(200);
  const workers: Snapshot['workers'] = {};
  for (const { stale: _stale, ...w } of res.body as Array<Record<string, unknown>>) {
    // The server refreshes its own record on a timer; what a heartbeat would write is still compared.
    if (w.id === OWN_ID) {
      delete w.last_heartbeat;
      delete w.updated_at;
    }
    workers[w.id as string] = w;
  }
  const leases: Snapshot['leases'] = {};
  for (const l of await store.listLeases()) leases[l.resourceId] = { holderId: l.holderId, generation: l.generation, expiresAt: l.expiresAt, updatedAt: l.updatedAt };
  return { workers, leases };
}

beforeAll(async () => {
  server = await startServerProcess({ env: serverEnv([KEY_NEW, KEY_OLD]) });
  // Leases a remote worker would hold for sandboxes placed on it; the server process shares the
  // SQLite file, so these are the rows its renew route works on.
  store = openStore({ driver: 'sqlite', path: join(server.dataDir, 'stacyvm.db') });
  for (const [holderId, resourceId] of Object.entries(RESOURCE)) await store.acquireLease({ resourceId, resourceType: 'sandbox', holderId, ttlMs: 10 * 60_000 });
  // w1 and w2 exist before the matrix, so "changed nothing" also covers existing records.
  expect((await call('POST', `${server.api}/worker/w1/heartbeat`, ROUTES[0]?.body('w1-initial'), as('w1', SHARED))).status).toBe(200);
  expect((await call('POST', `${server.api}/worker/w2/heartbeat`, ROUTES[0]?.body('w2-initial'), as('w2', W2_TOKEN))).status).toBe(200);
});

afterAll(async () => {
  await store?.close();
  await server?.stop();
  if (server) await removeDir(server.dataDir);
});

describe.each(ROUTES)('$name', (route) => {
  let seq = 0;
  it.each(KINDS)('$kind → $expect.status', async (k) => {
    const id = k.pathId ?? 'w1';
    const tag = `case-${route.scope.replace(':', '-')}-${++seq}`;
    const before = await snapshot();
    const res = await call('POST', `${server.api}${route.path(id)}`, route.body(tag), k.headers(route));
    const after = await snapshot();
    expect(res.status, res.text).toBe(k.expect.status);
    if (k.expect.status === 200) {
      route.accepted(id, tag, res, before, after);
    } else {
      expect(Object.keys(res.body ?? {}).sort(), res.text).toEqual(['code', 'message']);
      expect(res.body.code, res.text).toBe(k.expect.code);
      // Refused: no worker record appeared or changed, no lease moved.
      expect(after).toEqual(before);
      expect(Object.values(after.workers).map((w) => w.hostname)).not.toContain(`${tag}.example`);
    }
  });
});

describe('worker credentials never open user or admin routes', () => {
  const credentials: Array<{ kind: string; headers: () => Record<string, string>; expect: Outcome }> = [
    { kind: 'valid signed (X-Worker-Token)', headers: () => as('w1', signed()), expect: E403 },
    { kind: 'valid signed (bearer with X-Worker-ID)', headers: () => bearer('w1', signed()), expect: E403 },
    { kind: 'valid signed (bearer alone)', headers: () => ({ authorization: `Bearer ${signed()}` }), expect: E401 },
    { kind: 'valid signed as X-API-Key', headers: () => ({ 'x-api-key': signed() }), expect: E401 },
    { kind: 'valid shared static (X-Worker-Token)', headers: () => as('w1', SHARED), expect: E403 },
    { kind: 'valid shared static (bearer alone)', headers: () => ({ authorization: `Bearer ${SHARED}` }), expect: E401 },
    { kind: 'valid shared static as X-API-Key', headers: () => ({ 'x-api-key': SHARED }), expect: E401 },
    { kind: 'valid shared static as X-Admin-API-Key', headers: () => ({ 'x-admin-api-key': SHARED }), expect: E401 },
    { kind: 'per-worker token (X-Worker-Token)', headers: () => as('w2', W2_TOKEN), expect: E403 },
    // Even next to a valid user or admin key, a worker credential does not ride along.
    { kind: 'user key plus worker headers', headers: () => ({ 'x-api-key': USER_KEY, ...as('w1', SHARED) }), expect: E403 },
    { kind: 'admin key plus worker headers', headers: () => ({ 'x-admin-api-key': ADMIN_KEY, ...as('w1', signed()) }), expect: E403 },
  ];
  const routes = [
    { method: 'GET', path: '/sandboxes' },
    { method: 'GET', path: '/workers' },
    { method: 'GET', path: '/workers/w1' },
    { method: 'GET', path: '/admin/diagnostics' },
    { method: 'POST', path: '/admin/workers/w1/heartbeat', body: { hostname: 'from-admin-route.example', status: 'draining' } },
    { method: 'POST', path: '/admin/workers/w1/drain' },
    { method: 'DELETE', path: '/admin/workers/w1' },
  ];
  const pairs = routes.flatMap((r) => credentials.map((c) => ({ ...r, ...c, name: `${r.method} ${r.path}` })));
  it.each(pairs)('$name × $kind → $expect.status', async (p) => {
    const before = await snapshot();
    const res = await call(p.method, `${server.api}${p.path}`, p.body, p.headers());
    expect(res.status, res.text).toBe(p.expect.status);
    expect(res.body.code, res.text).toBe((p.expect as { code: string }).code);
    expect(await snapshot()).toEqual(before);
  });

  it('the same routes do open with the user or admin key (the refusals above are about the credential)', async () => {
    expect((await call('GET', `${server.api}/sandboxes`, undefined, { 'x-api-key': USER_KEY })).status).toBe(200);
    expect((await call('GET', `${server.api}/workers/w1`, undefined, { 'x-api-key': USER_KEY })).status).toBe(200);
    expect((await call('GET', `${server.api}/admin/diagnostics`, undefined, { 'x-admin-api-key': ADMIN_KEY })).status).toBe(200);
  });
});

describe('signing key rotation across restarts', () => {
  // Three server starts on a loaded machine.
  it('a key stays valid while listed and is refused once removed', { timeout: 120_000 }, async () => {
    const dataDir = await makeDataDir();
    const beat = ROUTES[0]?.body('rotation');
    const heartbeat = async (s: ServerProcess, token: string) => {
      const res = await call('POST', `${s.api}/worker/w1/heartbeat`, beat, as('w1', token));
      return res.status === 200 ? 200 : `${res.status} ${res.body?.code}`;
    };
    let s: ServerProcess | undefined;
    try {
      // 1. Only the old key.
      s = await startServerProcess({ dataDir, env: serverEnv([KEY_OLD]) });
      const oldToken = signed({}, KEY_OLD);
      expect(await heartbeat(s, oldToken)).toBe(200);
      expect(await heartbeat(s, signed({}, KEY_NEW))).toBe('401 unauthorized');
      await s.stop();
      // 2. New key prepended: tokens from both verify, including the one issued before.
      s = await startServerProcess({ dataDir, env: serverEnv([KEY_NEW, KEY_OLD]) });
      expect(await heartbeat(s, oldToken)).toBe(200);
      expect(await heartbeat(s, signed({}, KEY_NEW))).toBe(200);
      await s.stop();
      // 3. Old key removed: its still-unexpired token is refused, the new key's tokens work.
      s = await startServerProcess({ dataDir, env: serverEnv([KEY_NEW]) });
      expect(await heartbeat(s, oldToken)).toBe('401 unauthorized');
      expect(await heartbeat(s, signed({}, KEY_OLD))).toBe('401 unauthorized');
      expect(await heartbeat(s, signed({}, KEY_NEW))).toBe(200);
    } finally {
      await s?.stop();
      await removeDir(dataDir);
    }
  });
});
