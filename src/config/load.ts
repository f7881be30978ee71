/**
 * Builds the Config every component receives: schema defaults, then the YAML file, then
 * STACYVM_* environment variables, then programmatic overrides (CLI flags). Every problem —
 * unknown keys, bad values, contradictory settings — is collected and reported in one
 * ConfigError so an operator fixes a file in one pass, and nothing starts on a bad config.
 */
import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { Config } from './types.js';
import {
  CONFIG_KEYS,
  CoercionError,
  KEY_BY_ENV,
  KEY_BY_PATH,
  SECTION_PATHS,
  coerce,
  defaultOf,
  isExemptEnvName,
  type ConfigKeyPath,
  type KeyDef,
  type KeyValue,
} from './schema.js';

export interface ConfigProblem {
  /** Dotted snake_case key path (or the env var name for an unknown variable). */
  key: string;
  /** Where the offending value came from: `default`, `file <path>`, `env <NAME>` or `override`. */
  source: string;
  message: string;
}

/** Every problem found while loading, listed one per line in `message`. */
export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[]) {
    super(
      `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n` +
        problems.map((p) => `  - ${p.key} (${p.source}): ${p.message}`).join('\n'),
    );
    this.name = 'ConfigError';
    this.problems = Object.freeze(problems.map((p) => Object.freeze({ ...p })));
  }
}

export interface LoadConfigOptions {
  /** YAML file; when absent or empty, STACYVM_CONFIG from `env` names it; when neither, no file is read. */
  file?: string;
  /** Environment to read STACYVM_* variables from; defaults to process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Highest-precedence values, shaped like the YAML document (nested or dotted snake_case keys). */
  overrides?: Readonly<Record<string, unknown>>;
}

interface Setting {
  value: KeyValue;
  source: string;
}

const DEFAULT_SOURCE = 'default';

/** Loads, validates and deep-freezes the configuration; throws ConfigError listing every problem. */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const problems: ConfigProblem[] = [];
  const settings = new Map<string, Setting>();
  /** Per-id sources of map entries, so a bad worker token points at the source that set it. */
  const entrySources = new Map<string, string>();
  const invalid = new Set<string>();

  const apply = (def: KeyDef, raw: unknown, source: string): void => {
    let value: KeyValue;
    try {
      value = coerce(def, raw);
    } catch (err) {
      if (!(err instanceof CoercionError)) throw err;
      problems.push({ key: def.path, source, message: err.message });
      invalid.add(def.path);
      return;
    }
    if (def.kind === 'map') {
      // Each entry is its own key (auth.worker_tokens.<id>), so sources merge per entry.
      const entries = value as Record<string, string>;
      const merged = { ...((settings.get(def.path)?.value as Record<string, string> | undefined) ?? {}), ...entries };
      for (const id of Object.keys(entries)) entrySources.set(`${def.path}.${id}`, source);
      settings.set(def.path, { value: merged, source });
      return;
    }
    settings.set(def.path, { value, source });
  };

  const file = nonEmpty(options.file) ?? nonEmpty(env.STACYVM_CONFIG);
  if (file !== undefined) {
    const source = `file ${file}`;
    const doc = readYaml(file, source, problems);
    if (doc !== undefined) walk(doc, '', source, apply, problems);
  }

  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('STACYVM_') || raw === undefined || isExemptEnvName(name)) continue;
    const def = KEY_BY_ENV.get(name);
    if (def === undefined) {
      problems.push({ key: name, source: `env ${name}`, message: `unknown environment variable${suggest(name, [...KEY_BY_ENV.keys()])}` });
      continue;
    }
    apply(def, raw, `env ${name}`);
  }

  if (options.overrides !== undefined) walk(options.overrides, '', 'override', apply, problems);

  const dataDir = (settings.get('data_dir')?.value as string | undefined) ?? (defaultOf(KEY_BY_PATH.get('data_dir') as KeyDef, '') as string);
  const values = new Map<string, KeyValue>();
  const sources = new Map<string, string>();
  for (const def of CONFIG_KEYS) {
    const s = settings.get(def.path);
    values.set(def.path, absolutePath(def.path, s?.value ?? defaultOf(def, dataDir)));
    sources.set(def.path, s?.source ?? DEFAULT_SOURCE);
  }

  const config = assemble(values);
  validate(config, { problems, invalid, sourceOf: (key) => entrySources.get(key) ?? sources.get(key) ?? DEFAULT_SOURCE });
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze(config);
}

