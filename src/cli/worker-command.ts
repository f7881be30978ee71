/**
 * `stacyvm worker` (the worker daemon) and `stacyvm worker token issue|inspect|verify`.
 * src/cli/main.ts calls registerWorkerCommands(program).
 *
 * Credentials: `--worker-token`, `--worker-token-file` (re-read on every use, both for the
 * heartbeat and for verifying the control plane's RPC calls) or `--sign` (mint short-lived signed
 * tokens with `auth.worker_signing_keys`). Without a flag the worker uses its entry in
 * `auth.worker_tokens`, else `auth.worker_token`, else signing keys when configured.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { pino, type Logger } from 'pino';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { parseDuration } from '../core/duration.js';
import { StacyError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { buildProviders } from '../main/providers.js';
import type { Provider } from '../providers/provider.js';
import {
  WORKER_AUDIENCES,
  WORKER_SCOPES,
  inspectWorkerToken,
  isWorkerScope,
  mintWorkerToken,
  verifyWorkerToken,
  type WorkerAudience,
  type WorkerAuthenticator,
  type WorkerAuthSettings,
  type WorkerScope,
} from '../workerproto/index.js';
import { TokenFileAuthenticator, type WorkerCredential } from '../worker/credentials.js';
import { WorkerDaemon } from '../worker/daemon.js';
import { rpcServerTls } from '../worker/outbound.js';
import type { WorkerRpcTlsOptions } from '../worker/rpc-server.js';

interface WorkerFlags {
  config?: string;
  id?: string;
  controlPlane?: string;
  listen: string;
  advertiseUrl?: string;
  workerToken?: string;
  workerTokenFile?: string;
  sign?: boolean;
  once?: boolean;
  heartbeatInterval?: string;
  providers?: string;
  maxSandboxes?: string;
  maxSandboxesPerOwner?: string;
  previewDomain?: string;
  rpcTlsCert?: string;
  rpcTlsKey?: string;
  rpcTlsClientCa?: string;
  rpcTlsOptionalClientCert?: boolean;
  controlPlaneCa?: string;
}

/**
 * The providers this worker runs: those the composition root builds from config (enabled and
 * startable on this host), narrowed to `--providers` when given. A requested provider that is
 * not available is an error, never silently dropped.
 */
async function workerProviders(config: Config, requested: string[] | undefined, logger: Logger): Promise<Provider[]> {
  const registry = await buildProviders(config, logger);
  if (requested === undefined) return registry.list();
  const missing = requested.filter((n) => !registry.has(n));
  if (missing.length > 0) {
    throw new StacyError('bad_request', `--providers: ${missing.join(', ')} not available on this host (available: ${registry.names().join(', ') || 'none'}; enable in providers.*)`);
  }
  return requested.map((n) => registry.require(n));
}

function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m === null ? Number.NaN : Number(m[3]);
  if (m === null || port > 65535) throw new StacyError('bad_request', `--listen: expected HOST:PORT, got ${JSON.stringify(value)}`);
  return { host: m[1] ?? (m[2] === '' ? '0.0.0.0' : (m[2] as string)), port };
}

