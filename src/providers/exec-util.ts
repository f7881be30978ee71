/**
 * Exec building blocks shared by providers: shell quoting, the shell-mode command line,
 * buffering an ExecEvent stream with an output cap, and turning a process's stdout/stderr
 * into an AsyncIterable<ExecEvent> with backpressure.
 */
import type { Readable } from 'node:stream';
import { badRequest } from '../core/errors.js';
import type { ExecEvent, ExecRequest } from './provider.js';

/** Longest delay a Node timer can hold; larger timeouts would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Rejects requests no runtime can execute faithfully (NUL bytes cannot cross exec(2), an
 * empty argv[0] names no program, a non-positive timeout cannot be honoured) with `bad_request`
 * instead of letting them surface as runtime crashes.
 */
export function validateExecRequest(request: ExecRequest): void {
  if (typeof request.command !== 'string' || request.command.length === 0) throw badRequest('command: required');
  if (request.command.includes('\0')) throw badRequest('command: must not contain NUL bytes');
  request.args.forEach((arg, i) => {
    if (arg.includes('\0')) throw badRequest(`args[${i}]: must not contain NUL bytes`);
  });
  for (const [key, value] of Object.entries(request.env)) {
    if (key.length === 0 || key.includes('=') || key.includes('\0')) throw badRequest(`env: invalid variable name ${JSON.stringify(key)}`);
    if (value.includes('\0')) throw badRequest(`env.${key}: must not contain NUL bytes`);
  }
  if (!Number.isFinite(request.timeoutMs) || request.timeoutMs <= 0) throw badRequest('timeout: must be a positive number of milliseconds');
}

