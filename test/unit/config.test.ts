import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, WORKER_ID_PATTERN, defaultConfig, loadConfig, redactConfig, type ConfigProblem } from '../../src/config/load.js';
import { WORKER_ID_PATTERN as PROTO_WORKER_ID_PATTERN } from '../../src/workerproto/claims.js';
import { FENCE_RETAIN_MS } from '../../src/workerproto/fence.js';
import { CONFIG_KEYS, KEY_BY_ENV, coerce, defaultText, envNameOf, type KeyDef } from '../../src/config/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'stacyvm-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCounter = 0;
function yamlFile(text: string): string {
  const file = join(dir, `c${fileCounter++}.yaml`);
  writeFileSync(file, text);
  return file;
}

function problemsOf(fn: () => unknown): readonly ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

const key = (path: string): KeyDef => {
  const def = CONFIG_KEYS.find((k) => k.path === path);
  if (!def) throw new Error(`no key ${path}`);
  return def;
};

describe('defaults', () => {
  it('match the documented values', () => {
    const c = defaultConfig();
    expect(c.server).toEqual({
      host: '127.0.0.1',
      port: 7423,
      previewDomain: '',
      bodyLimitBytes: 10 * 1024 * 1024,
      corsAllowedOrigins: [],
      recordRetentionMs: 24 * 3_600_000,
    });
    expect(c.defaults).toEqual({
      ttlMs: 30 * 60_000,
      image: 'python:3',
      memoryMb: 512,
      vcpus: 1,
      maxTtlMs: 24 * 3_600_000,
      defaultExecTimeoutMs: 60_000,
      maxExecTimeoutMs: 10 * 60_000,
      maxSandboxes: 100,
      maxSandboxesPerOwner: 0,
      maxMemoryMb: 8192,
      maxVcpus: 8,
      maxExecOutputBytes: 10 * 1024 * 1024,
    });
    const cwd = process.cwd();
    expect(c.dataDir).toBe(`${cwd}/.stacyvm`);
    expect(c.database).toEqual({ driver: 'sqlite', path: `${cwd}/.stacyvm/stacyvm.db`, dsn: '' });
    expect(c.providers.default).toBe('auto');
    expect(c.providers.mock).toEqual({ enabled: true, root: `${cwd}/.stacyvm/mock` });
    expect(c.providers.oci.root).toBe(`${cwd}/.stacyvm/oci`);
    expect(c.providers.docker.registryAuth).toBeNull();
    expect(c.providers.docker.droppedCaps).toEqual(['ALL']);
    expect(c.auth).toEqual({
      enabled: false,
      apiKey: '',
      adminApiKey: '',
      adminFallbackEnabled: false,
      workerToken: '',
      workerTokens: {},
      workerSigningKeys: [],
      revokedTokenIds: [],
    });
    expect(c.worker).toEqual({
      id: 'local',
      heartbeatIntervalMs: 30_000,
      leaseTtlMs: 120_000,
      maxSandboxes: 0,
      rpcCredential: 'auto',
      rpcTls: { ca: '', cert: '', key: '', serverName: '' },
      rpcServerTls: { cert: '', key: '', clientCa: '', clientCertOptional: false },
    });
    expect(c.workers).toEqual({ staleAfterMs: 120_000 });
    expect(c.reconcile).toEqual({ unknownRuntimes: 'adopt', reapIntervalMs: 10_000 });
    expect(c.pool).toEqual({ enabled: false, size: 2, image: '', provider: '', refillIntervalMs: 5_000 });
    expect(c.logging).toEqual({ level: 'info', format: 'json' });
  });

  it('derive paths from the final data_dir', () => {
    const c = loadConfig({ env: { STACYVM_DATA_DIR: '/var/lib/stacyvm/' } });
    expect(c.database.path).toBe('/var/lib/stacyvm/stacyvm.db');
    expect(c.providers.oci.root).toBe('/var/lib/stacyvm/oci');
    expect(c.providers.mock.root).toBe('/var/lib/stacyvm/mock');
  });

  it('resolves relative filesystem paths against the working directory once, at load', () => {
    const c = loadConfig({ env: { STACYVM_DATA_DIR: 'state', STACYVM_PROVIDERS_OCI_ROOT: 'runtimes/oci' } });
    expect(c.dataDir).toBe(`${process.cwd()}/state`);
    expect(c.providers.oci.root).toBe(`${process.cwd()}/runtimes/oci`);
    expect(c.database.path).toBe(`${process.cwd()}/state/stacyvm.db`);
    expect(loadConfig({ env: { STACYVM_DATABASE_PATH: ':memory:' } }).database.path).toBe(':memory:');
  });

  it('an explicit path wins over the data_dir-derived default', () => {
    const c = loadConfig({ env: { STACYVM_DATA_DIR: '/d', STACYVM_DATABASE_PATH: '/db/x.db' } });
    expect(c.database.path).toBe('/db/x.db');
    expect(c.providers.oci.root).toBe('/d/oci');
  });

  it('does not read process.env when env is given', () => {
    expect(defaultConfig().server.port).toBe(7423);
  });
});

