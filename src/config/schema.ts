/**
 * The configuration schema: every key StacyVM understands, in its wire (snake_case) form, with
 * its type, default, environment variable and documentation line. The loader, the docs table
 * and the tests all read this one list, so a key cannot exist in one place and not the others.
 */
import { parseDuration } from '../core/duration.js';

export type KeyKind = 'string' | 'int' | 'number' | 'bool' | 'duration' | 'size' | 'list' | 'map' | 'enum';

/** A coerced value: durations are milliseconds, sizes bytes, maps string → string. */
export type KeyValue = string | number | boolean | string[] | Record<string, string>;

export interface KeyDef {
  /** Dotted snake_case path as written in stacyvm.yaml, e.g. `server.body_limit`. */
  readonly path: string;
  readonly kind: KeyKind;
  /** A value, or a function of the resolved `data_dir` for paths that live under it. */
  readonly default: KeyValue | ((dataDir: string) => KeyValue);
  /** How the default reads in docs when it is derived. */
  readonly defaultText?: string;
  readonly doc: string;
  readonly values?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  /** Replaced by "[redacted]" in diagnostics. */
  readonly secret?: boolean;
}

const underDataDir = (sub: string) => (dataDir: string) => `${dataDir.replace(/\/+$/, '')}/${sub}`;

const MiB = 1024 * 1024;
/**
 * The longest lease the control plane grants is max(worker.lease_ttl, workers.stale_after).
 * Workers forget a finished sandbox's fencing floor 15 minutes after its newest lease expired
 * (FENCE_RETAIN_MS in src/workerproto/fence.ts), which is only safe while no lease lives longer.
 */
const LONGEST_LEASE_MS = 15 * 60_000;

