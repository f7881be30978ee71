import { spawn } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { StacyError } from '../../src/core/errors.js';
import {
  ExecEventQueue,
  buildShellCommandLine,
  collectExec,
  execArgv,
  processEvents,
  shellQuote,
  shellQuoteArg,
  validateExecRequest,
} from '../../src/providers/exec-util.js';
import type { ExecEvent } from '../../src/providers/provider.js';

const tricky = ['plain', '', 'two words', "it's", '$(touch x)', '`id`', '; echo hacked', '"q"', 'a\\b', '*', '~', 'new\nline', '-n', '\t'];

/** Runs `sh -c 'printf "[%s]" <quoted>'` for real and returns what printf saw. */
function roundTrip(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', buildShellCommandLine('printf "[%s]"', args)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => resolve(out));
  });
}

async function* fromArray(events: ExecEvent[]): AsyncIterable<ExecEvent> {
  for (const e of events) yield e;
}

describe('shell quoting', () => {
  it('leaves safe words alone and single-quotes the rest', () => {
    expect(shellQuoteArg('abc-1.2/x=y')).toBe('abc-1.2/x=y');
    expect(shellQuoteArg('')).toBe("''");
    expect(shellQuoteArg("it's")).toBe(`'it'\\''s'`);
    expect(shellQuote(['a', 'b c'])).toBe("a 'b c'");
  });

  it('makes every argument arrive literally through a real /bin/sh', async () => {
    expect(await roundTrip(tricky)).toBe(tricky.map((a) => `[${a}]`).join(''));
  });

  it('keeps the command verbatim and appends quoted args', () => {
    expect(buildShellCommandLine('echo $HOME', [])).toBe('echo $HOME');
    expect(buildShellCommandLine('echo', ['$HOME'])).toBe("echo '$HOME'");
    expect(execArgv({ command: 'ls -l', args: ['a b'], mode: 'shell' })).toEqual(['/bin/sh', '-c', "ls -l 'a b'"]);
    expect(execArgv({ command: 'ls', args: ['$(x)'], mode: 'argv' })).toEqual(['ls', '$(x)']);
  });
});

describe('collectExec', () => {
  it('buffers stdout and stderr and takes the exit event', async () => {
    const r = await collectExec(
      fromArray([
        { type: 'stdout', data: Buffer.from('a') },
        { type: 'stderr', data: Buffer.from('e') },
        { type: 'stdout', data: Buffer.from('b') },
        { type: 'exit', exitCode: 2, durationMs: 5 },
      ]),
    );
    expect(r).toEqual({ exitCode: 2, durationMs: 5, stdout: 'ab', stderr: 'e', truncated: false });
  });

  it('caps each stream and says so', async () => {
    const r = await collectExec(
      fromArray([
        { type: 'stdout', data: Buffer.from('12345') },
        { type: 'stdout', data: Buffer.from('678') },
        { type: 'stderr', data: Buffer.from('xy') },
        { type: 'exit', exitCode: 0, durationMs: 1 },
      ]),
      4,
    );
    expect(r.stdout).toBe('1234');
    expect(r.stderr).toBe('xy');
    expect(r.truncated).toBe(true);
  });

  it('propagates stream errors and rejects a stream without exit', async () => {
    async function* failing(): AsyncIterable<ExecEvent> {
      yield { type: 'stdout', data: Buffer.from('x') };
      throw new StacyError('timeout', 'too slow');
    }
    await expect(collectExec(failing())).rejects.toMatchObject({ code: 'timeout' });
    await expect(collectExec(fromArray([]))).rejects.toThrow(/without an exit event/);
  });
});