describe('precedence: defaults < file < env < overrides', () => {
  const file = yamlFile('server:\n  port: 8000\n  host: 0.0.0.0\ndefaults:\n  ttl: 1h\n');

  it('file overrides defaults', () => {
    const c = loadConfig({ file, env: {} });
    expect(c.server.port).toBe(8000);
    expect(c.server.host).toBe('0.0.0.0');
    expect(c.defaults.ttlMs).toBe(3_600_000);
  });

  it('pool keys load from env and an unknown pool provider is refused', () => {
    const c = loadConfig({ env: { STACYVM_POOL_ENABLED: 'true', STACYVM_POOL_SIZE: '3', STACYVM_POOL_IMAGE: 'alpine:3', STACYVM_POOL_PROVIDER: 'mock', STACYVM_POOL_REFILL_INTERVAL: '1s' } });
    expect(c.pool).toEqual({ enabled: true, size: 3, image: 'alpine:3', provider: 'mock', refillIntervalMs: 1_000 });
    expect(problemsOf(() => loadConfig({ env: { STACYVM_POOL_PROVIDER: 'nope' } })).map((p) => p.key)).toContain('pool.provider');
  });

  it('env overrides file', () => {
    const c = loadConfig({ file, env: { STACYVM_SERVER_PORT: '9000' } });
    expect(c.server.port).toBe(9000);
    expect(c.server.host).toBe('0.0.0.0');
  });

  it('overrides beat env, nested or dotted', () => {
    expect(loadConfig({ file, env: { STACYVM_SERVER_PORT: '9000' }, overrides: { server: { port: 9100 } } }).server.port).toBe(9100);
    expect(loadConfig({ file, env: { STACYVM_SERVER_PORT: '9000' }, overrides: { 'server.port': 9200 } }).server.port).toBe(9200);
  });

  it('STACYVM_CONFIG names the file when no file option is given', () => {
    expect(loadConfig({ env: { STACYVM_CONFIG: file } }).server.port).toBe(8000);
  });

  it('an empty file option falls back to STACYVM_CONFIG', () => {
    expect(loadConfig({ file: '', env: { STACYVM_CONFIG: file } }).server.port).toBe(8000);
    expect(loadConfig({ file: '', env: {} }).server.port).toBe(7423);
  });

  it('the file option beats STACYVM_CONFIG', () => {
    const other = yamlFile('server:\n  port: 8100\n');
    expect(loadConfig({ file: other, env: { STACYVM_CONFIG: file } }).server.port).toBe(8100);
  });

  it('an empty YAML value keeps the lower-precedence value', () => {
    const f = yamlFile('server:\n  port:\nauth:\n');
    expect(loadConfig({ file: f, env: {} }).server.port).toBe(7423);
  });

  it('an override left undefined keeps the lower-precedence value', () => {
    expect(loadConfig({ file, env: {}, overrides: { server: { port: undefined } } }).server.port).toBe(8000);
  });

  it('an empty file is the defaults', () => {
    expect(loadConfig({ file: yamlFile(''), env: {} })).toEqual(defaultConfig());
  });

  it('worker tokens merge per id across sources', () => {
    const f = yamlFile('auth:\n  worker_tokens:\n    w1: from-file\n    w2: from-file\n');
    const c = loadConfig({ file: f, env: { STACYVM_AUTH_WORKER_TOKENS: 'w2=from-env,w3=x=y' } });
    expect(c.auth.workerTokens).toEqual({ w1: 'from-file', w2: 'from-env', w3: 'x=y' });
  });
});

