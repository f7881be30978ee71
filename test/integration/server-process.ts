/**
 * Starts the real server (`node dist/cli/main.js serve`) as a child process on a free port with
 * a temporary data directory, configured only through STACYVM_* env vars, and drives it over
 * HTTP. `npm test` builds dist first.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');

/** How long a server may take to start listening (bounded: a broken build fails, never hangs). */
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 30_000;

export interface ServerProcess {
  url: string;
  api: string;
  dataDir: string;
  proc: ChildProcess;
  output(): string;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill9(): Promise<void>;
}

export async function makeDataDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'stacyvm-it-'));
}

export function serverEnv(dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    STACYVM_SERVER_PORT: '0',
    STACYVM_SERVER_HOST: '127.0.0.1',
    STACYVM_DATA_DIR: dataDir,
    STACYVM_DATABASE_PATH: join(dataDir, 'stacyvm.db'),
    STACYVM_PROVIDERS_DEFAULT: 'mock',
    STACYVM_PROVIDERS_OCI_ENABLED: 'false',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    STACYVM_LOGGING_LEVEL: process.env.STACYVM_TEST_LOG_LEVEL ?? 'info',
    STACYVM_LOGGING_FORMAT: 'json',
    ...extra,
  };
}

/** Starts a server on `dataDir` (a new temp dir when omitted) and waits until it listens. */
export async function startServerProcess(options: { dataDir?: string; env?: Record<string, string> } = {}): Promise<ServerProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  const dataDir = options.dataDir ?? (await makeDataDir());
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  Object.assign(env, serverEnv(dataDir, options.env));
  const proc = spawn(process.execPath, [CLI, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((res) => proc.once('exit', (code) => res(code)));

  const url = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`server did not start within ${START_TIMEOUT_MS}ms:\n${out}`)), START_TIMEOUT_MS);
    const check = () => {
      const m = /"url":"(http:\/\/[^"]+)"/.exec(out);
      if (m?.[1]) {
        clearTimeout(timer);
        proc.stdout?.off('data', check);
        res(m[1]);
      }
    };
    proc.stdout?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      rej(new Error(`server exited with ${code} before listening:\n${out}`));
    });
    check();
  });

  const waitExit = async (): Promise<number | null> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`server did not exit within ${STOP_TIMEOUT_MS}ms:\n${out}`)), STOP_TIMEOUT_MS);
    });
    try {
      return await Promise.race([exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  return {
    url,
    api: `${url}/api/v1`,
    dataDir,
    proc,
    output: () => out,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill('SIGTERM');
      return waitExit();
    },
    kill9: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGKILL');
      await waitExit();
    },
  };
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export interface JsonResponse {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

/** One HTTP call with a bounded wait; `body` strings are sent verbatim (for malformed JSON). */
export async function call(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<JsonResponse> {
  const init: RequestInit = { method, headers: { ...headers }, signal: AbortSignal.timeout(20_000) };
  if (body !== undefined) {
    init.body = typeof body === 'string' || body instanceof Uint8Array ? (body as string) : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON (raw file bytes, NDJSON): callers use `text`
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}
