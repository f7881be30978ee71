/**
 * Worker credentials: static tokens (one shared, or one per worker id) and short-lived signed
 * tokens `stacyvm-worker-v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`. The MAC covers
 * the prefix and the encoded claims exactly as sent, so any change to either is detected
 * before the claims are even parsed.
 *
 * Failures split the way the API's error catalog does: a credential that cannot be trusted
 * (missing, malformed, bad signature, expired, revoked) is `unauthorized`; a genuine credential
 * used where it does not apply (another worker's id, the other audience) is `forbidden`.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../core/clock.js';
import { StacyError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { WORKER_ID_PATTERN, WORKER_SCOPES, isWorkerScope, type WorkerClaims, type WorkerScope } from './claims.js';

export const SIGNED_TOKEN_PREFIX = 'stacyvm-worker-v1';
export const WORKER_AUDIENCES = ['worker:control-plane', 'worker:rpc'] as const;
export type WorkerAudience = (typeof WORKER_AUDIENCES)[number];

/** Longest a signed token may live (exp − iat), in seconds. */
export const MAX_TOKEN_LIFETIME_SECONDS = 15 * 60;
/** Clock difference tolerated between issuer and verifier, in seconds. */
export const CLOCK_SKEW_SECONDS = 30;

/** Claims of a signed token; times are seconds since the epoch, as in JWTs. */
export interface SignedTokenClaims {
  worker_id: string;
  jti: string;
  aud: WorkerAudience;
  scopes: WorkerScope[];
  iat: number;
  nbf?: number;
  exp: number;
}

export interface VerifyOptions {
  /** Verification keys; a token signed with any of them is accepted (rotation). */
  keys: readonly string[];
  audience: WorkerAudience;
  /** The worker id the caller claims (X-Worker-ID); a token for another worker is refused. */
  expectedWorkerId?: string;
  /** Epoch milliseconds. */
  now: number;
  revokedJtis?: Iterable<string>;
}

const unauthorized = (message: string): StacyError => new StacyError('unauthorized', message);
const forbidden = (message: string): StacyError => new StacyError('forbidden', message);

const CLAIM_KEYS = new Set(['worker_id', 'jti', 'aud', 'scopes', 'iat', 'nbf', 'exp']);
const B64URL = /^[A-Za-z0-9_-]+$/;

function mac(key: string, signingInput: string): Buffer {
  return createHmac('sha256', key).update(signingInput).digest();
}

/** Throws bad_request unless the claims are well-formed and within the lifetime cap. */
function checkClaimShape(claims: unknown, fail: (m: string) => StacyError): SignedTokenClaims {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) throw fail('claims must be a JSON object');
  const c = claims as Record<string, unknown>;
  for (const k of Object.keys(c)) if (!CLAIM_KEYS.has(k)) throw fail(`unknown claim ${JSON.stringify(k)}`);
  if (typeof c.worker_id !== 'string' || !WORKER_ID_PATTERN.test(c.worker_id)) throw fail('worker_id must be a worker id');
  if (typeof c.jti !== 'string' || c.jti.length === 0 || c.jti.length > 128) throw fail('jti must be a non-empty string of at most 128 characters');
  if (!(WORKER_AUDIENCES as readonly unknown[]).includes(c.aud)) throw fail(`aud must be one of ${WORKER_AUDIENCES.join(', ')}`);
  if (!Array.isArray(c.scopes) || !c.scopes.every(isWorkerScope)) throw fail(`scopes must be a list of ${WORKER_SCOPES.join(', ')}`);
  const time = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (!time(c.iat) || !time(c.exp) || (c.nbf !== undefined && !time(c.nbf))) throw fail('iat, nbf and exp must be whole seconds since the epoch');
  const iat = c.iat as number;
  const exp = c.exp as number;
  if (exp <= iat) throw fail('exp must be after iat');
  if (exp - iat > MAX_TOKEN_LIFETIME_SECONDS) throw fail(`lifetime ${exp - iat}s exceeds the ${MAX_TOKEN_LIFETIME_SECONDS}s maximum`);
  if (c.nbf !== undefined && ((c.nbf as number) >= exp || (c.nbf as number) < iat)) throw fail('nbf must lie between iat and exp');
  return c as unknown as SignedTokenClaims;
}