describe('environment variables', () => {
  it('every key has a distinct env name derived from its path', () => {
    expect(KEY_BY_ENV.size).toBe(CONFIG_KEYS.length);
    for (const k of CONFIG_KEYS) expect(KEY_BY_ENV.get(envNameOf(k.path))).toBe(k);
  });

  it.each([
    ['STACYVM_SERVER_PORT', '8123', (c: ReturnType<typeof defaultConfig>) => c.server.port, 8123],
    ['STACYVM_PROVIDERS_DEFAULT', 'mock', (c: ReturnType<typeof defaultConfig>) => c.providers.default, 'mock'],
    ['STACYVM_AUTH_API_KEY', 'k1', (c: ReturnType<typeof defaultConfig>) => c.auth.apiKey, 'k1'],
    ['STACYVM_DATABASE_PATH', '/tmp/x.db', (c: ReturnType<typeof defaultConfig>) => c.database.path, '/tmp/x.db'],
    ['STACYVM_AUTH_ADMIN_FALLBACK_ENABLED', 'true', (c: ReturnType<typeof defaultConfig>) => c.auth.adminFallbackEnabled, true],
    ['STACYVM_PROVIDERS_MOCK_ENABLED', '0', (c: ReturnType<typeof defaultConfig>) => c.providers.mock.enabled, false],
    ['STACYVM_DEFAULTS_MAX_EXEC_TIMEOUT', '15m', (c: ReturnType<typeof defaultConfig>) => c.defaults.maxExecTimeoutMs, 900_000],
    ['STACYVM_DEFAULTS_MAX_SANDBOXES_PER_OWNER', '5', (c: ReturnType<typeof defaultConfig>) => c.defaults.maxSandboxesPerOwner, 5],
    ['STACYVM_PROVIDERS_OCI_READ_ONLY_ROOTFS', 'TRUE', (c: ReturnType<typeof defaultConfig>) => c.providers.oci.readOnlyRootfs, true],
    ['STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_SERVERADDRESS', 'r.example', (c: ReturnType<typeof defaultConfig>) => c.providers.docker.registryAuth?.serveraddress, 'r.example'],
    ['STACYVM_WORKERS_STALE_AFTER', '5m', (c: ReturnType<typeof defaultConfig>) => c.workers.staleAfterMs, 300_000],
    ['STACYVM_DATA_DIR', '/srv/s', (c: ReturnType<typeof defaultConfig>) => c.dataDir, '/srv/s'],
  ])('%s=%s sets its key, underscores in key names included', (name, value, pick, expected) => {
    const env: Record<string, string> = { [name]: value };
    // registry_auth needs a complete credential pair to be valid.
    if (name.includes('REGISTRY_AUTH')) Object.assign(env, { STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'u', STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_PASSWORD: 'p' });
    if (name === 'STACYVM_PROVIDERS_MOCK_ENABLED') env.STACYVM_PROVIDERS_DEFAULT = 'oci';
    expect(pick(loadConfig({ env }))).toEqual(expected);
  });

  it('unknown STACYVM_* variables are errors, with a suggestion', () => {
    const problems = problemsOf(() => loadConfig({ env: { STACYVM_SERVER_PROT: '1', STACYVM_NOPE: 'x' } }));
    expect(problems.map((p) => p.key).sort()).toEqual(['STACYVM_NOPE', 'STACYVM_SERVER_PROT']);
    expect(problems.find((p) => p.key === 'STACYVM_SERVER_PROT')?.message).toContain('STACYVM_SERVER_PORT');
    expect(problems[0]?.source).toMatch(/^env STACYVM_/);
  });

  it('a section name alone is not a key', () => {
    expect(problemsOf(() => loadConfig({ env: { STACYVM_DATABASE: 'x' } }))[0]?.key).toBe('STACYVM_DATABASE');
  });

  it('ignores STACYVM_CONFIG, the client variables, STACYVM_TEST_* and other prefixes', () => {
    const c = loadConfig({ env: { STACYVM_API_KEY: 'client', STACYVM_SERVER: 'http://127.0.0.1:1', STACYVM_CONTROL_PLANE: 'http://127.0.0.1:2', STACYVM_TEST_PG_DSN: 'postgres://x', STACYVM_CONFIG: '', PATH: '/bin', stacyvm_server_port: 'x' } });
    expect(c.auth.apiKey).toBe('');
  });
});