/** The configuration with every key at its default, frozen. */
export function defaultConfig(): Config {
  return loadConfig({ env: {} });
}

const REDACTED = '[redacted]';

/**
 * A frozen copy safe to show in diagnostics: API keys, worker tokens, signing keys, the DSN
 * password and the registry password become "[redacted]". Unset (empty) secrets stay empty so
 * the output still tells whether they are configured.
 */
export function redactConfig(config: Config): Config {
  const hide = (s: string): string => (s === '' ? '' : REDACTED);
  const copy: Config = structuredClone(config);
  copy.auth.apiKey = hide(copy.auth.apiKey);
  copy.auth.adminApiKey = hide(copy.auth.adminApiKey);
  copy.auth.workerToken = hide(copy.auth.workerToken);
  copy.auth.workerTokens = Object.fromEntries(Object.keys(copy.auth.workerTokens).map((id) => [id, REDACTED]));
  copy.auth.workerSigningKeys = copy.auth.workerSigningKeys.map(() => REDACTED);
  copy.database.dsn = redactDsn(copy.database.dsn);
  const ra = copy.providers.docker.registryAuth;
  if (ra !== null) ra.password = hide(ra.password);
  return deepFreeze(copy);
}

/** Hides the password of a URL-form or key=value-form PostgreSQL DSN; anything unparseable is hidden whole. */
function redactDsn(dsn: string): string {
  if (dsn === '') return '';
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(dsn)) {
    try {
      const url = new URL(dsn);
      if (url.password !== '') url.password = REDACTED;
      // Query parameters may carry a password too (libpq accepts ?password=).
      if (url.searchParams.has('password')) url.searchParams.set('password', REDACTED);
      return url.toString().replaceAll(encodeURIComponent(REDACTED), REDACTED);
    } catch {
      return REDACTED;
    }
  }
  if (/(^|\s)\w+\s*=/.test(dsn)) {
    return dsn.replace(/(^|\s)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)/gi, (_m, pre: string, key: string) => `${pre}${key}${REDACTED}`);
  }
  return REDACTED;
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s;
}

function readYaml(file: string, source: string, problems: ConfigProblem[]): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    problems.push({ key: '(file)', source, message: code === 'ENOENT' ? 'file not found' : `cannot read file (${code ?? String(err)})` });
    return undefined;
  }
  try {
    // uniqueKeys: a key written twice is almost always a mistake that silently loses one value.
    return parseYaml(text, { uniqueKeys: true, prettyErrors: true }) ?? {};
  } catch (err) {
    problems.push({ key: '(file)', source, message: `not valid YAML: ${(err as Error).message.split('\n')[0]}` });
    return undefined;
  }
}

type Apply = (def: KeyDef, raw: unknown, source: string) => void;

/** Visits a YAML-shaped tree; dotted keys (`server.port: 1`) are accepted as well as nesting. */
function walk(node: unknown, prefix: string, source: string, apply: Apply, problems: ConfigProblem[]): void {
  if (node === null) return;
  if (typeof node !== 'object' || Array.isArray(node)) {
    problems.push({ key: prefix === '' ? '(root)' : prefix, source, message: 'expected a mapping of keys' });
    return;
  }
  for (const [key, value] of Object.entries(node as Record<string, unknown>)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    const def = KEY_BY_PATH.get(path);
    if (def !== undefined) {
      // An empty YAML value (`key:`), or an override left undefined, keeps the lower-precedence value.
      if (value !== null && value !== undefined) apply(def, value, source);
    } else if (SECTION_PATHS.has(path)) {
      walk(value, path, source, apply, problems);
    } else {
      problems.push({ key: path, source, message: `unknown key${suggest(path, [...KEY_BY_PATH.keys(), ...SECTION_PATHS])}` });
    }
  }
}