/** Every key, in documentation order. */
export const CONFIG_KEYS = [
  { path: 'data_dir', kind: 'string', default: './.stacyvm', doc: 'Where images, per-sandbox state and a worker\'s lease fence live; relative paths resolve against the working directory.' },

  { path: 'server.host', kind: 'string', default: '127.0.0.1', doc: 'Address the HTTP API listens on.' },
  { path: 'server.port', kind: 'int', default: 7423, min: 0, max: 65535, doc: 'TCP port of the HTTP API; 0 picks a free port.' },
  { path: 'server.preview_domain', kind: 'string', default: '', doc: 'Domain under which sandbox preview URLs are served; empty disables previews.' },
  { path: 'server.body_limit', kind: 'size', default: 10 * MiB, min: 1, doc: 'Largest accepted request body (bytes, or a size like "10MiB"); larger bodies get 413.' },
  { path: 'server.cors_allowed_origins', kind: 'list', default: [], doc: 'Origins allowed by CORS; empty disables CORS headers.' },
  { path: 'server.record_retention', kind: 'duration', default: 24 * 3_600_000, min: 0, doc: 'How long destroyed/expired sandbox records stay inspectable before they are forgotten.' },

  { path: 'providers.default', kind: 'string', default: 'auto', doc: 'Provider used when a spawn names none: an enabled provider, or "auto" (oci when runc works with the default image, else mock).' },
  { path: 'providers.mock.enabled', kind: 'bool', default: true, doc: 'Enable the mock provider (host processes in a temp directory; no isolation).' },
  { path: 'providers.mock.root', kind: 'string', default: underDataDir('mock'), defaultText: '<data_dir>/mock', doc: 'Directory holding mock sandboxes.' },
  { path: 'providers.oci.enabled', kind: 'bool', default: true, doc: 'Enable the oci provider (runc).' },
  { path: 'providers.oci.runc_path', kind: 'string', default: 'runc', doc: 'runc binary, a name looked up on PATH or an absolute path.' },
  { path: 'providers.oci.root', kind: 'string', default: underDataDir('oci'), defaultText: '<data_dir>/oci', doc: 'Root for bundles, overlay directories and runc state.' },
  { path: 'providers.oci.network_mode', kind: 'enum', values: ['none', 'bridge'], default: 'none', doc: 'Sandbox networking: "none" (loopback only) or "bridge".' },
  { path: 'providers.oci.bridge_name', kind: 'string', default: 'stacyvm0', doc: 'Host bridge used in bridge mode.' },
  { path: 'providers.oci.bridge_subnet', kind: 'string', default: '10.88.0.0/16', doc: 'IPv4 subnet (CIDR) of the bridge.' },
  { path: 'providers.oci.read_only_rootfs', kind: 'bool', default: false, doc: 'Mount the sandbox root filesystem read-only.' },
  { path: 'providers.oci.user', kind: 'string', default: '1000:1000', doc: 'uid:gid commands run as inside the sandbox.' },
  { path: 'providers.oci.pids_limit', kind: 'int', default: 256, min: 0, doc: 'Maximum processes per sandbox; 0 = unlimited.' },
  { path: 'providers.oci.added_caps', kind: 'list', default: [], doc: 'Capabilities added to the default set, e.g. CAP_NET_BIND_SERVICE.' },
  { path: 'providers.docker.enabled', kind: 'bool', default: false, doc: 'Enable the docker provider.' },
  { path: 'providers.docker.socket', kind: 'string', default: '/var/run/docker.sock', doc: 'Docker Engine endpoint: a unix socket path or tcp://host:port.' },
  { path: 'providers.docker.runtime', kind: 'string', default: 'runc', doc: 'OCI runtime Docker uses for sandboxes (e.g. runc, runsc).' },
  { path: 'providers.docker.network_mode', kind: 'string', default: 'none', doc: 'Docker network mode for sandboxes.' },
  { path: 'providers.docker.read_only_rootfs', kind: 'bool', default: false, doc: 'Mount the container root filesystem read-only.' },
  { path: 'providers.docker.seccomp_profile', kind: 'string', default: '', doc: 'Path of a seccomp profile; empty uses Docker\'s default profile.' },
  { path: 'providers.docker.dropped_caps', kind: 'list', default: ['ALL'], doc: 'Capabilities dropped from containers.' },
  { path: 'providers.docker.added_caps', kind: 'list', default: [], doc: 'Capabilities added back after dropping.' },
  { path: 'providers.docker.pids_limit', kind: 'int', default: 256, min: 0, doc: 'Maximum processes per container; 0 = unlimited.' },
  { path: 'providers.docker.registry_auth.username', kind: 'string', default: '', doc: 'Registry user for image pulls; empty pulls anonymously.' },
  { path: 'providers.docker.registry_auth.password', kind: 'string', default: '', secret: true, doc: 'Registry password or token for image pulls.' },
  { path: 'providers.docker.registry_auth.serveraddress', kind: 'string', default: '', doc: 'Registry address the credentials are for; empty means Docker Hub.' },

  { path: 'defaults.ttl', kind: 'duration', default: 30 * 60_000, min: 1, doc: 'Sandbox lifetime when a spawn names none.' },
  { path: 'defaults.image', kind: 'string', default: 'python:3', doc: 'Image used when a spawn names none.' },
  { path: 'defaults.memory_mb', kind: 'int', default: 512, min: 1, doc: 'Memory limit (MiB) when a spawn names none.' },
  { path: 'defaults.vcpus', kind: 'number', default: 1, min: 0.01, doc: 'vCPUs when a spawn names none (fractions allowed).' },
  { path: 'defaults.max_ttl', kind: 'duration', default: 24 * 3_600_000, min: 1, doc: 'Longest lifetime a spawn or extend may ask for.' },
  { path: 'defaults.default_exec_timeout', kind: 'duration', default: 60_000, min: 1, doc: 'Exec timeout when a request names none.' },
  { path: 'defaults.max_exec_timeout', kind: 'duration', default: 10 * 60_000, min: 1, doc: 'Longest exec timeout a request may ask for.' },
  { path: 'defaults.max_sandboxes', kind: 'int', default: 100, min: 1, doc: 'Sandboxes alive at once on this server; more get 429 resource_limit.' },
  { path: 'defaults.max_sandboxes_per_owner', kind: 'int', default: 0, min: 0, doc: 'Sandboxes alive at once per owner_id; 0 = unlimited.' },
  { path: 'defaults.max_memory_mb', kind: 'int', default: 8192, min: 1, doc: 'Largest memory_mb a spawn may ask for.' },
  { path: 'defaults.max_vcpus', kind: 'number', default: 8, min: 0.01, doc: 'Largest vcpus a spawn may ask for.' },
  { path: 'defaults.max_exec_output', kind: 'size', default: 10 * MiB, min: 1, doc: 'Exec output kept per stream in buffered responses (bytes or a size like "10MiB").' },

  { path: 'auth.enabled', kind: 'bool', default: false, doc: 'Require an API key on every /api route.' },
  { path: 'auth.api_key', kind: 'string', default: '', secret: true, doc: 'API key clients send as X-API-Key or Authorization: Bearer.' },
  { path: 'auth.admin_api_key', kind: 'string', default: '', secret: true, doc: 'Key for /admin routes, sent as X-Admin-API-Key.' },
  { path: 'auth.admin_fallback_enabled', kind: 'bool', default: false, doc: 'When no admin key is set, let the API key open /admin routes too.' },
  { path: 'auth.worker_token', kind: 'string', default: '', secret: true, doc: 'Shared token every worker may present (staging setups).' },
  { path: 'auth.worker_tokens', kind: 'map', default: {}, secret: true, doc: 'Per-worker tokens (`worker_tokens.<id>: token`); a worker with an entry here must use it instead of the shared token. Env form: `id=token,id2=token2`.' },
  { path: 'auth.worker_signing_keys', kind: 'list', default: [], secret: true, doc: 'HMAC-SHA256 keys for signed worker tokens (at least 32 characters each, none equal to an API key or worker token): the first signs, all verify, so keys rotate by prepending.' },
  { path: 'auth.revoked_token_ids', kind: 'list', default: [], doc: 'jti values of signed worker tokens that are no longer accepted.' },

  { path: 'database.driver', kind: 'enum', values: ['sqlite', 'postgres'], default: 'sqlite', doc: 'Store backend.' },
  { path: 'database.path', kind: 'string', default: underDataDir('stacyvm.db'), defaultText: '<data_dir>/stacyvm.db', doc: 'SQLite database file (driver sqlite).' },
  { path: 'database.dsn', kind: 'string', default: '', secret: true, doc: 'PostgreSQL connection string, required for driver postgres.' },

  { path: 'logging.level', kind: 'enum', values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], default: 'info', doc: 'Minimum log level.' },
  { path: 'logging.format', kind: 'enum', values: ['json', 'pretty'], default: 'json', doc: 'Log line format.' },

  { path: 'worker.id', kind: 'string', default: 'local', doc: 'Id this process registers as in the worker registry.' },
  { path: 'worker.heartbeat_interval', kind: 'duration', default: 30_000, min: 1, doc: 'How often this process refreshes its worker heartbeat.' },
  { path: 'worker.lease_ttl', kind: 'duration', default: 2 * 60_000, min: 1, max: LONGEST_LEASE_MS, doc: 'Lifetime of ownership leases this process acquires; renewed while work continues. At most 15m.' },
  { path: 'worker.max_sandboxes', kind: 'int', default: 0, min: 0, doc: 'Sandboxes this server places on its own providers; once it has that many, placement picks a remote worker. 0 = defaults.max_sandboxes.' },
  { path: 'worker.rpc_credential', kind: 'enum', values: ['auto', 'token', 'signed'], default: 'auto', doc: 'What the control plane presents on its calls to remote workers: "token" (the worker\'s entry in auth.worker_tokens, else auth.worker_token), "signed" (short-lived aud worker:rpc tokens minted with auth.worker_signing_keys), "auto" (signed when signing keys are configured, else token).' },
  { path: 'worker.rpc_tls.ca', kind: 'string', default: '', doc: 'Control plane side: PEM file with the CA that signs workers\' RPC server certificates (https rpc_url); empty trusts the system store.' },
  { path: 'worker.rpc_tls.cert', kind: 'string', default: '', doc: 'Control plane side: PEM client certificate presented to workers that require mTLS (with worker.rpc_tls.key).' },
  { path: 'worker.rpc_tls.key', kind: 'string', default: '', doc: 'Control plane side: PEM private key of worker.rpc_tls.cert.' },
  { path: 'worker.rpc_tls.server_name', kind: 'string', default: '', doc: 'Control plane side: name workers\' certificates are verified against instead of the rpc_url host; empty uses the host.' },
  { path: 'worker.rpc_server_tls.cert', kind: 'string', default: '', doc: 'Worker side: PEM server certificate of the RPC listener (with worker.rpc_server_tls.key); empty serves plain HTTP. --rpc-tls-cert overrides it.' },
  { path: 'worker.rpc_server_tls.key', kind: 'string', default: '', doc: 'Worker side: PEM private key of worker.rpc_server_tls.cert.' },
  { path: 'worker.rpc_server_tls.client_ca', kind: 'string', default: '', doc: 'Worker side: PEM CA that must sign the control plane\'s client certificate (mTLS); empty accepts any client.' },
  { path: 'worker.rpc_server_tls.client_cert_optional', kind: 'bool', default: false, doc: 'Worker side: with client_ca, accept connections without a client certificate (one that is presented must still verify).' },

  { path: 'workers.stale_after', kind: 'duration', default: 2 * 60_000, min: 1, max: LONGEST_LEASE_MS, doc: 'A worker whose last heartbeat is older than this is stale. At most 15m.' },

  { path: 'reconcile.unknown_runtimes', kind: 'enum', values: ['adopt', 'destroy'], default: 'adopt', doc: 'What start-up reconciliation does with provider runtimes the store does not know.' },
  { path: 'reconcile.reap_interval', kind: 'duration', default: 10_000, min: 1, doc: 'How often expired sandboxes are reaped.' },

  { path: 'pool.enabled', kind: 'bool', default: false, doc: 'Keep warm sandboxes ready on this worker; a matching spawn claims one instead of creating a runtime.' },
  { path: 'pool.size', kind: 'int', default: 2, min: 0, doc: 'Warm sandboxes kept ready when the pool is enabled; 0 keeps none.' },
  { path: 'pool.image', kind: 'string', default: '', doc: 'Image of the warm sandboxes; empty uses defaults.image.' },
  { path: 'pool.provider', kind: 'string', default: '', doc: 'Provider of the warm sandboxes; empty uses the default provider.' },
  { path: 'pool.refill_interval', kind: 'duration', default: 5_000, min: 1, doc: 'How often the pool tops itself up (it also refills right after a claim).' },
] as const satisfies readonly KeyDef[];