describe('every key has an effect', () => {
  /** A valid non-default env value per key, and the settings it needs to be valid (present in the baseline too). */
  const special: Record<string, [string, Record<string, string>?]> = {
    'providers.default': ['mock'],
    'providers.oci.user': ['1:1'],
    'providers.oci.bridge_subnet': ['10.0.0.0/8'],
    'providers.oci.network_mode': ['bridge'],
    'database.driver': ['postgres', { STACYVM_DATABASE_DSN: 'postgres://127.0.0.1/db' }],
    'providers.docker.registry_auth.username': ['u', { STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'u0', STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_PASSWORD: 'p' }],
    'providers.docker.registry_auth.password': ['p', { STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'u', STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_PASSWORD: 'p0' }],
    'providers.docker.registry_auth.serveraddress': ['r.example', { STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'u', STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_PASSWORD: 'p' }],
    'auth.enabled': ['true', { STACYVM_AUTH_API_KEY: 'k' }],
    'auth.worker_signing_keys': ['s'.repeat(32)],
    'auth.worker_tokens': ['w1=t'],
    'server.cors_allowed_origins': ['https://a.example'],
    'worker.id': ['w-7'],
    'pool.provider': ['mock'],
    'worker.rpc_tls.cert': ['/c2.pem', { STACYVM_WORKER_RPC_TLS_CERT: '/c.pem', STACYVM_WORKER_RPC_TLS_KEY: '/k.pem' }],
    'worker.rpc_tls.key': ['/k2.pem', { STACYVM_WORKER_RPC_TLS_CERT: '/c.pem', STACYVM_WORKER_RPC_TLS_KEY: '/k.pem' }],
    'worker.rpc_server_tls.cert': ['/c2.pem', { STACYVM_WORKER_RPC_SERVER_TLS_CERT: '/c.pem', STACYVM_WORKER_RPC_SERVER_TLS_KEY: '/k.pem' }],
    'worker.rpc_server_tls.key': ['/k2.pem', { STACYVM_WORKER_RPC_SERVER_TLS_CERT: '/c.pem', STACYVM_WORKER_RPC_SERVER_TLS_KEY: '/k.pem' }],
    'worker.rpc_server_tls.client_ca': ['/ca.pem', { STACYVM_WORKER_RPC_SERVER_TLS_CERT: '/c.pem', STACYVM_WORKER_RPC_SERVER_TLS_KEY: '/k.pem' }],
  };
  const changed = (k: KeyDef): string => {
    const d = typeof k.default === 'function' ? undefined : k.default;
    switch (k.kind) {
      case 'bool':
        return String(!d);
      case 'int':
      case 'number':
      case 'size':
        return String((d as number) + 1);
      case 'duration':
        return `${(d as number) + 1000}ms`;
      case 'enum':
        return (k.values ?? []).find((v) => v !== d) as string;
      case 'list':
        return 'CAP_X';
      default:
        return '/elsewhere';
    }
  };

  it.each(CONFIG_KEYS.map((k) => [k.path, k] as const))('%s', (_path, k) => {
    const [value, companion = {}] = special[k.path] ?? [changed(k)];
    const baseline = loadConfig({ env: companion });
    const loaded = loadConfig({ env: { ...companion, [envNameOf(k.path)]: value } });
    expect(loaded).not.toEqual(baseline);
  });
});