/** Reads the typed values into the Config shape; the compiler checks every field is filled. */
function assemble(values: ReadonlyMap<string, KeyValue>): Config {
  const get = (path: ConfigKeyPath): KeyValue => values.get(path) as KeyValue;
  const str = (path: ConfigKeyPath) => get(path) as string;
  const num = (path: ConfigKeyPath) => get(path) as number;
  const bool = (path: ConfigKeyPath) => get(path) as boolean;
  const list = (path: ConfigKeyPath) => [...(get(path) as string[])];
  const username = str('providers.docker.registry_auth.username');
  const password = str('providers.docker.registry_auth.password');
  const serveraddress = str('providers.docker.registry_auth.serveraddress');
  return {
    server: {
      host: str('server.host'),
      port: num('server.port'),
      previewDomain: str('server.preview_domain'),
      bodyLimitBytes: num('server.body_limit'),
      corsAllowedOrigins: list('server.cors_allowed_origins'),
      recordRetentionMs: num('server.record_retention'),
    },
    providers: {
      default: str('providers.default'),
      mock: { enabled: bool('providers.mock.enabled'), root: str('providers.mock.root') },
      oci: {
        enabled: bool('providers.oci.enabled'),
        runcPath: str('providers.oci.runc_path'),
        root: str('providers.oci.root'),
        networkMode: str('providers.oci.network_mode') as Config['providers']['oci']['networkMode'],
        bridgeName: str('providers.oci.bridge_name'),
        bridgeSubnet: str('providers.oci.bridge_subnet'),
        readOnlyRootfs: bool('providers.oci.read_only_rootfs'),
        user: str('providers.oci.user'),
        pidsLimit: num('providers.oci.pids_limit'),
        addedCaps: list('providers.oci.added_caps'),
      },
      docker: {
        enabled: bool('providers.docker.enabled'),
        socket: str('providers.docker.socket'),
        runtime: str('providers.docker.runtime'),
        networkMode: str('providers.docker.network_mode'),
        readOnlyRootfs: bool('providers.docker.read_only_rootfs'),
        seccompProfile: str('providers.docker.seccomp_profile'),
        droppedCaps: list('providers.docker.dropped_caps'),
        addedCaps: list('providers.docker.added_caps'),
        pidsLimit: num('providers.docker.pids_limit'),
        registryAuth: username === '' && password === '' && serveraddress === '' ? null : { username, password, serveraddress },
      },
    },
    defaults: {
      ttlMs: num('defaults.ttl'),
      image: str('defaults.image'),
      memoryMb: num('defaults.memory_mb'),
      vcpus: num('defaults.vcpus'),
      maxTtlMs: num('defaults.max_ttl'),
      defaultExecTimeoutMs: num('defaults.default_exec_timeout'),
      maxExecTimeoutMs: num('defaults.max_exec_timeout'),
      maxSandboxes: num('defaults.max_sandboxes'),
      maxSandboxesPerOwner: num('defaults.max_sandboxes_per_owner'),
      maxMemoryMb: num('defaults.max_memory_mb'),
      maxVcpus: num('defaults.max_vcpus'),
      maxExecOutputBytes: num('defaults.max_exec_output'),
    },
    auth: {
      enabled: bool('auth.enabled'),
      apiKey: str('auth.api_key'),
      adminApiKey: str('auth.admin_api_key'),
      adminFallbackEnabled: bool('auth.admin_fallback_enabled'),
      workerToken: str('auth.worker_token'),
      workerTokens: { ...(get('auth.worker_tokens') as Record<string, string>) },
      workerSigningKeys: list('auth.worker_signing_keys'),
      revokedTokenIds: list('auth.revoked_token_ids'),
    },
    database: {
      driver: str('database.driver') as Config['database']['driver'],
      path: str('database.path'),
      dsn: str('database.dsn'),
    },
    logging: {
      level: str('logging.level') as Config['logging']['level'],
      format: str('logging.format') as Config['logging']['format'],
    },
    worker: {
      id: str('worker.id'),
      heartbeatIntervalMs: num('worker.heartbeat_interval'),
      leaseTtlMs: num('worker.lease_ttl'),
      maxSandboxes: num('worker.max_sandboxes'),
      rpcCredential: str('worker.rpc_credential') as Config['worker']['rpcCredential'],
      rpcTls: {
        ca: str('worker.rpc_tls.ca'),
        cert: str('worker.rpc_tls.cert'),
        key: str('worker.rpc_tls.key'),
        serverName: str('worker.rpc_tls.server_name'),
      },
      rpcServerTls: {
        cert: str('worker.rpc_server_tls.cert'),
        key: str('worker.rpc_server_tls.key'),
        clientCa: str('worker.rpc_server_tls.client_ca'),
        clientCertOptional: bool('worker.rpc_server_tls.client_cert_optional'),
      },
    },
    workers: { staleAfterMs: num('workers.stale_after') },
    reconcile: {
      unknownRuntimes: str('reconcile.unknown_runtimes') as Config['reconcile']['unknownRuntimes'],
      reapIntervalMs: num('reconcile.reap_interval'),
    },
    pool: {
      enabled: bool('pool.enabled'),
      size: num('pool.size'),
      image: str('pool.image'),
      provider: str('pool.provider'),
      refillIntervalMs: num('pool.refill_interval'),
    },
    dataDir: str('data_dir'),
  };
}

