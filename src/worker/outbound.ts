/**
 * What the control plane needs for its own calls to remote workers, derived from config: the
 * credential it presents to each worker (`worker.rpc_credential` over `auth.*`) and the TLS
 * client settings (`worker.rpc_tls.*`, PEM files read once here).
 */
import { readFileSync } from 'node:fs';
import type { Config } from '../config/types.js';
import { StacyError } from '../core/errors.js';
import type { WorkerCredential } from './credentials.js';
import type { RemoteWorkerTlsOptions } from './rpc-client.js';
import type { WorkerRpcTlsOptions } from './rpc-server.js';

/**
 * The credential for calls to `workerId`: signed `worker:rpc` tokens when chosen (or, under
 * `auto`, when signing keys exist), else the worker's own static token, else the shared one.
 * Throws `bad_request` when config offers nothing the worker could accept.
 */
export function rpcCredentialFor(config: Pick<Config, 'auth' | 'worker'>, workerId: string): WorkerCredential {
  const a = config.auth;
  const mode = config.worker.rpcCredential;
  if (mode === 'signed' || (mode === 'auto' && a.workerSigningKeys.length > 0)) {
    if (a.workerSigningKeys.length === 0) throw new StacyError('bad_request', 'worker.rpc_credential is "signed" but auth.worker_signing_keys is empty');
    return { kind: 'signing_key', keys: [...a.workerSigningKeys] };
  }
  const own = Object.hasOwn(a.workerTokens, workerId) ? a.workerTokens[workerId] : undefined;
  if (own !== undefined && own !== '') return { kind: 'token', token: own };
  if (a.workerToken !== '') return { kind: 'token', token: a.workerToken };
  throw new StacyError('bad_request', `no credential for calls to worker ${workerId}: configure auth.worker_tokens.${workerId}, auth.worker_token or auth.worker_signing_keys`);
}

function pem(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new StacyError('bad_request', `${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** TLS options for RemoteWorkerClient from `worker.rpc_tls.*`; undefined when none is set. */
export function rpcClientTls(config: Pick<Config, 'worker'>): RemoteWorkerTlsOptions | undefined {
  const t = config.worker.rpcTls;
  if (t.ca === '' && t.cert === '' && t.key === '' && t.serverName === '') return undefined;
  return {
    ...(t.ca !== '' ? { ca: pem(t.ca, 'worker.rpc_tls.ca') } : {}),
    ...(t.cert !== '' ? { cert: pem(t.cert, 'worker.rpc_tls.cert') } : {}),
    ...(t.key !== '' ? { key: pem(t.key, 'worker.rpc_tls.key') } : {}),
    ...(t.serverName !== '' ? { serverName: t.serverName } : {}),
  };
}

/** The worker daemon's listener TLS from `worker.rpc_server_tls.*`; undefined for plain HTTP. */
export function rpcServerTls(config: Pick<Config, 'worker'>): WorkerRpcTlsOptions | undefined {
  const t = config.worker.rpcServerTls;
  if (t.cert === '' || t.key === '') return undefined;
  return {
    cert: pem(t.cert, 'worker.rpc_server_tls.cert'),
    key: pem(t.key, 'worker.rpc_server_tls.key'),
    ...(t.clientCa !== '' ? { clientCa: pem(t.clientCa, 'worker.rpc_server_tls.client_ca'), requireClientCert: !t.clientCertOptional } : {}),
  };
}