export type ConfigKeyPath = (typeof CONFIG_KEYS)[number]['path'];

/** STACYVM_ + the key path upper-cased with dots turned into underscores. */
export function envNameOf(path: string): string {
  return `STACYVM_${path.toUpperCase().replace(/\./g, '_')}`;
}

/** Environment variables with the STACYVM_ prefix that are not configuration keys. */
/** Variables read by the CLI client and the worker daemon, not by the server's config. */
const CLIENT_ENV_NAMES = new Set(['STACYVM_CONFIG', 'STACYVM_API_KEY', 'STACYVM_SERVER', 'STACYVM_CONTROL_PLANE']);

export function isExemptEnvName(name: string): boolean {
  return CLIENT_ENV_NAMES.has(name) || name.startsWith('STACYVM_TEST_');
}

export const KEY_BY_PATH: ReadonlyMap<string, KeyDef> = new Map(CONFIG_KEYS.map((k) => [k.path, k]));
export const KEY_BY_ENV: ReadonlyMap<string, KeyDef> = new Map(CONFIG_KEYS.map((k) => [envNameOf(k.path), k]));

/** Every intermediate object path (`providers`, `providers.docker.registry_auth`, …). */
export const SECTION_PATHS: ReadonlySet<string> = new Set(
  CONFIG_KEYS.flatMap((k) => {
    const parts = k.path.split('.');
    return parts.slice(1).map((_, i) => parts.slice(0, i + 1).join('.'));
  }),
);

