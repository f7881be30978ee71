/**
 * How a worker-side process proves who it is: a static token, a token file that is read again
 * on every use (so an operator rotates it by rewriting the file, without a restart), or a
 * signing key list from which short-lived signed tokens are minted per audience.
 */
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { StacyError } from '../core/errors.js';
import type { Clock } from '../core/clock.js';
import { WorkerAuthenticator, mintWorkerToken, type AuthenticatedWorker, type WorkerAudience, type WorkerAuthSettings, type WorkerScope } from '../workerproto/index.js';

export type WorkerCredential =
  | { kind: 'token'; token: string }
  | { kind: 'token_file'; path: string }
  | {
      kind: 'signing_key';
      /** Rotation list; the first key signs. */
      keys: readonly string[];
      /** Defaults to every scope. */
      scopes?: readonly WorkerScope[];
      /** Lifetime of each minted token; defaults to 5 minutes (capped at 15 by the verifier). */
      ttlMs?: number;
    };

const DEFAULT_SIGNED_TTL_MS = 5 * 60_000;
/** A cached signed token is replaced this long before it expires, so it never arrives stale. */
const REFRESH_MARGIN_MS = 60_000;

/**
 * Produces the token to present for one audience. Signed tokens are cached until shortly
 * before expiry because minting a fresh jti per call would only grow verifier logs.
 */
export class CredentialSource {
  private cached = new Map<WorkerAudience, { token: string; refreshAt: number }>();

  constructor(
    private readonly workerId: string,
    private readonly credential: WorkerCredential,
    private readonly clock: Clock,
  ) {}

  /** The token for `audience`; a token file that cannot be read or is empty is `unauthorized`. */
  async token(audience: WorkerAudience): Promise<string> {
    const c = this.credential;
    switch (c.kind) {
      case 'token':
        return c.token;
      case 'token_file': {
        let text: string;
        try {
          text = await readFile(c.path, 'utf8');
        } catch (err) {
          throw new StacyError('unauthorized', `cannot read worker token file ${c.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
        }
        const token = text.trim();
        if (token === '') throw new StacyError('unauthorized', `worker token file ${c.path} is empty`);
        return token;
      }
      case 'signing_key': {
        const now = this.clock.now();
        const hit = this.cached.get(audience);
        if (hit !== undefined && hit.refreshAt > now) return hit.token;
        const ttlMs = c.ttlMs ?? DEFAULT_SIGNED_TTL_MS;
        const { token } = mintWorkerToken(c.keys, { workerId: this.workerId, audience, now, ttlMs, ...(c.scopes ? { scopes: c.scopes } : {}) });
        this.cached.set(audience, { token, refreshAt: now + Math.max(0, ttlMs - Math.min(REFRESH_MARGIN_MS, ttlMs / 2)) });
        return token;
      }
    }
  }

  /** Headers carrying the worker id and token. */
  async headers(audience: WorkerAudience): Promise<Record<string, string>> {
    return { 'x-worker-id': this.workerId, 'x-worker-token': await this.token(audience) };
  }
}

/**
 * Inbound verification where this worker's own static token lives in a file an operator may
 * rewrite: the file is checked on every call (stat, re-read only when it changed) and its
 * content is this worker's per-worker token on top of the configured settings.
 */
export class TokenFileAuthenticator extends WorkerAuthenticator {
  private stamp = '';
  private inner: WorkerAuthenticator;

  constructor(
    private readonly base: WorkerAuthSettings,
    private readonly workerId: string,
    private readonly path: string,
    private readonly clockRef: Clock,
  ) {
    super(base, clockRef);
    this.inner = new WorkerAuthenticator(base, clockRef);
  }

  override authenticate(workerId: string | undefined, token: string | undefined, audience: WorkerAudience): AuthenticatedWorker {
    let stamp: string;
    try {
      const st = statSync(this.path);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      stamp = 'missing';
    }
    if (stamp !== this.stamp) {
      let own: string;
      try {
        own = readFileSync(this.path, 'utf8').trim();
      } catch {
        own = '';
      }
      // An unreadable or empty file leaves an empty entry, which refuses every static token for this id.
      this.inner = new WorkerAuthenticator({ ...this.base, workerTokens: { ...this.base.workerTokens, [this.workerId]: own } }, this.clockRef);
      this.stamp = stamp;
    }
    return this.inner.authenticate(workerId, token, audience);
  }
}