describe('coercion', () => {
  it.each([
    ['true', true],
    ['false', false],
    ['1', true],
    ['0', false],
    [' True ', true],
    [true, true],
    [false, false],
  ])('bool %j', (raw, expected) => {
    expect(coerce(key('auth.enabled'), raw)).toBe(expected);
  });

  it.each(['yes', 'on', '2', '', 1])('bool rejects %j', (raw) => {
    expect(() => coerce(key('auth.enabled'), raw)).toThrow(/true, false, 1 or 0/);
  });

  it.each([
    ['8080', 8080],
    [8080, 8080],
    [' 0 ', 0],
  ])('int %j', (raw, expected) => {
    expect(coerce(key('server.port'), raw)).toBe(expected);
  });

  it.each(['80.5', 80.5, 'abc', '', '1e3', true])('int rejects %j', (raw) => {
    expect(() => coerce(key('server.port'), raw)).toThrow(/integer/);
  });

  it('int range', () => {
    expect(() => coerce(key('server.port'), 65536)).toThrow(/at most 65535/);
    expect(() => coerce(key('server.port'), '-1')).toThrow(/at least 0/);
  });

  it.each([
    ['0.5', 0.5],
    [2, 2],
    ['.25', 0.25],
  ])('number %j', (raw, expected) => {
    expect(coerce(key('defaults.vcpus'), raw)).toBe(expected);
  });

  it.each(['two', '', '0'])('number rejects %j', (raw) => {
    expect(() => coerce(key('defaults.vcpus'), raw)).toThrow();
  });

  it.each([
    ['30m', 1_800_000],
    ['1h30m', 5_400_000],
    ['500ms', 500],
    ['0', 0],
    [0, 0],
  ])('duration %j', (raw, expected) => {
    expect(coerce(key('server.record_retention'), raw)).toBe(expected);
  });

  it.each(['10 minutes', '-1s', '', 30, '5'])('duration rejects %j', (raw) => {
    expect(() => coerce(key('server.record_retention'), raw)).toThrow(/duration/);
  });

  it('duration minimum', () => {
    expect(() => coerce(key('defaults.ttl'), '0s')).toThrow(/at least 1/);
  });

  it.each([
    [1024, 1024],
    ['1024', 1024],
    ['10MiB', 10 * 1024 * 1024],
    ['512KiB', 512 * 1024],
    ['1GB', 1_000_000_000],
    ['2 mib', 2 * 1024 * 1024],
    ['1.5KiB', 1536],
    ['100B', 100],
  ])('size %j', (raw, expected) => {
    expect(coerce(key('server.body_limit'), raw)).toBe(expected);
  });

  it.each(['10 megabytes', '-1', -5, 1.5, '1.3B', 'MiB', ''])('size rejects %j', (raw) => {
    expect(() => coerce(key('server.body_limit'), raw)).toThrow();
  });

  it.each([
    ['a, b,,c', ['a', 'b', 'c']],
    ['', []],
    [['x', 'y'], ['x', 'y']],
  ])('list %j', (raw, expected) => {
    expect(coerce(key('server.cors_allowed_origins'), raw)).toEqual(expected);
  });

  it('list rejects non-strings', () => {
    expect(() => coerce(key('server.cors_allowed_origins'), [1, 2])).toThrow(/list of strings/);
  });

  it('map from env form and from a mapping', () => {
    expect(coerce(key('auth.worker_tokens'), 'w1=a, w2=b=c')).toEqual({ w1: 'a', w2: 'b=c' });
    expect(coerce(key('auth.worker_tokens'), { w1: 'a' })).toEqual({ w1: 'a' });
    expect(() => coerce(key('auth.worker_tokens'), 'w1')).toThrow(/id=value/);
    expect(() => coerce(key('auth.worker_tokens'), { w1: 5 })).toThrow(/w1/);
  });

  it('enum', () => {
    expect(coerce(key('database.driver'), 'postgres')).toBe('postgres');
    expect(() => coerce(key('database.driver'), 'mysql')).toThrow(/sqlite, postgres/);
  });

  it('string rejects non-strings, never echoing a secret', () => {
    expect(() => coerce(key('defaults.image'), 3)).toThrow(/string/);
    let message = '';
    try {
      coerce(key('auth.api_key'), 123456789);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/expected a string/);
    expect(message).not.toContain('123456789');
  });

  it('YAML values of every kind load', () => {
    const f = yamlFile(
      [
        'server:',
        '  port: "8081"',
        '  body_limit: 1MiB',
        '  cors_allowed_origins: [https://a.example, "*"]',
        'defaults:',
        '  vcpus: 0.5',
        '  max_exec_output: 2048',
        'auth:',
        '  enabled: true',
        '  api_key: k',
        '  worker_tokens:',
        '    w-1: t1',
        'providers:',
        '  docker:',
        '    enabled: "1"',
        '    registry_auth:',
        '      username: u',
        '      password: p',
      ].join('\n'),
    );
    const c = loadConfig({ file: f, env: {} });
    expect(c.server.port).toBe(8081);
    expect(c.server.bodyLimitBytes).toBe(1024 * 1024);
    expect(c.server.corsAllowedOrigins).toEqual(['https://a.example', '*']);
    expect(c.defaults.vcpus).toBe(0.5);
    expect(c.defaults.maxExecOutputBytes).toBe(2048);
    expect(c.auth.enabled).toBe(true);
    expect(c.auth.workerTokens).toEqual({ 'w-1': 't1' });
    expect(c.providers.docker.enabled).toBe(true);
    expect(c.providers.docker.registryAuth).toEqual({ username: 'u', password: 'p', serveraddress: '' });
  });
});

