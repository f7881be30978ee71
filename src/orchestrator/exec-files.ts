/**
 * Commands and file operations on a running sandbox: request checks, the exec log and exec
 * events, and the calls through to the sandbox's provider.
 */
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { formatDuration } from '../core/duration.js';
import { badRequest, isStacyError, providerError, StacyError } from '../core/errors.js';
import { normalizeSandboxPath } from '../core/paths.js';
import type { ExecEvent, ExecRequest, FileEntry } from '../providers/provider.js';
import type { Caller, ExecCall, ExecOutcome } from './service.js';
import { checkEnv } from './validate.js';
import type { OrchestratorContext } from './context.js';

const MAX_LOG_LINES = 10_000;

/** Runs commands in sandboxes and reaches their files. */
export class SandboxIO {
  constructor(private readonly ctx: OrchestratorContext) {}

  // ---------------------------------------------------------------- exec

  private execTimeout(requested: number | undefined): number {
    const d = this.ctx.config.defaults;
    if (requested === undefined) return d.defaultExecTimeoutMs;
    if (!Number.isFinite(requested) || requested <= 0) throw badRequest('timeout: must be a positive duration');
    if (requested > d.maxExecTimeoutMs) throw badRequest(`timeout: ${formatDuration(requested)} exceeds the maximum exec timeout of ${formatDuration(d.maxExecTimeoutMs)}`);
    return requested;
  }

  private execRequest(call: ExecCall): ExecRequest {
    if (call.command.length === 0) throw badRequest('command: required');
    if (call.command.includes('\0') || call.args.some((a) => a.includes('\0'))) throw badRequest('command: must not contain NUL bytes');
    const req: ExecRequest = { command: call.command, args: call.args, mode: call.mode, env: checkEnv(call.env), timeoutMs: this.execTimeout(call.timeoutMs) };
    if (call.workdir !== undefined) req.workdir = normalizeSandboxPath(call.workdir, 'workdir');
    return req;
  }

  private async recordExec(sandboxId: string, workerId: string, req: ExecRequest, startedAt: number, outcome: 'ok' | 'timeout' | 'error', exitCode: number | null, durationMs: number, error?: unknown): Promise<void> {
    try {
      await this.ctx.store.appendExecLog({ sandboxId, command: req.command, args: req.args, mode: req.mode, exitCode, outcome, durationMs, startedAt });
    } catch (err) {
      this.ctx.log.warn({ err, sandboxId }, 'could not append exec log');
    }
    const data: Record<string, unknown> = { command: req.command, mode: req.mode, exitCode, durationMs };
    if (outcome === 'ok') this.ctx.emit('exec.completed', { sandboxId, workerId, data });
    else if (outcome === 'timeout') this.ctx.emit('exec.timeout', { sandboxId, workerId, data: { ...data, timeoutMs: req.timeoutMs } });
    else this.ctx.emit('exec.failed', { sandboxId, workerId, data: { ...data, error: error instanceof Error ? error.message : String(error) } });
  }

  exec(id: string, call: ExecCall, caller: Caller): Promise<ExecOutcome> {
    return this.ctx.op('exec', async () => {
      const req = this.execRequest(call);
      const { record, provider, runtimeId } = await this.ctx.operable(id, caller);
      const workerId = this.ctx.holderOf(record);
      const cap = this.ctx.config.defaults.maxExecOutputBytes;
      const out = new Capped(cap);
      const err = new Capped(cap);
      const startedAt = this.ctx.clock.now();
      const t0 = performance.now();
      try {
        let exit: { exitCode: number; durationMs: number } | undefined;
        for await (const ev of provider.execStream(runtimeId, req)) {
          if (ev.type === 'exit') exit = { exitCode: ev.exitCode, durationMs: ev.durationMs };
          else (ev.type === 'stdout' ? out : err).push(ev.data);
        }
        if (exit === undefined) throw providerError('exec ended without an exit status');
        await this.recordExec(id, workerId, req, startedAt, 'ok', exit.exitCode, exit.durationMs);
        return { exitCode: exit.exitCode, stdout: out.text(), stderr: err.text(), durationMs: exit.durationMs };
      } catch (e) {
        const timedOut = isStacyError(e, 'timeout');
        await this.recordExec(id, workerId, req, startedAt, timedOut ? 'timeout' : 'error', null, Math.round(performance.now() - t0), e);
        if (e instanceof StacyError) throw e;
        throw providerError(`exec: ${e instanceof Error ? e.message : String(e)}`, e);
      }
    });
  }

  execStream(id: string, call: ExecCall, caller: Caller, signal?: AbortSignal): AsyncIterable<ExecEvent> {
    // Validation and lookup run on the first next(): callers should pull the first event
    // before committing a response status.
    return this.streamExec(id, call, caller, signal);
  }