/** Quotes one argument for POSIX sh so it arrives as exactly one literal word. */
export function shellQuoteArg(arg: string): string {
  if (arg.length > 0 && /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Quotes every argument and joins them with spaces. */
export function shellQuote(args: readonly string[]): string {
  return args.map(shellQuoteArg).join(' ');
}

/**
 * The `sh -c` script for a shell-mode request: the command verbatim (it is a shell snippet by
 * definition) followed by the arguments, each quoted so they are never interpreted.
 */
export function buildShellCommandLine(command: string, args: readonly string[]): string {
  return args.length === 0 ? command : `${command} ${shellQuote(args)}`;
}

/** The argv a runtime should execute for a request: `/bin/sh -c …` in shell mode, verbatim in argv mode. */
export function execArgv(request: Pick<ExecRequest, 'command' | 'args' | 'mode'>): string[] {
  if (request.mode === 'shell') return ['/bin/sh', '-c', buildShellCommandLine(request.command, request.args)];
  return [request.command, ...request.args];
}

export interface CollectedExec {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** True when either stream exceeded the cap and was cut. */
  truncated: boolean;
}

/**
 * Drains an exec stream into buffered output, keeping at most `maxOutputBytes` per stream
 * (the rest is read and dropped so the command is never blocked). Errors from the stream
 * (timeout, not_found) propagate unchanged.
 */
export async function collectExec(events: AsyncIterable<ExecEvent>, maxOutputBytes = Number.POSITIVE_INFINITY): Promise<CollectedExec> {
  const parts = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  const sizes = { stdout: 0, stderr: 0 };
  let truncated = false;
  let exit: { exitCode: number; durationMs: number } | undefined;
  for await (const event of events) {
    if (event.type === 'exit') {
      exit = { exitCode: event.exitCode, durationMs: event.durationMs };
      continue;
    }
    const room = maxOutputBytes - sizes[event.type];
    if (room <= 0) {
      if (event.data.length > 0) truncated = true;
      continue;
    }
    const kept = event.data.length > room ? event.data.subarray(0, room) : event.data;
    if (kept.length < event.data.length) truncated = true;
    parts[event.type].push(kept);
    sizes[event.type] += kept.length;
  }
  if (exit === undefined) throw new Error('exec stream ended without an exit event');
  return {
    exitCode: exit.exitCode,
    durationMs: exit.durationMs,
    stdout: Buffer.concat(parts.stdout).toString('utf8'),
    stderr: Buffer.concat(parts.stderr).toString('utf8'),
    truncated,
  };
}

/**
 * A single-consumer queue with a byte high-water mark. Producers `push`; when the buffered
 * bytes reach the mark, `onFull` fires (pause the source) and `onDrain` fires once the
 * consumer has taken enough to fall below half of it (resume the source).
 */
export class ExecEventQueue implements AsyncIterable<ExecEvent> {
  private readonly items: ExecEvent[] = [];
  private bufferedBytes = 0;
  private full = false;
  private ended = false;
  private failure: { error: unknown } | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly highWaterMark: number,
    private readonly hooks: { onFull?: () => void; onDrain?: () => void; onReturn?: () => Promise<void> | void } = {},
  ) {}

  /** Adds an event; ignored after `end`/`fail`. */
  push(event: ExecEvent): void {
    if (this.ended) return;
    this.items.push(event);
    if (event.type !== 'exit') this.bufferedBytes += event.data.length;
    if (!this.full && this.bufferedBytes >= this.highWaterMark) {
      this.full = true;
      this.hooks.onFull?.();
    }
    this.notify();
  }

  /** No more events: the consumer finishes after draining what is queued. */
  end(): void {
    this.ended = true;
    this.notify();
  }

  /** The consumer gets `error` after draining what is queued. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.failure = { error };
    this.ended = true;
    this.notify();
  }

  /** Bytes queued and not yet taken by the consumer. */
  get pendingBytes(): number {
    return this.bufferedBytes;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ExecEvent> {
    try {
      for (;;) {
        const next = this.items.shift();
        if (next !== undefined) {
          if (next.type !== 'exit') this.bufferedBytes -= next.data.length;
          if (this.full && this.bufferedBytes < this.highWaterMark / 2) {
            this.full = false;
            this.hooks.onDrain?.();
          }
          yield next;
          continue;
        }
        if (this.ended) {
          if (this.failure !== undefined) throw this.failure.error;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (!this.ended || this.items.length > 0) {
        this.ended = true;
        this.items.length = 0;
        await this.hooks.onReturn?.();
      }
    }
  }
}

export interface ProcessOutput {
  stdout: Readable;
  stderr: Readable;
  /**
   * Settles once the process is gone: the exit code, or a rejection (e.g. a typed timeout).
   * The queue emits the exit event only after both streams have ended too, so output always
   * precedes it.
   */
  exited: Promise<number>;
  startedAt: number;
  /** Called when the consumer stops early (break/return): must kill the process tree and wait for it. */
  cancel: () => Promise<void> | void;
  /** Buffered bytes before the streams are paused; default 1 MiB. */
  highWaterMark?: number;
  now?: () => number;
}

/**
 * Turns a running process's output into an ordered ExecEvent stream ending with exactly one
 * `exit` event (or the `exited` rejection). Slow consumers pause the process's streams, so
 * the process blocks on its pipe instead of the server buffering without bound.
 */
export function processEvents(output: ProcessOutput): AsyncIterable<ExecEvent> {
  const now = output.now ?? Date.now;
  const streams = [output.stdout, output.stderr];
  const queue = new ExecEventQueue(output.highWaterMark ?? 1024 * 1024, {
    onFull: () => streams.forEach((s) => s.pause()),
    onDrain: () => streams.forEach((s) => s.resume()),
    onReturn: async () => {
      // Kill first, then drop the pipes: paused, unread pipes would keep the process from
      // ever reporting its close.
      const cancelled = output.cancel();
      streams.forEach((s) => s.destroy());
      await cancelled;
    },
  });
  const ended = (stream: Readable, type: 'stdout' | 'stderr'): Promise<void> =>
    new Promise<void>((resolve) => {
      stream.on('data', (data: Buffer) => queue.push({ type, data }));
      if (stream.readableEnded || stream.destroyed) resolve();
      stream.once('end', resolve);
      stream.once('close', resolve);
      stream.once('error', () => resolve());
    });
  const drained = Promise.all([ended(output.stdout, 'stdout'), ended(output.stderr, 'stderr')]);
  output.exited.then(
    async (exitCode) => {
      await drained;
      queue.push({ type: 'exit', exitCode, durationMs: Math.max(0, now() - output.startedAt) });
      queue.end();
    },
    async (error: unknown) => {
      // Output produced before the failure still reaches the consumer, in order.
      await Promise.race([drained, new Promise((r) => setTimeout(r, 1000).unref())]);
      queue.fail(error);
    },
  );
  return queue;
}