/** Resolves a key's default against the final data_dir. */
export function defaultOf(def: KeyDef, dataDir: string): KeyValue {
  return typeof def.default === 'function' ? def.default(dataDir) : def.default;
}

/** The default as written in docs. */
export function defaultText(def: KeyDef): string {
  if (def.defaultText !== undefined) return def.defaultText;
  const v = def.default as KeyValue;
  switch (def.kind) {
    case 'duration':
      return formatShortDuration(v as number);
    case 'size':
      return formatSize(v as number);
    case 'list':
      return (v as string[]).length === 0 ? '[]' : (v as string[]).join(',');
    case 'map':
      return '{}';
    case 'string':
    case 'enum':
      return v === '' ? '""' : String(v);
    default:
      return String(v);
  }
}

function formatShortDuration(ms: number): string {
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

function formatSize(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', MiB], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}`;
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1000,
  kib: 1024,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** Thrown by `coerce`; the loader turns it into one entry of a ConfigError. */
export class CoercionError extends Error {}

/**
 * Converts a raw value from YAML (already typed) or the environment (always a string) to the
 * key's type. Strings are accepted for every kind so quoted YAML values and env vars behave alike.
 */
export function coerce(def: KeyDef, raw: unknown): KeyValue {
  const value = coerceKind(def, raw);
  if (typeof value === 'number') {
    if (def.min !== undefined && value < def.min) throw new CoercionError(`must be at least ${def.min}, got ${value}`);
    if (def.max !== undefined && value > def.max) throw new CoercionError(`must be at most ${def.max}, got ${value}`);
  }
  return value;
}

function coerceKind(def: KeyDef, raw: unknown): KeyValue {
  switch (def.kind) {
    case 'string':
      if (typeof raw !== 'string') throw new CoercionError(`expected a string, got ${describe(raw, def)}`);
      return raw;
    case 'enum':
      if (typeof raw !== 'string' || !(def.values ?? []).includes(raw)) {
        throw new CoercionError(`expected one of ${(def.values ?? []).join(', ')}, got ${describe(raw, def)}`);
      }
      return raw;
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string') {
        const s = raw.trim().toLowerCase();
        if (s === 'true' || s === '1') return true;
        if (s === 'false' || s === '0') return false;
      }
      throw new CoercionError(`expected true, false, 1 or 0, got ${describe(raw, def)}`);
    case 'int': {
      const n = typeof raw === 'string' && /^\s*-?\d+\s*$/.test(raw) ? Number(raw) : raw;
      if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw new CoercionError(`expected an integer, got ${describe(raw, def)}`);
      return n;
    }
    case 'number': {
      const n = typeof raw === 'string' && /^\s*-?(\d+(\.\d*)?|\.\d+)\s*$/.test(raw) ? Number(raw) : raw;
      if (typeof n !== 'number' || !Number.isFinite(n)) throw new CoercionError(`expected a number, got ${describe(raw, def)}`);
      return n;
    }
    case 'duration':
      // A bare 0 is unambiguous; any other bare number could mean seconds or milliseconds.
      if (raw === 0) return 0;
      if (typeof raw !== 'string') throw new CoercionError(`expected a duration string like "30s" or "1h30m", got ${describe(raw, def)}`);
      try {
        return parseDuration(raw.trim());
      } catch {
        throw new CoercionError(`expected a duration like "30s" or "1h30m", got ${describe(raw, def)}`);
      }
    case 'size':
      return parseSize(def, raw);
    case 'list':
      if (typeof raw === 'string') return raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
      if (Array.isArray(raw) && raw.every((s) => typeof s === 'string')) return [...raw];
      throw new CoercionError(`expected a list of strings or a comma-separated string, got ${describe(raw, def)}`);
    case 'map':
      return parseMap(def, raw);
  }
}

function parseSize(def: KeyDef, raw: unknown): number {
  if (typeof raw === 'number') {
    if (Number.isSafeInteger(raw) && raw >= 0) return raw;
    throw new CoercionError(`expected a whole number of bytes, got ${describe(raw, def)}`);
  }
  if (typeof raw === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(raw);
    const unit = m ? SIZE_UNITS[(m[2] || 'b').toLowerCase()] : undefined;
    if (m && unit !== undefined) {
      const bytes = Number(m[1]) * unit;
      if (Number.isSafeInteger(bytes)) return bytes;
    }
  }
  throw new CoercionError(`expected bytes or a size like "512KiB", "10MiB", "1GB", got ${describe(raw, def)}`);
}

function parseMap(def: KeyDef, raw: unknown): Record<string, string> {
  // No prototype: an id such as "__proto__" must land as an entry (and fail id validation), not vanish.
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  if (typeof raw === 'string') {
    for (const part of raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0)) {
      const eq = part.indexOf('=');
      if (eq <= 0) throw new CoercionError(`expected comma-separated id=value pairs, got an entry without "="`);
      out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
    }
    return out;
  }
  if (raw !== null && typeof raw === 'object' && !Array.isArray(raw)) {
    for (const [k, v] of Object.entries(raw)) {
      if (typeof v !== 'string') throw new CoercionError(`entry ${JSON.stringify(k)}: expected a string, got ${describe(v, def)}`);
      out[k] = v;
    }
    return out;
  }
  throw new CoercionError(`expected a mapping of id to value, got ${describe(raw, def)}`);
}

/** Names what was given; a secret key's value is never echoed. */
function describe(raw: unknown, def: KeyDef): string {
  if (raw === null) return 'null';
  if (def.secret) return Array.isArray(raw) ? 'a list' : `a ${typeof raw}`;
  if (Array.isArray(raw)) return 'a list';
  if (typeof raw === 'string') return raw.length <= 40 && !/[\r\n]/.test(raw) ? JSON.stringify(raw) : 'a string';
  if (typeof raw === 'object') return 'a mapping';
  return `${typeof raw} ${String(raw)}`;
}
