import { spawn } from 'node:child_process';
import { providerError } from '../core/errors.js';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface RunOptions {
  /** Called with each complete line of stderr+stdout as it arrives (progress reporting). */
  onLine?: (line: string) => void;
  input?: string;
  /** Non-zero exits are returned instead of thrown. */
  allowFailure?: boolean;
  timeoutMs?: number;
}

/**
 * Runs a host tool (never through a shell) and collects its output. A non-zero exit throws
 * `provider_error` naming the tool and its stderr unless `allowFailure` is set.
 */
export function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let pending = '';
    const feed = (chunk: string): void => {
      if (!opts.onLine) return;
      pending += chunk;
      const parts = pending.split(/\r?\n|\r/);
      pending = parts.pop() ?? '';
      for (const p of parts) if (p.trim() !== '') opts.onLine(p);
    };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      feed(d);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      feed(d);
    });
    const timer =
      opts.timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs).unref();
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(providerError(`${cmd}: ${err.message}`, err));
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    child.on('close', (code, sig) => {
      if (timer) clearTimeout(timer);
      if (opts.onLine && pending.trim() !== '') opts.onLine(pending);
      const rc = code ?? (sig ? 128 : 1);
      if (rc !== 0 && !opts.allowFailure) {
        reject(providerError(`${cmd} ${args.slice(0, 3).join(' ')} failed (exit ${rc}): ${stderr.trim().slice(-2000)}`));
        return;
      }
      resolve({ stdout, stderr, code: rc });
    });
  });
}