/** Signs claims with `key`; throws bad_request for malformed claims or a lifetime over the cap. */
export function issueWorkerToken(claims: SignedTokenClaims, key: string): string {
  if (key.length === 0) throw new StacyError('bad_request', 'a signing key is required');
  const checked = checkClaimShape(claims, (m) => new StacyError('bad_request', `worker token claims: ${m}`));
  // Fixed key order keeps tokens for equal claims byte-identical.
  const body: Record<string, unknown> = { worker_id: checked.worker_id, jti: checked.jti, aud: checked.aud, scopes: [...checked.scopes], iat: checked.iat };
  if (checked.nbf !== undefined) body.nbf = checked.nbf;
  body.exp = checked.exp;
  const signingInput = `${SIGNED_TOKEN_PREFIX}.${Buffer.from(JSON.stringify(body)).toString('base64url')}`;
  return `${signingInput}.${mac(key, signingInput).toString('base64url')}`;
}

export interface MintOptions {
  workerId: string;
  audience: WorkerAudience;
  /** Defaults to every scope. */
  scopes?: readonly WorkerScope[];
  /** Lifetime in milliseconds, rounded down to whole seconds; defaults to and is capped at 15 minutes. */
  ttlMs?: number;
  /** Epoch milliseconds of issue. */
  now: number;
}

/** Issues a fresh token (new jti, iat = now) signed with the first key of a rotation list. */
export function mintWorkerToken(keys: readonly string[], options: MintOptions): { token: string; claims: SignedTokenClaims } {
  const signingKey = keys[0];
  if (signingKey === undefined) throw new StacyError('bad_request', 'no signing key configured (auth.worker_signing_keys)');
  const iat = Math.floor(options.now / 1000);
  const lifetime = Math.floor((options.ttlMs ?? MAX_TOKEN_LIFETIME_SECONDS * 1000) / 1000);
  const claims: SignedTokenClaims = {
    worker_id: options.workerId,
    jti: newId('wt'),
    aud: options.audience,
    scopes: [...(options.scopes ?? WORKER_SCOPES)],
    iat,
    exp: iat + lifetime,
  };
  return { token: issueWorkerToken(claims, signingKey), claims };
}

/** Decodes a signed token's claims WITHOUT verifying anything, for display; bad_request if undecodable. */
export function inspectWorkerToken(token: string): Record<string, unknown> {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== SIGNED_TOKEN_PREFIX || !B64URL.test(parts[1] as string)) {
    throw new StacyError('bad_request', `not a ${SIGNED_TOKEN_PREFIX} token`);
  }
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8'));
  } catch {
    throw new StacyError('bad_request', 'token claims are not JSON');
  }
  if (decoded === null || typeof decoded !== 'object' || Array.isArray(decoded)) throw new StacyError('bad_request', 'token claims are not a JSON object');
  return decoded as Record<string, unknown>;
}

/** Whether a presented token has the signed-token shape (as opposed to a static token). */
export function isSignedWorkerToken(token: string): boolean {
  return token.startsWith(`${SIGNED_TOKEN_PREFIX}.`);
}

/**
 * Verifies a signed token: signature against every key in constant time, then claims,
 * audience, validity window (±30 s skew), lifetime cap, revocation and worker id.
 */