describe('ExecEventQueue', () => {
  it('signals full at the high-water mark and drain below half of it', async () => {
    const calls: string[] = [];
    const q = new ExecEventQueue(10, { onFull: () => calls.push('full'), onDrain: () => calls.push('drain') });
    q.push({ type: 'stdout', data: Buffer.alloc(6) });
    q.push({ type: 'stdout', data: Buffer.alloc(6) });
    expect(calls).toEqual(['full']);
    q.push({ type: 'exit', exitCode: 0, durationMs: 0 });
    q.end();
    const seen: string[] = [];
    for await (const e of q) seen.push(e.type);
    expect(seen).toEqual(['stdout', 'stdout', 'exit']);
    expect(calls).toEqual(['full', 'drain']);
    expect(q.pendingBytes).toBe(0);
  });

  it('delivers queued events before a failure', async () => {
    const q = new ExecEventQueue(100);
    q.push({ type: 'stdout', data: Buffer.from('x') });
    q.fail(new StacyError('timeout', 't'));
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const e of q) seen.push(e.type);
      })(),
    ).rejects.toMatchObject({ code: 'timeout' });
    expect(seen).toEqual(['stdout']);
  });

  it('calls onReturn when the consumer stops early, not after a full drain', async () => {
    let returned = 0;
    const q = new ExecEventQueue(100, { onReturn: () => void returned++ });
    q.push({ type: 'stdout', data: Buffer.from('x') });
    for await (const _e of q) break;
    expect(returned).toBe(1);
    const full = new ExecEventQueue(100, { onReturn: () => void returned++ });
    full.push({ type: 'exit', exitCode: 0, durationMs: 0 });
    full.end();
    for await (const _e of full) void _e;
    expect(returned).toBe(1);
  });
});

describe('processEvents', () => {
  it('emits output in order and the exit event only after both streams ended', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let resolveExit!: (code: number) => void;
    const exited = new Promise<number>((r) => (resolveExit = r));
    const events = processEvents({ stdout, stderr, exited, startedAt: 0, now: () => 7, cancel: () => undefined });
    stdout.write('a');
    stderr.write('e');
    resolveExit(3);
    stdout.write('b');
    stdout.end();
    stderr.end();
    const seen: string[] = [];
    for await (const e of events) seen.push(e.type === 'exit' ? `exit:${e.exitCode}:${e.durationMs}` : `${e.type}:${e.data.toString()}`);
    expect(seen).toEqual(['stdout:a', 'stderr:e', 'stdout:b', 'exit:3:7']);
  });

  it('pauses the source while the consumer lags and resumes it after', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stderr.end();
    let resolveExit!: (code: number) => void;
    const exited = new Promise<number>((r) => (resolveExit = r));
    const events = processEvents({ stdout, stderr, exited, startedAt: 0, cancel: () => undefined, highWaterMark: 8 });
    stdout.write(Buffer.alloc(8));
    await new Promise((r) => setImmediate(r));
    expect(stdout.isPaused()).toBe(true);
    const it = events[Symbol.asyncIterator]();
    await it.next();
    expect(stdout.isPaused()).toBe(false);
    stdout.end();
    resolveExit(0);
    const rest: string[] = [];
    for (let r = await it.next(); r.done !== true; r = await it.next()) rest.push(r.value.type);
    expect(rest).toEqual(['exit']);
  });

  it('cancels the process when the consumer breaks', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let cancelled = false;
    const events = processEvents({ stdout, stderr, exited: new Promise<number>(() => undefined), startedAt: 0, cancel: () => void (cancelled = true) });
    stdout.write('x');
    for await (const _e of events) break;
    expect(cancelled).toBe(true);
  });

  it('passes an exit failure on after the output produced before it', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const exited = Promise.reject(new StacyError('timeout', 'killed'));
    const events = processEvents({ stdout, stderr, exited, startedAt: 0, cancel: () => undefined });
    stdout.end('partial');
    stderr.end();
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const e of events) seen.push(e.type);
      })(),
    ).rejects.toBeInstanceOf(StacyError);
    expect(seen).toEqual(['stdout']);
  });
});

describe('validateExecRequest', () => {
  const base = { command: 'echo', args: [], mode: 'argv' as const, env: {}, timeoutMs: 1000 };
  it('accepts an ordinary request', () => {
    expect(() => validateExecRequest({ ...base, args: ['a b', ''], env: { A: 'x=y' } })).not.toThrow();
  });
  it.each([
    ['empty command', { command: '' }],
    ['NUL in command', { command: 'a\0b' }],
    ['NUL in an arg', { args: ['ok', 'x\0'] }],
    ['= in an env name', { env: { 'A=B': 'x' } }],
    ['empty env name', { env: { '': 'x' } }],
    ['NUL in an env value', { env: { A: 'x\0' } }],
    ['zero timeout', { timeoutMs: 0 }],
    ['NaN timeout', { timeoutMs: Number.NaN }],
  ])('rejects %s with bad_request', (_label, patch) => {
    expect(() => validateExecRequest({ ...base, ...patch })).toThrow(expect.objectContaining({ code: 'bad_request' }));
  });
});