  private async *streamExec(id: string, call: ExecCall, caller: Caller, signal?: AbortSignal): AsyncGenerator<ExecEvent> {
    const t0 = performance.now();
    let outcome = 'ok';
    let req: ExecRequest | undefined;
    let workerId = this.ctx.workerId;
    let finished = false;
    const startedAt = this.ctx.clock.now();
    try {
      const request = this.execRequest(call);
      const { record, provider, runtimeId } = await this.ctx.operable(id, caller);
      workerId = this.ctx.holderOf(record);
      // From here on the command reaches the runtime, so every ending is logged.
      req = request;
      for await (const ev of provider.execStream(runtimeId, request, signal)) {
        if (ev.type === 'exit') {
          finished = true;
          await this.recordExec(id, workerId, request, startedAt, 'ok', ev.exitCode, ev.durationMs);
        }
        yield ev;
      }
      if (!finished) throw providerError('exec ended without an exit status');
    } catch (e) {
      outcome = isStacyError(e) ? e.code : 'provider_error';
      if (req !== undefined && !finished) {
        await this.recordExec(id, workerId, req, startedAt, isStacyError(e, 'timeout') ? 'timeout' : 'error', null, Math.round(performance.now() - t0), e);
      }
      if (e instanceof StacyError) throw e;
      throw providerError(`exec: ${e instanceof Error ? e.message : String(e)}`, e);
    } finally {
      if (req !== undefined && !finished && outcome === 'ok') {
        // The consumer stopped early (client went away); the provider killed the command.
        outcome = 'cancelled';
        await this.recordExec(id, workerId, req, startedAt, 'error', null, Math.round(performance.now() - t0), new Error('cancelled by the client'));
      }
      this.ctx.metricsRecorder.record('exec_stream', outcome, performance.now() - t0);
    }
  }

  logs(id: string, lines: number, caller: Caller): Promise<string[]> {
    return this.ctx.op('logs', async () => {
      if (!Number.isInteger(lines) || lines < 1 || lines > MAX_LOG_LINES) throw badRequest(`lines: must be an integer between 1 and ${MAX_LOG_LINES}`);
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('logs', () => provider.consoleLog(runtimeId, lines));
    });
  }

  // ---------------------------------------------------------------- files

  writeFile(id: string, path: string, content: Buffer, mode: number | undefined, caller: Caller): Promise<void> {
    return this.ctx.op('file_write', async () => {
      const p = normalizeSandboxPath(path);
      if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) throw badRequest('mode: must be permission bits between 0 and 7777 (octal)');
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_write', () => provider.writeFile(runtimeId, p, content, mode));
    });
  }

  readFile(id: string, path: string, caller: Caller): Promise<Readable> {
    return this.ctx.op('file_read', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_read', () => provider.readFile(runtimeId, p));
    });
  }

  listFiles(id: string, path: string, caller: Caller): Promise<FileEntry[]> {
    return this.ctx.op('file_list', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_list', () => provider.listFiles(runtimeId, p));
    });
  }

  deleteFile(id: string, path: string, recursive: boolean, caller: Caller): Promise<void> {
    return this.ctx.op('file_delete', async () => {
      const p = normalizeSandboxPath(path);
      if (p === '/') throw badRequest('path: refusing to delete the sandbox root');
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_delete', () => provider.deleteFile(runtimeId, p, recursive));
    });
  }

  moveFile(id: string, from: string, to: string, caller: Caller): Promise<void> {
    return this.ctx.op('file_move', async () => {
      const a = normalizeSandboxPath(from, 'old_path');
      const b = normalizeSandboxPath(to, 'new_path');
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_move', () => provider.moveFile(runtimeId, a, b));
    });
  }

  chmod(id: string, path: string, mode: number, caller: Caller): Promise<void> {
    return this.ctx.op('file_chmod', async () => {
      const p = normalizeSandboxPath(path);
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest('mode: must be permission bits between 0 and 7777 (octal)');
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_chmod', () => provider.chmod(runtimeId, p, mode));
    });
  }

  stat(id: string, path: string, caller: Caller): Promise<FileEntry> {
    return this.ctx.op('file_stat', async () => {
      const p = normalizeSandboxPath(path);
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_stat', () => provider.stat(runtimeId, p));
    });
  }

  glob(id: string, pattern: string, caller: Caller): Promise<string[]> {
    return this.ctx.op('file_glob', async () => {
      const p = normalizeSandboxPath(pattern, 'pattern');
      const { provider, runtimeId } = await this.ctx.operable(id, caller);
      return this.ctx.callProvider('file_glob', () => provider.glob(runtimeId, p));
    });
  }
}


/** Keeps the first `cap` bytes of a stream. */
class Capped {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly cap: number) {}
  push(data: Buffer): void {
    if (this.size >= this.cap) return;
    const room = this.cap - this.size;
    const part = data.length > room ? data.subarray(0, room) : data;
    this.chunks.push(part);
    this.size += part.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}