export function verifyWorkerToken(token: string, options: VerifyOptions): SignedTokenClaims {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== SIGNED_TOKEN_PREFIX) throw unauthorized('malformed worker token');
  const [, payload, signature] = parts as [string, string, string];
  if (!B64URL.test(payload) || !B64URL.test(signature)) throw unauthorized('malformed worker token');
  const presented = Buffer.from(signature, 'base64url');
  // Only the canonical encoding is accepted, so one token has exactly one spelling (revocation
  // and logging by token stay meaningful).
  if (presented.toString('base64url') !== signature || presented.length !== 32) throw unauthorized('malformed worker token signature');
  if (options.keys.length === 0) throw unauthorized('signed worker tokens are not enabled (no auth.worker_signing_keys)');

  const signingInput = `${SIGNED_TOKEN_PREFIX}.${payload}`;
  let valid = false;
  // Every key is tried even after a match, so timing does not reveal which key signed.
  for (const key of options.keys) if (key.length > 0 && timingSafeEqual(mac(key, signingInput), presented)) valid = true;
  if (!valid) throw unauthorized('worker token signature does not verify');

  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    throw unauthorized('worker token claims are not JSON');
  }
  const claims = checkClaimShape(decoded, (m) => unauthorized(`worker token: ${m}`));

  const nowSeconds = options.now / 1000;
  const notBefore = claims.nbf ?? claims.iat;
  if (nowSeconds + CLOCK_SKEW_SECONDS < notBefore) throw unauthorized('worker token is not valid yet');
  if (nowSeconds - CLOCK_SKEW_SECONDS >= claims.exp) throw unauthorized('worker token has expired');
  for (const jti of options.revokedJtis ?? []) if (jti === claims.jti) throw unauthorized('worker token has been revoked');

  if (claims.aud !== options.audience) throw forbidden(`worker token is for audience ${claims.aud}, not ${options.audience}`);
  if (options.expectedWorkerId !== undefined && claims.worker_id !== options.expectedWorkerId) {
    throw forbidden(`worker token belongs to ${JSON.stringify(claims.worker_id)}, not ${JSON.stringify(options.expectedWorkerId)}`);
  }
  return claims;
}

/** The credential settings the authenticator needs; Config['auth'] satisfies it. */
export interface WorkerAuthSettings {
  workerToken: string;
  workerTokens: Readonly<Record<string, string>>;
  workerSigningKeys: readonly string[];
  revokedTokenIds: readonly string[];
}

/** How a worker proved its identity. */
export type WorkerCredentialKind = 'shared' | 'per_worker' | 'signed';

export interface AuthenticatedWorker extends WorkerClaims {
  credential: WorkerCredentialKind;
  /** The signed token's jti, for audit logs. */
  jti?: string;
}

/** Compares secrets in constant time regardless of their lengths. */
function sameSecret(a: string, b: string): boolean {
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

/**
 * Decides whether (X-Worker-ID, token) identifies a worker for an audience. Static tokens
 * grant every scope and never expire; a worker with an entry in `workerTokens` must use that
 * token, the shared one no longer opens its id.
 */
export class WorkerAuthenticator {
  private readonly revoked: ReadonlySet<string>;

  constructor(
    private readonly settings: WorkerAuthSettings,
    private readonly clock: Clock,
  ) {
    this.revoked = new Set(settings.revokedTokenIds);
  }

  /** Returns the caller's claims or throws `unauthorized`/`forbidden`. */
  authenticate(workerId: string | undefined, token: string | undefined, audience: WorkerAudience): AuthenticatedWorker {
    if (workerId === undefined || workerId === '') throw unauthorized('worker id (X-Worker-ID) is required');
    if (!WORKER_ID_PATTERN.test(workerId)) throw unauthorized('worker id (X-Worker-ID) is not a valid worker id');
    if (token === undefined || token === '') throw unauthorized('worker token is required');

    if (isSignedWorkerToken(token)) {
      const claims = verifyWorkerToken(token, {
        keys: this.settings.workerSigningKeys,
        audience,
        expectedWorkerId: workerId,
        now: this.clock.now(),
        revokedJtis: this.revoked,
      });
      return { worker_id: claims.worker_id, scopes: [...claims.scopes], expires: claims.exp * 1000, credential: 'signed', jti: claims.jti };
    }

    const own = Object.hasOwn(this.settings.workerTokens, workerId) ? this.settings.workerTokens[workerId] : undefined;
    if (own !== undefined) {
      if (own !== '' && sameSecret(token, own)) return staticClaims(workerId, 'per_worker');
      throw unauthorized(`invalid worker token for ${JSON.stringify(workerId)}`);
    }
    const shared = this.settings.workerToken;
    if (shared !== '' && sameSecret(token, shared)) return staticClaims(workerId, 'shared');
    throw unauthorized(`invalid worker token for ${JSON.stringify(workerId)}`);
  }
}

function staticClaims(workerId: string, credential: WorkerCredentialKind): AuthenticatedWorker {
  return { worker_id: workerId, scopes: [...WORKER_SCOPES], expires: null, credential };
}
