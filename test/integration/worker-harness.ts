/**
 * A real worker for tests: WorkerNode over a MockProvider in a temp dir, served by
 * WorkerRpcServer on 127.0.0.1:0, plus an in-memory lease issuer that behaves like the store
 * (generation grows on every acquire/renew, holder = the worker).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock, toIso, type Clock } from '../../src/core/clock.js';
import { StacyError } from '../../src/core/errors.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import { WorkerAuthenticator, type WireLease, type WorkerAuthSettings } from '../../src/workerproto/index.js';
import { WorkerNode } from '../../src/worker/node.js';
import { WorkerRpcServer, type WorkerRpcTlsOptions } from '../../src/worker/rpc-server.js';

export const SIGNING_KEY = 'test-signing-key-'.padEnd(40, 'x');

export interface TestWorker {
  workerId: string;
  url: string;
  node: WorkerNode;
  server: WorkerRpcServer;
  provider: MockProvider;
  auth: WorkerAuthSettings;
  stop: () => Promise<void>;
}

export interface TestWorkerOptions {
  workerId?: string;
  auth?: Partial<WorkerAuthSettings>;
  tls?: WorkerRpcTlsOptions;
  clock?: Clock;
  streamKeepaliveMs?: number;
  stalledWriteMs?: number;
  logger?: Logger;
  /** Builds the worker's mock provider (a subclass, say) in the given directory. */
  provider?: (root: string) => MockProvider;
}

/** Starts a worker; `stop` closes the server and removes its temp dir. */
export async function startTestWorker(options: TestWorkerOptions = {}): Promise<TestWorker> {
  const workerId = options.workerId ?? 'w1';
  const root = await mkdtemp(join(tmpdir(), 'stacyvm-worker-rpc-'));
  const provider = options.provider?.(root) ?? new MockProvider({ root });
  const node = new WorkerNode({ workerId, providers: [provider], capacity: { maxSandboxes: 50 } });
  const auth: WorkerAuthSettings = {
    workerToken: 'shared-worker-token',
    workerTokens: { w2: 'static-token-w2' },
    workerSigningKeys: [SIGNING_KEY],
    revokedTokenIds: [],
    ...options.auth,
  };
  const clock = options.clock ?? systemClock;
  const server = new WorkerRpcServer({
    node,
    authenticator: new WorkerAuthenticator(auth, clock),
    clock,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.streamKeepaliveMs !== undefined ? { streamKeepaliveMs: options.streamKeepaliveMs } : {}),
    ...(options.stalledWriteMs !== undefined ? { stalledWriteMs: options.stalledWriteMs } : {}),
    ...(options.logger !== undefined ? { logger: options.logger } : {}),
  });
  const url = await server.listen(0, '127.0.0.1');
  node.setRpcUrl(url);
  return {
    workerId,
    url,
    node,
    server,
    provider,
    auth,
    stop: async () => {
      server.closeAllConnections();
      await server.close();
      await provider.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** Issues leases like the store: every acquire bumps the resource's generation. */
export class TestLeases {
  private readonly generations = new Map<string, number>();

  constructor(
    private readonly holder: string,
    private readonly ttlMs = 60_000,
  ) {}

  acquire(resourceId: string): WireLease {
    const generation = (this.generations.get(resourceId) ?? 0) + 1;
    this.generations.set(resourceId, generation);
    return { resource_id: resourceId, holder_id: this.holder, generation, expires_at: toIso(Date.now() + this.ttlMs) };
  }

  readonly supplier = async (resourceId: string): Promise<WireLease> => this.acquire(resourceId);
}

/** A control plane stand-in: authenticates heartbeats like the API does and records them. */
export async function startControlPlane(auth: WorkerAuthSettings) {
  const authenticator = new WorkerAuthenticator(auth, systemClock);
  const beats: Array<{ workerId: string; body: Record<string, unknown>; credential: string }> = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const m = /^\/api\/v1\/worker\/([^/]+)\/heartbeat$/.exec(req.url ?? '');
      if (req.method !== 'POST' || m === null) {
        res.writeHead(404).end();
        return;
      }
      try {
        const caller = authenticator.authenticate(req.headers['x-worker-id'] as string | undefined, req.headers['x-worker-token'] as string | undefined, 'worker:control-plane');
        if (caller.worker_id !== m[1]) throw new StacyError('forbidden', 'wrong worker');
        beats.push({ workerId: caller.worker_id, body: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>, credential: caller.credential });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch (err) {
        const e = err as StacyError;
        res.writeHead(e.status, { 'content-type': 'application/json' }).end(JSON.stringify({ code: e.code, message: e.message }));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return { url, beats, close: () => new Promise<void>((r) => server.close(() => r())) };
}