/** Provider names the server knows; `providers.default` must be one of them (enabled) or auto. */
export const PROVIDER_NAMES = ['mock', 'oci', 'docker'] as const;

/** Worker ids travel in headers, URLs and lease holder columns. */
export const WORKER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Below this an HMAC key is guessable offline from one captured token. */
export const MIN_SIGNING_KEY_LENGTH = 32;

interface ValidationContext {
  problems: ConfigProblem[];
  invalid: ReadonlySet<string>;
  sourceOf: (key: string) => string;
}

/** Cross-field and format checks; a check is skipped when a key it reads already failed coercion. */
function validate(c: Config, ctx: ValidationContext): void {
  /** `related` keys took part in the check; their sources are listed too, so the operator sees every place to fix. */
  const fail = (key: string, message: string, ...related: string[]): void => {
    const sources = [...new Set([key, ...related].map(ctx.sourceOf))];
    ctx.problems.push({ key, source: sources.join(' + '), message });
  };
  const ok = (...keys: string[]) => keys.every((k) => !ctx.invalid.has(k));

  if (ok('server.host') && c.server.host.trim() === '') fail('server.host', 'must not be empty');
  if (ok('data_dir') && c.dataDir.trim() === '') fail('data_dir', 'must not be empty');
  for (const origin of c.server.corsAllowedOrigins) {
    if (origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      fail('server.cors_allowed_origins', `${JSON.stringify(origin)} is not an origin like "https://app.example.com" or "*"`);
    }
  }

  const d = c.defaults;
  if (ok('defaults.ttl', 'defaults.max_ttl') && d.ttlMs > d.maxTtlMs) fail('defaults.ttl', 'must not exceed defaults.max_ttl', 'defaults.max_ttl');
  if (ok('defaults.default_exec_timeout', 'defaults.max_exec_timeout') && d.defaultExecTimeoutMs > d.maxExecTimeoutMs) {
    fail('defaults.default_exec_timeout', 'must not exceed defaults.max_exec_timeout', 'defaults.max_exec_timeout');
  }
  if (ok('defaults.memory_mb', 'defaults.max_memory_mb') && d.memoryMb > d.maxMemoryMb) fail('defaults.memory_mb', 'must not exceed defaults.max_memory_mb', 'defaults.max_memory_mb');
  if (ok('defaults.vcpus', 'defaults.max_vcpus') && d.vcpus > d.maxVcpus) fail('defaults.vcpus', 'must not exceed defaults.max_vcpus', 'defaults.max_vcpus');
  if (ok('defaults.max_sandboxes_per_owner', 'defaults.max_sandboxes') && d.maxSandboxesPerOwner > d.maxSandboxes) {
    fail('defaults.max_sandboxes_per_owner', 'must not exceed defaults.max_sandboxes', 'defaults.max_sandboxes');
  }
  if (ok('defaults.image') && d.image.trim() === '') fail('defaults.image', 'must not be empty');
  if (ok('pool.provider') && c.pool.provider !== '' && !(PROVIDER_NAMES as readonly string[]).includes(c.pool.provider)) {
    fail('pool.provider', `unknown provider ${JSON.stringify(c.pool.provider)} (known: ${PROVIDER_NAMES.join(', ')})`);
  }

  const p = c.providers;
  const enabled = PROVIDER_NAMES.filter((name) => p[name].enabled);
  if (ok('providers.mock.enabled', 'providers.oci.enabled', 'providers.docker.enabled') && enabled.length === 0) {
    fail('providers', 'at least one provider must be enabled', ...PROVIDER_NAMES.map((n) => `providers.${n}.enabled`));
  } else if (ok('providers.default') && p.default !== 'auto') {
    if (!(PROVIDER_NAMES as readonly string[]).includes(p.default)) {
      fail('providers.default', `unknown provider ${JSON.stringify(p.default)} (known: auto, ${PROVIDER_NAMES.join(', ')})`);
    } else if (!enabled.includes(p.default as (typeof PROVIDER_NAMES)[number])) {
      fail('providers.default', `names provider ${JSON.stringify(p.default)}, which is not enabled (providers.${p.default}.enabled)`, `providers.${p.default}.enabled`);
    }
  } else if (ok('providers.default') && !p.mock.enabled && !p.oci.enabled) {
    fail('providers.default', '"auto" chooses between oci and mock, and neither is enabled', 'providers.oci.enabled', 'providers.mock.enabled');
  }
  if (p.mock.enabled && p.mock.root.trim() === '') fail('providers.mock.root', 'must not be empty');
  if (p.oci.enabled) {
    if (p.oci.root.trim() === '') fail('providers.oci.root', 'must not be empty');
    if (p.oci.runcPath.trim() === '') fail('providers.oci.runc_path', 'must not be empty');
  }
  if (!/^\d+:\d+$/.test(p.oci.user)) fail('providers.oci.user', `expected "uid:gid" with numeric ids, got ${JSON.stringify(p.oci.user)}`);
  if (!isIpv4Cidr(p.oci.bridgeSubnet)) fail('providers.oci.bridge_subnet', `expected an IPv4 CIDR like "10.88.0.0/16", got ${JSON.stringify(p.oci.bridgeSubnet)}`);
  if (p.oci.networkMode === 'bridge' && !/^[A-Za-z0-9_.-]{1,15}$/.test(p.oci.bridgeName)) {
    fail('providers.oci.bridge_name', 'must be a Linux interface name (1-15 characters of letters, digits, "_", ".", "-")');
  }
  if (p.docker.enabled && p.docker.socket.trim() === '') fail('providers.docker.socket', 'must not be empty when the docker provider is enabled');
  const ra = p.docker.registryAuth;
  if (ra !== null && (ra.username === '') !== (ra.password === '')) {
    fail(ra.username === '' ? 'providers.docker.registry_auth.username' : 'providers.docker.registry_auth.password', 'registry_auth needs both username and password');
  }

  const a = c.auth;
  if (ok('auth.enabled', 'auth.api_key') && a.enabled && a.apiKey === '') fail('auth.api_key', 'must be set when auth.enabled is true', 'auth.enabled');
  if (a.apiKey !== '' && a.apiKey === a.adminApiKey) fail('auth.admin_api_key', 'must differ from auth.api_key (use admin_fallback_enabled to share one key)', 'auth.api_key');
  // Worker and user/admin identities never cross: one secret must not open both kinds of route.
  const userKeys = [a.apiKey, a.adminApiKey].filter((k) => k !== '');
  if (a.workerToken !== '' && userKeys.includes(a.workerToken)) fail('auth.worker_token', 'must differ from auth.api_key and auth.admin_api_key');
  for (const [id, token] of Object.entries(a.workerTokens)) {
    if (token !== '' && userKeys.includes(token)) fail(`auth.worker_tokens.${id}`, 'must differ from auth.api_key and auth.admin_api_key');

    const key = `auth.worker_tokens.${id}`;
    if (!WORKER_ID_PATTERN.test(id)) fail(key, 'is not a valid worker id (letters, digits, ".", "_", "-"; at most 128)');
    if (token === '') fail(key, 'token must not be empty');
  }
  // Whoever holds a signing key can mint any worker's token, so it must not double as a key or
  // a static token someone else is given.
  const otherSecrets = [...userKeys, a.workerToken, ...Object.values(a.workerTokens)].filter((k) => k !== '');
  a.workerSigningKeys.forEach((k, i) => {
    if (k.length < MIN_SIGNING_KEY_LENGTH) fail('auth.worker_signing_keys', `key #${i + 1} is shorter than ${MIN_SIGNING_KEY_LENGTH} characters`);
    if (otherSecrets.includes(k)) fail('auth.worker_signing_keys', `key #${i + 1} must differ from auth.api_key, auth.admin_api_key and the worker tokens`);
  });

  if (ok('database.driver', 'database.dsn') && c.database.driver === 'postgres' && c.database.dsn.trim() === '') {
    fail('database.dsn', 'must be set when database.driver is postgres', 'database.driver');
  }
  if (ok('database.driver', 'database.path') && c.database.driver === 'sqlite' && c.database.path.trim() === '') {
    fail('database.path', 'must not be empty when database.driver is sqlite');
  }

  if (ok('worker.id') && !WORKER_ID_PATTERN.test(c.worker.id)) fail('worker.id', 'must be letters, digits, ".", "_", "-" (at most 128, starting with a letter or digit)');
  if (ok('worker.heartbeat_interval', 'workers.stale_after') && c.workers.staleAfterMs <= c.worker.heartbeatIntervalMs) {
    // Otherwise a healthy worker would read as stale between two heartbeats.
    fail('workers.stale_after', 'must be longer than worker.heartbeat_interval', 'worker.heartbeat_interval');
  }
  if (ok('worker.rpc_credential', 'auth.worker_signing_keys') && c.worker.rpcCredential === 'signed' && c.auth.workerSigningKeys.length === 0) {
    fail('worker.rpc_credential', 'is "signed" but auth.worker_signing_keys is empty', 'auth.worker_signing_keys');
  }
  if (ok('worker.rpc_tls.cert', 'worker.rpc_tls.key') && (c.worker.rpcTls.cert === '') !== (c.worker.rpcTls.key === '')) {
    fail(c.worker.rpcTls.cert === '' ? 'worker.rpc_tls.cert' : 'worker.rpc_tls.key', 'worker.rpc_tls.cert and worker.rpc_tls.key go together');
  }
  const st = c.worker.rpcServerTls;
  if (ok('worker.rpc_server_tls.cert', 'worker.rpc_server_tls.key') && (st.cert === '') !== (st.key === '')) {
    fail(st.cert === '' ? 'worker.rpc_server_tls.cert' : 'worker.rpc_server_tls.key', 'worker.rpc_server_tls.cert and worker.rpc_server_tls.key go together');
  }
  if (ok('worker.rpc_server_tls.client_ca', 'worker.rpc_server_tls.cert') && st.clientCa !== '' && st.cert === '') {
    fail('worker.rpc_server_tls.client_ca', 'needs worker.rpc_server_tls.cert and worker.rpc_server_tls.key');
  }
}