function count(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new StacyError('bad_request', `${flag}: expected a whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

function authSettings(config: Config): WorkerAuthSettings {
  return {
    workerToken: config.auth.workerToken,
    workerTokens: { ...config.auth.workerTokens },
    workerSigningKeys: [...config.auth.workerSigningKeys],
    revokedTokenIds: [...config.auth.revokedTokenIds],
  };
}

/** The outbound credential and the matching inbound verifier for a worker id. */
function credentialsFor(id: string, flags: WorkerFlags, config: Config): { credential: WorkerCredential; rpcAuth: WorkerAuthSettings | WorkerAuthenticator } {
  const base = authSettings(config);
  const chosen = [flags.workerToken !== undefined, flags.workerTokenFile !== undefined, flags.sign === true].filter(Boolean).length;
  if (chosen > 1) throw new StacyError('bad_request', 'use only one of --worker-token, --worker-token-file and --sign');
  if (flags.workerTokenFile !== undefined) {
    return { credential: { kind: 'token_file', path: flags.workerTokenFile }, rpcAuth: new TokenFileAuthenticator(base, id, flags.workerTokenFile, systemClock) };
  }
  if (flags.workerToken !== undefined) {
    return { credential: { kind: 'token', token: flags.workerToken }, rpcAuth: { ...base, workerTokens: { ...base.workerTokens, [id]: flags.workerToken } } };
  }
  const own = Object.hasOwn(base.workerTokens, id) ? base.workerTokens[id] : undefined;
  if (flags.sign !== true && own !== undefined && own !== '') return { credential: { kind: 'token', token: own }, rpcAuth: base };
  if (flags.sign !== true && base.workerToken !== '') return { credential: { kind: 'token', token: base.workerToken }, rpcAuth: base };
  if (base.workerSigningKeys.length > 0) return { credential: { kind: 'signing_key', keys: base.workerSigningKeys }, rpcAuth: base };
  throw new StacyError('bad_request', 'no worker credential: pass --worker-token, --worker-token-file or --sign, or configure auth.worker_tokens/worker_token/worker_signing_keys');
}

/** The listener's TLS: the --rpc-tls-* flags when given, else `worker.rpc_server_tls.*`. */
function rpcTls(flags: WorkerFlags, config: Config): WorkerRpcTlsOptions | undefined {
  if (flags.rpcTlsCert === undefined && flags.rpcTlsKey === undefined) {
    if (flags.rpcTlsClientCa !== undefined) throw new StacyError('bad_request', '--rpc-tls-client-ca needs --rpc-tls-cert and --rpc-tls-key');
    return rpcServerTls(config);
  }
  if (flags.rpcTlsCert === undefined || flags.rpcTlsKey === undefined) throw new StacyError('bad_request', '--rpc-tls-cert and --rpc-tls-key go together');
  return {
    cert: readFileSync(flags.rpcTlsCert),
    key: readFileSync(flags.rpcTlsKey),
    ...(flags.rpcTlsClientCa !== undefined ? { clientCa: readFileSync(flags.rpcTlsClientCa), requireClientCert: flags.rpcTlsOptionalClientCert !== true } : {}),
  };
}

/** Builds (without starting) the daemon the flags describe. */
export async function workerDaemonFromFlags(
  flags: WorkerFlags,
  config: Config,
  logger: Logger,
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<WorkerDaemon> {
  const id = flags.id ?? config.worker.id;
  const controlPlane = flags.controlPlane ?? env.STACYVM_CONTROL_PLANE;
  if (controlPlane === undefined || controlPlane === '') throw new StacyError('bad_request', '--control-plane URL is required (or STACYVM_CONTROL_PLANE)');
  const requested = flags.providers?.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const providers = await workerProviders(config, requested, logger);
  if (providers.length === 0) throw new StacyError('bad_request', 'no providers to run: enable one in providers.* or pass --providers');
  const { credential, rpcAuth } = credentialsFor(id, flags, config);
  const tls = rpcTls(flags, config);
  const maxSandboxes = count(flags.maxSandboxes, '--max-sandboxes') ?? config.defaults.maxSandboxes;
  const perOwner = count(flags.maxSandboxesPerOwner, '--max-sandboxes-per-owner') ?? config.defaults.maxSandboxesPerOwner;
  const previewDomain = flags.previewDomain ?? config.server.previewDomain;
  return new WorkerDaemon({
    workerId: id,
    controlPlaneUrl: controlPlane,
    credential,
    rpcAuth,
    providers,
    ...(flags.once === true ? {} : { listen: parseListen(flags.listen) }),
    ...(flags.advertiseUrl !== undefined ? { advertiseUrl: flags.advertiseUrl } : {}),
    ...(tls !== undefined ? { rpcTls: tls } : {}),
    ...(flags.controlPlaneCa !== undefined ? { controlPlaneTls: { ca: readFileSync(flags.controlPlaneCa) } } : {}),
    heartbeatIntervalMs: flags.heartbeatInterval !== undefined ? parseDuration(flags.heartbeatInterval, '--heartbeat-interval') : config.worker.heartbeatIntervalMs,
    capacity: { maxSandboxes, ...(perOwner > 0 ? { maxSandboxesPerOwner: perOwner } : {}), ...(previewDomain !== '' ? { previewDomain } : {}) },
    hostname: hostname(),
    logger,
    // The lease fence's floors survive a restart here.
    dataDir: config.dataDir,
  });
}

function parseScopes(value: string | undefined): WorkerScope[] | undefined {
  if (value === undefined) return undefined;
  const scopes = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const s of scopes) if (!isWorkerScope(s)) throw new StacyError('bad_request', `--scopes: unknown scope ${JSON.stringify(s)} (known: ${WORKER_SCOPES.join(', ')})`);
  return scopes as WorkerScope[];
}

function parseAudience(value: string): WorkerAudience {
  const aud = value === 'rpc' ? 'worker:rpc' : value === 'control-plane' ? 'worker:control-plane' : value;
  if (!(WORKER_AUDIENCES as readonly string[]).includes(aud)) throw new StacyError('bad_request', `--audience: expected rpc or control-plane, got ${JSON.stringify(value)}`);
  return aud as WorkerAudience;
}

/** Wraps an action so a StacyError or ConfigError prints as one line and exits 1 instead of a stack trace. */
function reported<A extends unknown[]>(fn: (...args: A) => unknown): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      if (!(err instanceof StacyError) && !(err instanceof ConfigError)) throw err;
      process.stderr.write(`error: ${err instanceof StacyError ? `${err.code}: ` : ''}${err.message}\n`);
      process.exitCode = 1;
    }
  };
}

/** Adds `worker` and `worker token issue|inspect|verify` to the program. */
export function registerWorkerCommands(program: Command): void {
  const worker = program
    .command('worker')
    .description('run a worker: this host\'s providers behind the worker RPC, registered with a control plane by heartbeats')
    .option('--config <file>', 'stacyvm.yaml to read (default: STACYVM_CONFIG); also read by the token subcommands')
    .option('--id <id>', 'worker id (default: worker.id)')
    .option('--control-plane <url>', 'control plane base URL (or STACYVM_CONTROL_PLANE)')
    .option('--listen <host:port>', 'address the worker RPC listens on', '127.0.0.1:7424')
    .option('--advertise-url <url>', 'rpc_url the control plane should use (default: the listener\'s URL)')
    .option('--worker-token <token>', 'static worker token')
    .option('--worker-token-file <path>', 'file holding the worker token, re-read on every use')
    .option('--sign', 'mint short-lived signed tokens with auth.worker_signing_keys')
    .option('--once', 'send one heartbeat and exit')
    .option('--heartbeat-interval <duration>', 'heartbeat period (default: worker.heartbeat_interval)')
    .option('--providers <list>', 'comma-separated providers to run (default: the enabled ones)')
    .option('--max-sandboxes <n>', 'advertised capacity (default: defaults.max_sandboxes)')
    .option('--max-sandboxes-per-owner <n>', 'advertised per-owner capacity (default: defaults.max_sandboxes_per_owner)')
    .option('--preview-domain <domain>', 'advertised preview domain (default: server.preview_domain)')
    .option('--rpc-tls-cert <file>', 'PEM server certificate for the RPC listener (enables TLS)')
    .option('--rpc-tls-key <file>', 'PEM key of the server certificate')
    .option('--rpc-tls-client-ca <file>', 'PEM CA that signs control-plane client certificates (enables mTLS)')
    .option('--rpc-tls-optional-client-cert', 'with --rpc-tls-client-ca: also accept connections without a client certificate')
    .option('--control-plane-ca <file>', 'PEM CA to verify an https control plane with')
    .action(
      reported(async (flags: WorkerFlags) => {
        const config = loadConfig({ ...(flags.config !== undefined ? { file: flags.config } : {}) });
        const logger = pino({ level: config.logging.level, base: { service: 'stacyvm-worker' } });
        const daemon = await workerDaemonFromFlags(flags, config, logger);
        if (flags.once === true) {
          await daemon.heartbeatOnce();
          logger.info('heartbeat sent');
          await daemon.close();
          return;
        }
        // First SIGTERM drains (existing sandboxes keep working); a second one, or SIGINT, stops.
        // Installed before start: the control plane lists the worker as soon as it has the first
        // heartbeat, which is before this process has the reply, and a SIGTERM sent then must
        // drain rather than kill.
        let draining = false;
        const stop = () => {
          process.off('SIGTERM', onTerm);
          process.off('SIGINT', stop);
          void daemon.stop().then(
            () => process.exit(0),
            (err: unknown) => {
              logger.error({ err }, 'worker stop failed');
              process.exit(1);
            },
          );
        };
        const onTerm = () => {
          if (draining) return stop();
          draining = true;
          daemon.drain();
        };
        process.on('SIGTERM', onTerm);
        process.on('SIGINT', stop);
        await daemon.start();
      }),
    );

  const token = worker.command('token').description('issue, inspect and verify signed worker tokens');
  token
    .command('issue')
    .description('print a signed token for a worker (signed with the first auth.worker_signing_keys entry)')
    .requiredOption('--worker-id <id>', 'worker the token is for')
    .option('--audience <aud>', 'rpc (control plane → worker) or control-plane (worker → control plane)', 'control-plane')
    .option('--scopes <list>', `comma-separated scopes (default: all of ${WORKER_SCOPES.join(', ')})`)
    .option('--ttl <duration>', 'lifetime, at most 15m', '15m')
    .action(
      reported((_opts: unknown, command: Command) => {
        const opts = command.optsWithGlobals<{ workerId: string; audience: string; scopes?: string; ttl: string; config?: string }>();
        const config = loadConfig({ ...(opts.config !== undefined ? { file: opts.config } : {}) });
        const scopes = parseScopes(opts.scopes);
        const { token: t } = mintWorkerToken(config.auth.workerSigningKeys, {
          workerId: opts.workerId,
          audience: parseAudience(opts.audience),
          ttlMs: parseDuration(opts.ttl, '--ttl'),
          now: Date.now(),
          ...(scopes !== undefined ? { scopes } : {}),
        });
        process.stdout.write(`${t}\n`);
      }),
    );
  token
    .command('inspect')
    .description('print a token\'s claims WITHOUT verifying it')
    .argument('<token>')
    .action(
      reported((t: string) => {
        const claims = inspectWorkerToken(t);
        const out: Record<string, unknown> = { ...claims };
        for (const k of ['iat', 'nbf', 'exp']) if (typeof claims[k] === 'number') out[`${k}_iso`] = new Date((claims[k] as number) * 1000).toISOString();
        process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      }),
    );
  token
    .command('verify')
    .description('verify a token against auth.worker_signing_keys and auth.revoked_token_ids; exit 1 when refused')
    .argument('<token>')
    .option('--audience <aud>', 'rpc or control-plane', 'control-plane')
    .option('--worker-id <id>', 'also require the token to belong to this worker')
    .action(
      reported((t: string, _opts: unknown, command: Command) => {
        const opts = command.optsWithGlobals<{ audience: string; workerId?: string; config?: string }>();
        const config = loadConfig({ ...(opts.config !== undefined ? { file: opts.config } : {}) });
        try {
          const claims = verifyWorkerToken(t, {
            keys: config.auth.workerSigningKeys,
            audience: parseAudience(opts.audience),
            now: Date.now(),
            revokedJtis: config.auth.revokedTokenIds,
            ...(opts.workerId !== undefined ? { expectedWorkerId: opts.workerId } : {}),
          });
          process.stdout.write(`valid\n${JSON.stringify(claims, null, 2)}\n`);
        } catch (err) {
          if (!(err instanceof StacyError)) throw err;
          process.stderr.write(`refused (${err.code}): ${err.message}\n`);
          process.exitCode = 1;
        }
      }),
    );
}