describe('validation reports every problem at once', () => {
  it('collects file, env and cross-field problems in one ConfigError', () => {
    const f = yamlFile(
      [
        'server:',
        '  port: 70000',
        '  bodylimit: 5',
        'defaults:',
        '  ttl: 48h',
        '  default_exec_timeout: 20m',
        'database:',
        '  driver: postgres',
        'providers:',
        '  default: docker',
        'extra: 1',
      ].join('\n'),
    );
    let error: unknown;
    try {
      loadConfig({ file: f, env: { STACYVM_AUTH_ENABLED: 'maybe', STACYVM_WORKER_HEARTBEAT_INTERVAL: '10 minutes' } });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    const byKey = Object.fromEntries(problems.map((p) => [p.key, p]));
    expect(Object.keys(byKey).sort()).toEqual(
      [
        'auth.enabled',
        'database.dsn',
        'defaults.default_exec_timeout',
        'defaults.ttl',
        'extra',
        'providers.default',
        'server.bodylimit',
        'server.port',
        'worker.heartbeat_interval',
      ].sort(),
    );
    expect(byKey['server.port']?.source).toBe(`file ${f}`);
    expect(byKey['server.bodylimit']?.message).toContain('server.body_limit');
    expect(byKey['auth.enabled']?.source).toBe('env STACYVM_AUTH_ENABLED');
    // A cross-field problem names the sources of every key involved.
    expect(byKey['database.dsn']?.source).toBe(`default + file ${f}`);
    expect(byKey['defaults.default_exec_timeout']?.source).toBe(`file ${f} + default`);
    expect(byKey['providers.default']?.message).toContain('not enabled');
    // One line per problem, each naming its key and source.
    const lines = (error as ConfigError).message.split('\n').slice(1);
    expect(lines).toHaveLength(problems.length);
    expect(lines.every((l) => /^ {2}- \S+ \(.+\): .+/.test(l))).toBe(true);
  });

  it('a key that failed coercion does not also trigger its cross-field check', () => {
    const problems = problemsOf(() => loadConfig({ env: { STACYVM_DEFAULTS_MAX_TTL: 'soon' } }));
    expect(problems.map((p) => p.key)).toEqual(['defaults.max_ttl']);
  });

  it.each([
    [{ STACYVM_PROVIDERS_DEFAULT: 'firecracker' }, 'providers.default', /unknown provider/],
    [{ STACYVM_PROVIDERS_MOCK_ENABLED: 'false', STACYVM_PROVIDERS_OCI_ENABLED: 'false' }, 'providers', /at least one/],
    [{ STACYVM_PROVIDERS_MOCK_ENABLED: 'false', STACYVM_PROVIDERS_OCI_ENABLED: 'false', STACYVM_PROVIDERS_DOCKER_ENABLED: 'true' }, 'providers.default', /auto/],
    [{ STACYVM_AUTH_ENABLED: 'true' }, 'auth.api_key', /auth.enabled/],
    [{ STACYVM_AUTH_API_KEY: 'same', STACYVM_AUTH_ADMIN_API_KEY: 'same' }, 'auth.admin_api_key', /differ/],
    [{ STACYVM_AUTH_API_KEY: 'k', STACYVM_AUTH_WORKER_TOKEN: 'k' }, 'auth.worker_token', /differ/],
    [{ STACYVM_AUTH_ADMIN_API_KEY: 'k', STACYVM_AUTH_WORKER_TOKENS: 'w1=k' }, 'auth.worker_tokens.w1', /differ/],
    [{ STACYVM_AUTH_WORKER_SIGNING_KEYS: 'short' }, 'auth.worker_signing_keys', /32/],
    [{ STACYVM_WORKER_LEASE_TTL: '16m' }, 'worker.lease_ttl', /at most/],
    [{ STACYVM_WORKERS_STALE_AFTER: '1h' }, 'workers.stale_after', /at most/],
    [{ STACYVM_AUTH_API_KEY: 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk', STACYVM_AUTH_WORKER_SIGNING_KEYS: 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk' }, 'auth.worker_signing_keys', /differ/],
    [{ STACYVM_AUTH_WORKER_TOKEN: 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk', STACYVM_AUTH_WORKER_SIGNING_KEYS: 'xkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk,kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk' }, 'auth.worker_signing_keys', /differ/],
    [{ STACYVM_AUTH_WORKER_TOKENS: 'bad id=t' }, 'auth.worker_tokens.bad id', /worker id/],
    [{ STACYVM_AUTH_WORKER_TOKENS: 'w1=' }, 'auth.worker_tokens.w1', /empty/],
    [{ STACYVM_DEFAULTS_MEMORY_MB: '9000' }, 'defaults.memory_mb', /max_memory_mb/],
    [{ STACYVM_DEFAULTS_VCPUS: '16' }, 'defaults.vcpus', /max_vcpus/],
    [{ STACYVM_DEFAULTS_MAX_SANDBOXES_PER_OWNER: '101' }, 'defaults.max_sandboxes_per_owner', /max_sandboxes/],
    [{ STACYVM_DATABASE_PATH: '' }, 'database.path', /empty/],
    [{ STACYVM_WORKER_ID: 'has space' }, 'worker.id', /letters/],
    [{ STACYVM_WORKERS_STALE_AFTER: '30s' }, 'workers.stale_after', /heartbeat_interval/],
    [{ STACYVM_WORKER_RPC_CREDENTIAL: 'signed' }, 'worker.rpc_credential', /signing_keys/],
    [{ STACYVM_WORKER_RPC_TLS_CERT: '/c.pem' }, 'worker.rpc_tls.key', /together/],
    [{ STACYVM_WORKER_RPC_SERVER_TLS_KEY: '/k.pem' }, 'worker.rpc_server_tls.cert', /together/],
    [{ STACYVM_WORKER_RPC_SERVER_TLS_CLIENT_CA: '/ca.pem' }, 'worker.rpc_server_tls.client_ca', /needs/],
    [{ STACYVM_PROVIDERS_OCI_USER: 'root' }, 'providers.oci.user', /uid:gid/],
    [{ STACYVM_PROVIDERS_OCI_BRIDGE_SUBNET: '10.88.0.0/33' }, 'providers.oci.bridge_subnet', /CIDR/],
    [{ STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'u' }, 'providers.docker.registry_auth.password', /both/],
    [{ STACYVM_SERVER_CORS_ALLOWED_ORIGINS: 'example.com' }, 'server.cors_allowed_origins', /origin/],
    [{ STACYVM_SERVER_HOST: ' ' }, 'server.host', /empty/],
  ])('%j → %s', (env, expectedKey, pattern) => {
    const problems = problemsOf(() => loadConfig({ env }));
    expect(problems).toHaveLength(1);
    expect(problems[0]?.key).toBe(expectedKey);
    expect(problems[0]?.message).toMatch(pattern);
  });

  it('a worker id that would be a prototype key is reported, not dropped', () => {
    const f = yamlFile('auth:\n  worker_tokens:\n    __proto__: t\n');
    expect(problemsOf(() => loadConfig({ file: f, env: {} })).map((p) => p.key)).toEqual(['auth.worker_tokens.__proto__']);
    expect(problemsOf(() => loadConfig({ env: { STACYVM_AUTH_WORKER_TOKENS: '__proto__=t' } })).map((p) => p.key)).toEqual(['auth.worker_tokens.__proto__']);
  });

  it('accepts exactly the worker ids the RPC layer accepts', () => {
    // The layers may not import each other, so the rule is written twice; this keeps them equal.
    expect(WORKER_ID_PATTERN.source).toBe(PROTO_WORKER_ID_PATTERN.source);
  });

  it('postgres with a dsn is valid', () => {
    expect(loadConfig({ env: { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN: 'postgres://u:p@127.0.0.1/db' } }).database.driver).toBe('postgres');
  });

  it('providers.default may name an enabled provider', () => {
    expect(loadConfig({ env: { STACYVM_PROVIDERS_DEFAULT: 'mock' } }).providers.default).toBe('mock');
  });

  it('a missing file, invalid YAML, duplicate keys and a non-mapping root are problems', () => {
    expect(problemsOf(() => loadConfig({ file: join(dir, 'missing.yaml'), env: {} }))[0]?.message).toBe('file not found');
    expect(problemsOf(() => loadConfig({ file: yamlFile('server: [1\n'), env: {} }))[0]?.message).toMatch(/not valid YAML/);
    expect(problemsOf(() => loadConfig({ file: yamlFile('server:\n  port: 1\n  port: 2\n'), env: {} }))[0]?.message).toMatch(/not valid YAML/);
    expect(problemsOf(() => loadConfig({ file: yamlFile('- a\n- b\n'), env: {} }))[0]?.key).toBe('(root)');
    expect(problemsOf(() => loadConfig({ file: yamlFile('server: 5\n'), env: {} }))[0]?.key).toBe('server');
  });

  it('a file problem and env problems are reported together', () => {
    const problems = problemsOf(() => loadConfig({ file: join(dir, 'missing.yaml'), env: { STACYVM_X: '1' } }));
    expect(problems.map((p) => p.key)).toEqual(['(file)', 'STACYVM_X']);
  });
});

describe('freezing', () => {
  it('the result is deeply frozen', () => {
    const c = loadConfig({ env: { STACYVM_AUTH_WORKER_TOKENS: 'w1=t' } });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.server)).toBe(true);
    expect(Object.isFrozen(c.server.corsAllowedOrigins)).toBe(true);
    expect(Object.isFrozen(c.providers.oci)).toBe(true);
    expect(Object.isFrozen(c.auth.workerTokens)).toBe(true);
    expect(() => {
      (c.server as { port: number }).port = 1;
    }).toThrow(TypeError);
    expect(() => (c.providers.docker.droppedCaps as string[]).push('X')).toThrow(TypeError);
  });

  it('a later load is unaffected by an earlier one', () => {
    loadConfig({ env: { STACYVM_PROVIDERS_DOCKER_DROPPED_CAPS: 'NET_RAW' } });
    expect(defaultConfig().providers.docker.droppedCaps).toEqual(['ALL']);
  });
});

describe('redactConfig', () => {
  const secret = 'k'.repeat(40);
  const c = loadConfig({
    env: {
      STACYVM_AUTH_API_KEY: 'api-secret',
      STACYVM_AUTH_ADMIN_API_KEY: 'admin-secret',
      STACYVM_AUTH_WORKER_TOKEN: 'shared-secret',
      STACYVM_AUTH_WORKER_TOKENS: 'w1=w1-secret',
      STACYVM_AUTH_WORKER_SIGNING_KEYS: `${secret},${'j'.repeat(32)}`,
      STACYVM_AUTH_REVOKED_TOKEN_IDS: 'jti-1',
      STACYVM_DATABASE_DSN: 'postgres://user:pg-secret@127.0.0.1:5432/db?sslmode=disable',
      STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_USERNAME: 'reguser',
      STACYVM_PROVIDERS_DOCKER_REGISTRY_AUTH_PASSWORD: 'reg-secret',
    },
  });
  const r = redactConfig(c);

  it('hides every secret and keeps the rest', () => {
    expect(r.auth.apiKey).toBe('[redacted]');
    expect(r.auth.adminApiKey).toBe('[redacted]');
    expect(r.auth.workerToken).toBe('[redacted]');
    expect(r.auth.workerTokens).toEqual({ w1: '[redacted]' });
    expect(r.auth.workerSigningKeys).toEqual(['[redacted]', '[redacted]']);
    expect(r.auth.revokedTokenIds).toEqual(['jti-1']);
    expect(r.database.dsn).toBe('postgres://user:[redacted]@127.0.0.1:5432/db?sslmode=disable');
    expect(r.providers.docker.registryAuth).toEqual({ username: 'reguser', password: '[redacted]', serveraddress: '' });
    expect(r.server).toEqual(c.server);
    const text = JSON.stringify(r);
    for (const s of ['api-secret', 'admin-secret', 'shared-secret', 'w1-secret', secret, 'pg-secret', 'reg-secret']) expect(text).not.toContain(s);
  });

  it('leaves the original untouched and returns a frozen copy', () => {
    expect(c.auth.apiKey).toBe('api-secret');
    expect(Object.isFrozen(r.auth)).toBe(true);
  });

  it('keeps unset secrets empty', () => {
    const d = redactConfig(defaultConfig());
    expect(d.auth.apiKey).toBe('');
    expect(d.database.dsn).toBe('');
  });

  it.each([
    ['host=127.0.0.1 user=u password=pg-secret dbname=db', 'host=127.0.0.1 user=u password=[redacted] dbname=db'],
    ["host=h password='a b' dbname=db", 'host=h password=[redacted] dbname=db'],
    ['postgresql://u@h/db?password=pg-secret', 'postgresql://u@h/db?password=[redacted]'],
    ['postgres://us%40er:p%25ss@127.0.0.1/db', 'postgres://us%40er:[redacted]@127.0.0.1/db'],
    ['not a dsn pg-secret', '[redacted]'],
  ])('dsn %s', (dsn, expected) => {
    const cfg = loadConfig({ env: { STACYVM_DATABASE_DSN: dsn } });
    expect(redactConfig(cfg).database.dsn).toBe(expected);
  });
});

describe('documentation', () => {
  const docs = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  const example = readFileSync(new URL('../../stacyvm.example.yaml', import.meta.url), 'utf8');

  it('docs/configuration.md has a row for every key with its env var and default', () => {
    for (const k of CONFIG_KEYS) {
      const row = docs.split('\n').find((l) => l.startsWith(`| \`${k.path}\` |`));
      expect(row, k.path).toBeDefined();
      expect(row).toContain(`\`${envNameOf(k.path)}\``);
      expect(row).toContain(`\`${defaultText(k)}\``);
    }
  });

  it('stacyvm.example.yaml loads', () => {
    const c = loadConfig({ file: new URL('../../stacyvm.example.yaml', import.meta.url).pathname, env: {} });
    expect(c.server.port).toBe(7423);
    expect(example).toContain('body_limit');
  });
});

describe('lease lifetime limit', () => {
  it("keeps every lease the control plane grants within the workers' fence retention", () => {
    // A worker forgets a sandbox's floor FENCE_RETAIN_MS after its newest lease expired, so no
    // lease may outlive that window (the longest granted is max(lease_ttl, stale_after)).
    for (const path of ['worker.lease_ttl', 'workers.stale_after']) {
      const def = CONFIG_KEYS.find((k) => k.path === path) as KeyDef;
      expect(def.max, path).toBe(FENCE_RETAIN_MS);
    }
  });
});
