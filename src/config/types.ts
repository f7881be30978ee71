/**
 * The validated, frozen configuration every component receives. Durations are milliseconds.
 * The loader (config/load.ts) fills defaults, applies stacyvm.yaml then STACYVM_* env vars,
 * and reports every problem at once. docs/configuration.md documents each key.
 */
export interface Config {
  server: {
    host: string; // 127.0.0.1
    port: number; // 7423
    previewDomain: string; // ''
    bodyLimitBytes: number; // body_limit, e.g. "10MiB" or bytes; default 10 MiB
    corsAllowedOrigins: string[];
    /** Destroyed/expired records are kept this long for inspection, then forgotten. */
    recordRetentionMs: number; // 24h
  };
  providers: {
    /** 'auto' picks oci when runc is usable with its default image, else mock. */
    default: string;
    mock: { enabled: boolean; root: string };
    oci: OciProviderConfig;
    docker: DockerProviderConfig;
  };
  defaults: {
    ttlMs: number; // 30m
    image: string; // 'python:3'
    memoryMb: number; // 512
    vcpus: number; // 1
    maxTtlMs: number; // 24h
    defaultExecTimeoutMs: number; // 60s
    maxExecTimeoutMs: number; // 10m
    maxSandboxes: number; // 100
    maxSandboxesPerOwner: number; // 0 = unlimited
    maxMemoryMb: number; // 8192
    maxVcpus: number; // 8
    /** Exec output kept in buffered responses, per stream. */
    maxExecOutputBytes: number; // 10 MiB
  };
  auth: {
    enabled: boolean; // false
    apiKey: string;
    adminApiKey: string;
    /** When true and no admin key is configured, the api key also opens /admin routes. */
    adminFallbackEnabled: boolean; // false
    workerToken: string; // shared worker token (staging)
    workerTokens: Record<string, string>; // per worker id; overrides workerToken for that id
    workerSigningKeys: string[]; // HMAC keys; first signs, all verify
    revokedTokenIds: string[];
  };
  database: {
    driver: 'sqlite' | 'postgres';
    path: string; // ./.stacyvm/stacyvm.db
    dsn: string;
  };
  logging: {
    level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
    format: 'json' | 'pretty';
  };
  worker: {
    id: string; // 'local'
    heartbeatIntervalMs: number; // 30s
    leaseTtlMs: number; // 2m
    /** Capacity the server's own worker advertises; 0 = defaults.maxSandboxes. */
    maxSandboxes: number;
    /** The credential the control plane presents to remote workers. */
    rpcCredential: 'auto' | 'token' | 'signed';
    /** Control plane → worker RPC client TLS: PEM file paths, '' = unset. */
    rpcTls: { ca: string; cert: string; key: string; serverName: string };
    /** The worker daemon's RPC listener TLS: PEM file paths, '' = plain HTTP. */
    rpcServerTls: { cert: string; key: string; clientCa: string; clientCertOptional: boolean };
  };
  workers: {
    staleAfterMs: number; // 2m
  };
  reconcile: {
    /** What to do with provider runtimes the store does not know: adopt or destroy. */
    unknownRuntimes: 'adopt' | 'destroy';
    reapIntervalMs: number; // 10s
  };
  /** Warm sandboxes of the default shape kept ready on this worker. */
  pool: {
    enabled: boolean; // false
    size: number; // 2
    image: string; // '' = defaults.image
    provider: string; // '' = the default provider
    refillIntervalMs: number; // 5s
  };
  /** Where images and per-sandbox state live. */
  dataDir: string; // ./.stacyvm
}

export interface OciProviderConfig {
  enabled: boolean;
  runcPath: string; // 'runc'
  /** Root for bundles, overlay dirs and runc state. */
  root: string;
  networkMode: 'none' | 'bridge';
  bridgeName: string;
  bridgeSubnet: string; // 10.88.0.0/16
  readOnlyRootfs: boolean;
  user: string; // '1000:1000'
  pidsLimit: number; // 256
  addedCaps: string[];
}

export interface DockerProviderConfig {
  enabled: boolean;
  socket: string; // /var/run/docker.sock or tcp://host:port
  runtime: string; // 'runc'
  networkMode: string; // 'none'
  readOnlyRootfs: boolean;
  seccompProfile: string; // '' = Docker's default profile
  droppedCaps: string[]; // ['ALL']
  addedCaps: string[];
  pidsLimit: number; // 256
  registryAuth: { username: string; password: string; serveraddress: string } | null;
}
