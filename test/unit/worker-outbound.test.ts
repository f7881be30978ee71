import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { rpcClientTls, rpcCredentialFor, rpcServerTls } from '../../src/worker/outbound.js';

const KEY = 'k'.repeat(40);
const dir = mkdtempSync(join(tmpdir(), 'stacyvm-outbound-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('rpcCredentialFor', () => {
  it('auto prefers signing keys, then the per-worker token, then the shared token', () => {
    expect(rpcCredentialFor(loadConfig({ env: { STACYVM_AUTH_WORKER_SIGNING_KEYS: KEY, STACYVM_AUTH_WORKER_TOKEN: 'shared' } }), 'w1')).toEqual({ kind: 'signing_key', keys: [KEY] });
    const tokens = loadConfig({ env: { STACYVM_AUTH_WORKER_TOKENS: 'w1=own', STACYVM_AUTH_WORKER_TOKEN: 'shared' } });
    expect(rpcCredentialFor(tokens, 'w1')).toEqual({ kind: 'token', token: 'own' });
    expect(rpcCredentialFor(tokens, 'w2')).toEqual({ kind: 'token', token: 'shared' });
  });

  it('token mode ignores signing keys; nothing configured is bad_request', () => {
    const c = loadConfig({ env: { STACYVM_WORKER_RPC_CREDENTIAL: 'token', STACYVM_AUTH_WORKER_SIGNING_KEYS: KEY, STACYVM_AUTH_WORKER_TOKEN: 'shared' } });
    expect(rpcCredentialFor(c, 'w1')).toEqual({ kind: 'token', token: 'shared' });
    expect(() => rpcCredentialFor(loadConfig({ env: {} }), 'w1')).toThrow(expect.objectContaining({ code: 'bad_request' }));
  });
});

describe('TLS settings', () => {
  const ca = join(dir, 'ca.pem');
  const cert = join(dir, 'c.pem');
  const key = join(dir, 'k.pem');
  writeFileSync(ca, 'CA');
  writeFileSync(cert, 'CERT');
  writeFileSync(key, 'KEY');

  it('client TLS is read from worker.rpc_tls.* files', () => {
    expect(rpcClientTls(loadConfig({ env: {} }))).toBeUndefined();
    const c = loadConfig({ env: { STACYVM_WORKER_RPC_TLS_CA: ca, STACYVM_WORKER_RPC_TLS_CERT: cert, STACYVM_WORKER_RPC_TLS_KEY: key, STACYVM_WORKER_RPC_TLS_SERVER_NAME: 'w1.internal' } });
    const tls = rpcClientTls(c);
    expect(tls?.ca?.toString()).toBe('CA');
    expect(tls?.cert?.toString()).toBe('CERT');
    expect(tls?.key?.toString()).toBe('KEY');
    expect(tls?.serverName).toBe('w1.internal');
  });

  it('server TLS requires the client certificate unless marked optional', () => {
    expect(rpcServerTls(loadConfig({ env: {} }))).toBeUndefined();
    const env = { STACYVM_WORKER_RPC_SERVER_TLS_CERT: cert, STACYVM_WORKER_RPC_SERVER_TLS_KEY: key, STACYVM_WORKER_RPC_SERVER_TLS_CLIENT_CA: ca };
    expect(rpcServerTls(loadConfig({ env }))?.requireClientCert).toBe(true);
    expect(rpcServerTls(loadConfig({ env: { ...env, STACYVM_WORKER_RPC_SERVER_TLS_CLIENT_CERT_OPTIONAL: 'true' } }))?.requireClientCert).toBe(false);
  });

  it('an unreadable file is bad_request naming the key', () => {
    const c = loadConfig({ env: { STACYVM_WORKER_RPC_TLS_CA: join(dir, 'missing.pem') } });
    expect(() => rpcClientTls(c)).toThrow(/worker\.rpc_tls\.ca/);
  });
});
