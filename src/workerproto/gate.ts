/**
 * The order of checks a worker applies to every incoming RPC, in one place so no transport can
 * skip or reorder them: authenticate (before looking at the body), confirm the credential is
 * for this worker, validate the envelope, check the method's scope, and fence lease-required
 * calls. Only a request that passes all of them may touch a provider.
 */
import { StacyError } from '../core/errors.js';
import { requireScope } from './claims.js';
import type { AnyRpcRequest } from './envelope.js';
import { parseRequest } from './envelope.js';
import type { LeaseFence } from './fence.js';
import { leasedResourceOf, scopeOf } from './methods.js';
import type { AuthenticatedWorker, WorkerAuthenticator } from './tokens.js';

export interface IncomingRpc {
  /** X-Worker-ID as sent. */
  workerId: string | undefined;
  /** X-Worker-Token or the Authorization bearer token, as sent. */
  token: string | undefined;
  /** The decoded JSON body. */
  body: unknown;
}

export interface AdmittedRpc {
  request: AnyRpcRequest;
  caller: AuthenticatedWorker;
}

export class WorkerRpcGate {
  constructor(
    private readonly workerId: string,
    private readonly authenticator: WorkerAuthenticator,
    private readonly fence: LeaseFence,
  ) {}

  /**
   * Returns the validated request and its caller, or throws: `unauthorized`/`forbidden` for
   * credentials, `bad_request` for a malformed envelope, `lease_conflict` for a stale lease.
   */
  admit(call: IncomingRpc): AdmittedRpc {
    const caller = this.authenticator.authenticate(call.workerId, call.token, 'worker:rpc');
    if (caller.worker_id !== this.workerId) {
      throw new StacyError('forbidden', `credential is for worker ${JSON.stringify(caller.worker_id)}, this is ${JSON.stringify(this.workerId)}`);
    }
    const request = parseRequest(call.body, { workerId: this.workerId });
    requireScope(caller, scopeOf(request.method));
    const resource = leasedResourceOf(request.method, request.params);
    if (resource !== undefined) this.fence.admit(request.lease, resource);
    return { request, caller };
  }
}