function isIpv4Cidr(s: string): boolean {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(s);
  return m !== null && m.slice(1, 5).every((o) => Number(o) <= 255) && Number(m[5]) <= 32;
}

/** Appends "; did you mean X?" when a known name is within a small edit distance. */
function suggest(input: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(input.length / 5)) + 1;
  for (const c of candidates) {
    const dist = editDistance(input.toLowerCase(), c.toLowerCase());
    if (dist < bestDistance) {
      best = c;
      bestDistance = dist;
    }
  }
  return best === undefined ? '' : `; did you mean ${best}?`;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] as number) + 1, (cur[j - 1] as number) + 1, (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length] as number;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Filesystem keys resolve against the working directory once, at load: runc resolves relative
 * bundle paths against the bundle itself, and a later chdir must not move the database.
 */
const PATH_KEYS = new Set([
  'data_dir',
  'providers.mock.root',
  'providers.oci.root',
  'database.path',
  'worker.rpc_tls.ca',
  'worker.rpc_tls.cert',
  'worker.rpc_tls.key',
  'worker.rpc_server_tls.cert',
  'worker.rpc_server_tls.key',
  'worker.rpc_server_tls.client_ca',
]);

function absolutePath(key: string, value: KeyValue): KeyValue {
  if (!PATH_KEYS.has(key) || typeof value !== 'string' || value === '' || value === ':memory:') return value;
  return resolvePath(value);
}
