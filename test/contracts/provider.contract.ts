/**
 * The Provider contract: one suite every provider passes (mock, oci on runc, docker on
 * dockerd, a remote worker's proxy). A provider's own test file calls it:
 *
 *   import { providerContract } from './provider.contract.js';
 *   providerContract('oci', async () => ({
 *     provider,                          // a ready Provider
 *     image: 'busybox',                  // an image the provider can spawn (busybox is enough)
 *     cleanup: async () => { … },        // runs after the suite; destroy leftovers, close()
 *   }), { skip: !hostSupports('oci provider contract', isRoot, hasBinary('runc')) });
 *
 * What the suite needs from the sandbox image: POSIX sh at /bin/sh and coreutils/busybox
 * (printf, echo, cat, sleep, ln, head, tr, rm). Commands only touch files relative to their
 * working directory, because `mock` runs commands on the host where `/tmp` is the host's.
 * The default working directory is `/workspace`, which every provider creates writable.
 *
 * Contract decisions beyond provider.ts (every provider must behave like this):
 * - exec env contains `SANDBOX_ID` (the spawn's sandboxId, or `sandboxIdOf` for a run whose
 *   server picks its own ids), the spawn env and the request env;
 * - a new file gets mode 0644 unless a mode is given; writeFile creates missing parent dirs;
 * - listFiles returns entries sorted by name; a file (not a dir) is `bad_request`;
 * - deleteFile of a non-empty directory without `recursive` is `conflict`;
 * - a symlink planted inside the sandbox never makes a file operation read, write, list,
 *   chmod, delete or move a host file outside the sandbox. The provider either rejects the
 *   operation (`bad_request`, or `not_found` when it resolves the link inside the sandbox
 *   root where the target does not exist) or operates inside the sandbox only.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, existsSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StacyError, type ErrorCode } from '../../src/core/errors.js';
import { newSandboxId } from '../../src/core/ids.js';
import { collectExec } from '../../src/providers/exec-util.js';
import type { ExecEvent, ExecRequest, Provider, SpawnSpec } from '../../src/providers/provider.js';
import { readAll, shellRequest } from '../fixtures/exec.js';

export interface ContractSetup {
  provider: Provider;
  /** Image reference the provider can spawn; it must contain /bin/sh and coreutils or busybox. */
  image: string;
  cleanup: () => Promise<void>;
  /**
   * The `SANDBOX_ID` a command sees. Default: the spawn's `sandboxId`. A control plane picks
   * its own sandbox id and hands it back as the runtime id, so its run answers `runtimeId`.
   */
  sandboxIdOf?: (spec: SpawnSpec, runtimeId: string) => string;
  /**
   * Codes an operation on a destroyed runtime may fail with. Default: `not_found` only. A
   * control plane keeps a destroyed sandbox's record for inspection (server.record_retention)
   * and answers `conflict` ("sandbox … is destroyed"), which is what its API clients rely on.
   * Unknown runtimes are `not_found` everywhere.
   */
  destroyedCodes?: ErrorCode[];
}

export interface ContractOptions {
  /** Skip the whole suite (host feature missing); decide with hostSupports(). */
  skip?: boolean;
  /** Per-test timeout; slow runtimes may need more than the default 60 s. */
  testTimeoutMs?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` and asserts it fails with a StacyError whose code is one of `codes`. */
export async function expectCode(fn: () => Promise<unknown>, ...codes: ErrorCode[]): Promise<StacyError> {
  let result: unknown;
  try {
    result = await fn();
  } catch (err) {
    expect(err, `expected StacyError ${codes.join('|')}, got ${String(err)}`).toBeInstanceOf(StacyError);
    expect(codes).toContain((err as StacyError).code);
    return err as StacyError;
  }
  throw new Error(`expected a StacyError ${codes.join('|')}, but the call succeeded with ${JSON.stringify(result)}`);
}

/** Succeeds with the outcome of `fn`, or with the error when it is a StacyError of an allowed code. */
async function settleTyped<T>(fn: () => Promise<T>, ...codes: ErrorCode[]): Promise<{ ok: true; value: T } | { ok: false; code: ErrorCode }> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    expect(err, `expected success or StacyError ${codes.join('|')}, got ${String(err)}`).toBeInstanceOf(StacyError);
    expect(codes).toContain((err as StacyError).code);
    return { ok: false, code: (err as StacyError).code };
  }
}

export function providerContract(name: string, setup: () => Promise<ContractSetup>, options: ContractOptions = {}): void {
  const timeout = options.testTimeoutMs ?? 60_000;
  describe.skipIf(options.skip === true)(`provider contract: ${name}`, { timeout }, () => {
    let provider: Provider;
    let image: string;
    let cleanup: (() => Promise<void>) | undefined;
    let destroyedCodes: ErrorCode[] = ['not_found'];
    const spawned: string[] = [];
    /** The shared sandbox most tests run in. */
    let rt: string;
    let sandboxId: string;

    const spec = (overrides: Partial<SpawnSpec> = {}): SpawnSpec => {
      const id = newSandboxId();
      return {
        sandboxId: id,
        image,
        memoryMb: 256,
        vcpus: 1,
        ownerId: 'contract-owner',
        workerId: 'local',
        env: { SPAWN_VAR: 'from-spawn' },
        labels: { 'stacyvm.sandbox_id': id, 'stacyvm.suite': 'provider-contract' },
        ...overrides,
      };
    };
    const spawn = async (overrides: Partial<SpawnSpec> = {}): Promise<{ runtimeId: string; spec: SpawnSpec }> => {
      const s = spec(overrides);
      const { runtimeId } = await provider.spawn(s);
      spawned.push(runtimeId);
      return { runtimeId, spec: s };
    };
    const events = async (runtimeId: string, request: ExecRequest): Promise<ExecEvent[]> => {
      const out: ExecEvent[] = [];
      for await (const e of provider.execStream(runtimeId, request)) out.push(e);
      return out;
    };
    /** Passes events through, failing the test if anything follows `exit` or `exit` is missing. */
    async function* checked(stream: AsyncIterable<ExecEvent>): AsyncIterable<ExecEvent> {
      let exits = 0;
      for await (const e of stream) {
        if (exits > 0) throw new Error(`event ${e.type} after the exit event`);
        if (e.type === 'exit') {
          exits++;
          expect(Number.isInteger(e.exitCode)).toBe(true);
          expect(e.durationMs).toBeGreaterThanOrEqual(0);
        } else {
          expect(Buffer.isBuffer(e.data)).toBe(true);
        }
        yield e;
      }
      if (exits !== 1) throw new Error('exec stream ended without an exit event');
    }
    const run = (command: string, extra: Partial<ExecRequest> = {}, runtimeId = rt) =>
      collectExec(checked(provider.execStream(runtimeId, shellRequest(command, extra))));
    const text = async (path: string, runtimeId = rt): Promise<string> =>
      (await readAll(await provider.readFile(runtimeId, path))).toString('utf8');
    const expectSingleExitLast = (evs: ExecEvent[]): void => {
      expect(evs.filter((e) => e.type === 'exit')).toHaveLength(1);
      expect(evs.at(-1)?.type).toBe('exit');
    };

    beforeAll(async () => {
      const s = await setup();
      provider = s.provider;
      image = s.image;
      cleanup = s.cleanup;
      destroyedCodes = s.destroyedCodes ?? destroyedCodes;
      const created = await spawn();
      rt = created.runtimeId;
      sandboxId = s.sandboxIdOf?.(created.spec, created.runtimeId) ?? created.spec.sandboxId;
    });

    afterAll(async () => {
      for (const id of spawned) await provider.destroy(id).catch(() => undefined);
      await cleanup?.();
    });

    describe('identity and health', () => {
      it('declares a name and capabilities', () => {
        expect(provider.name).toBe(name);
        expect(['none', 'container', 'vm']).toContain(provider.capabilities.isolation);
        expect(Array.isArray(provider.capabilities.features)).toBe(true);
      });

      it('reports health with latency and details', async () => {
        const h = await provider.health();
        expect(h.healthy, h.error).toBe(true);
        expect(typeof h.latencyMs).toBe('number');
        expect(h.latencyMs).toBeGreaterThanOrEqual(0);
        expect(typeof h.details).toBe('object');
      });
    });

    describe('lifecycle', () => {
      it('spawn → running → destroy → missing; destroy is idempotent', async () => {
        const { runtimeId } = await spawn();
        expect(typeof runtimeId).toBe('string');
        expect(runtimeId.length).toBeGreaterThan(0);
        expect(await provider.status(runtimeId)).toBe('running');
        await provider.destroy(runtimeId);
        expect(await provider.status(runtimeId)).toBe('missing');
        await provider.destroy(runtimeId);
        expect(await provider.status(runtimeId)).toBe('missing');
      });

      it('gives each sandbox its own runtime and filesystem', async () => {
        const other = await spawn();
        expect(other.runtimeId).not.toBe(rt);
        await provider.writeFile(rt, '/workspace/only-in-first.txt', Buffer.from('x'));
        await expectCode(() => provider.stat(other.runtimeId, '/workspace/only-in-first.txt'), 'not_found');
        await provider.destroy(other.runtimeId);
      });

      it('an unknown runtime is missing and its operations are not_found', async () => {
        const unknown = 'no-such-runtime-0000';
        expect(await provider.status(unknown)).toBe('missing');
        await provider.destroy(unknown);
        await expectCode(() => provider.stat(unknown, '/workspace'), 'not_found');
        await expectCode(() => run('true', {}, unknown), 'not_found');
      });

      it('inventory (when implemented) lists the runtime with its sandboxId, and forgets it after destroy', async () => {
        if (provider.inventory === undefined) return;
        const { runtimeId, spec: s } = await spawn();
        const listed = (await provider.inventory()).find((r) => r.runtimeId === runtimeId);
        expect(listed).toBeDefined();
        expect(listed?.sandboxId).toBe(s.sandboxId);
        expect(listed?.status).toBe('running');
        await provider.destroy(runtimeId);
        const after = (await provider.inventory()).find((r) => r.runtimeId === runtimeId);
        expect(after === undefined || after.status === 'missing').toBe(true);
      });

      it('every operation after destroy fails with not_found (or the declared destroyedCodes)', async () => {
        const { runtimeId: gone } = await spawn();
        await provider.writeFile(gone, '/workspace/f.txt', Buffer.from('x'));
        await provider.destroy(gone);
        await expectCode(() => run('echo hi', {}, gone), ...destroyedCodes);
        await expectCode(() => run('echo', { mode: 'argv', args: ['hi'] }, gone), ...destroyedCodes);
        await expectCode(() => provider.writeFile(gone, '/workspace/g.txt', Buffer.from('x')), ...destroyedCodes);
        await expectCode(() => provider.readFile(gone, '/workspace/f.txt'), ...destroyedCodes);
        await expectCode(() => provider.listFiles(gone, '/workspace'), ...destroyedCodes);
        await expectCode(() => provider.deleteFile(gone, '/workspace/f.txt', false), ...destroyedCodes);
        await expectCode(() => provider.moveFile(gone, '/workspace/f.txt', '/workspace/h.txt'), ...destroyedCodes);
        await expectCode(() => provider.chmod(gone, '/workspace/f.txt', 0o600), ...destroyedCodes);
        await expectCode(() => provider.stat(gone, '/workspace/f.txt'), ...destroyedCodes);
        await expectCode(() => provider.glob(gone, '/workspace/*'), ...destroyedCodes);
        await expectCode(() => provider.consoleLog(gone, 10), ...destroyedCodes);
        expect(await provider.status(gone)).toBe('missing');
      });

      it('consoleLog returns at most the requested number of lines', async () => {
        const lines = await provider.consoleLog(rt, 5);
        expect(Array.isArray(lines)).toBe(true);
        expect(lines.length).toBeLessThanOrEqual(5);
        for (const l of lines) expect(typeof l).toBe('string');
      });
    });

    describe('exec', () => {
      it('runs a shell command and reports exit 0 with its output', async () => {
        const r = await run('echo hello && echo world');
        expect(r).toMatchObject({ exitCode: 0, stdout: 'hello\nworld\n', stderr: '' });
        expect(r.durationMs).toBeGreaterThanOrEqual(0);
      });

      it('treats a non-zero exit as a result, not an error', async () => {
        expect((await run('exit 3')).exitCode).toBe(3);
        expect((await run('false', { mode: 'argv' })).exitCode).toBe(1);
      });

      it('keeps stderr separate from stdout', async () => {
        const r = await run('echo out; echo err >&2; echo out2');
        expect(r.stdout).toBe('out\nout2\n');
        expect(r.stderr).toBe('err\n');
      });

      it('shell mode appends args shell-quoted, so they arrive literally', async () => {
        const args = ['$(touch pwned-shell)', '; echo hacked', '`touch pwned-shell2`', "it's", 'two words', '*', ''];
        const r = await run('printf "[%s]\\n"', { args });
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toBe(args.map((a) => `[${a}]\n`).join(''));
        await expectCode(() => provider.stat(rt, '/workspace/pwned-shell'), 'not_found');
        await expectCode(() => provider.stat(rt, '/workspace/pwned-shell2'), 'not_found');
      });

      it('argv mode never invokes a shell', async () => {
        const args = ['[%s]\\n', '$(touch pwned)', '; echo hacked', '`touch pwned2`', '| touch pwned3', '$HOME', '&& touch pwned4'];
        const r = await run('printf', { mode: 'argv', args });
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toBe(args.slice(1).map((a) => `[${a}]\n`).join(''));
        for (const f of ['pwned', 'pwned2', 'pwned3', 'pwned4']) await expectCode(() => provider.stat(rt, `/workspace/${f}`), 'not_found');
        // A whole shell line as the command is one (nonexistent) program name, not a script.
        const whole = await settleTyped(() => run('echo hacked; touch pwned5', { mode: 'argv' }), 'bad_request', 'not_found');
        if (whole.ok) {
          expect(whole.value.exitCode).not.toBe(0);
          expect(whole.value.stdout).not.toContain('hacked');
        }
        await expectCode(() => provider.stat(rt, '/workspace/pwned5'), 'not_found');
      });

      it('passes spawn env, request env and SANDBOX_ID', async () => {
        const r = await run('printf "%s|%s|%s|%s" "$SPAWN_VAR" "$FOO" "$QUOTED" "$SANDBOX_ID"', {
          env: { FOO: 'bar baz', QUOTED: `it's "$x"` },
        });
        expect(r.stdout).toBe(`from-spawn|bar baz|it's "$x"|${sandboxId}`);
        const argv = await run('env', { mode: 'argv', env: { FOO: 'argv-value' } });
        expect(argv.stdout.split('\n')).toContain('FOO=argv-value');
      });

      it('runs in /workspace by default and honours workdir', async () => {
        await run('echo default > default-dir.txt');
        expect(await text('/workspace/default-dir.txt')).toBe('default\n');
        await provider.writeFile(rt, '/workspace/sub/inner.txt', Buffer.from('in-sub'));
        const r = await run('cat inner.txt; echo made > made.txt', { workdir: '/workspace/sub' });
        expect(r.stdout).toBe('in-sub');
        expect(await text('/workspace/sub/made.txt')).toBe('made\n');
        const argv = await run('cat', { mode: 'argv', args: ['inner.txt'], workdir: '/workspace/sub' });
        expect(argv.stdout).toBe('in-sub');
      });

      it('yields chunks in order with exactly one exit event last', async () => {
        const evs = await events(rt, shellRequest('i=1; while [ $i -le 300 ]; do echo line$i; i=$((i+1)); done; echo done >&2; exit 4'));
        expectSingleExitLast(evs);
        const out = Buffer.concat(evs.flatMap((e) => (e.type === 'stdout' ? [e.data] : []))).toString();
        expect(out).toBe(Array.from({ length: 300 }, (_, i) => `line${i + 1}\n`).join(''));
        const err = Buffer.concat(evs.flatMap((e) => (e.type === 'stderr' ? [e.data] : []))).toString();
        expect(err).toBe('done\n');
        const exit = evs.at(-1);
        expect(exit?.type === 'exit' && exit.exitCode).toBe(4);
        for (const e of evs) if (e.type !== 'exit') expect(Buffer.isBuffer(e.data)).toBe(true);
      });

      it('keeps multi-byte UTF-8 characters whole when a chunk boundary splits them', async () => {
        // € is e2 82 ac and 😀 is f0 9f 98 80: each is written in two parts with a pause between,
        // so the parts leave the runtime as separate chunks.
        const r = await run("printf 'price: \\342\\202'; sleep 0.3; printf '\\254 \\360\\237'; sleep 0.3; printf '\\230\\200\\n'");
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toBe('price: € 😀\n');
      });

      it('streams the first chunk before the command ends', async () => {
        // The command waits for a file the test writes only after seeing "first": a provider
        // that buffered output until exit would never deliver it and hit the timeout.
        await provider.deleteFile(rt, '/workspace/go', false).catch(() => undefined);
        const seen: string[] = [];
        for await (const e of provider.execStream(
          rt,
          shellRequest('echo first; while [ ! -f go ]; do sleep 0.1; done; echo second', { timeoutMs: 15_000 }),
        )) {
          if (e.type === 'stdout') {
            seen.push(e.data.toString());
            if (seen.join('') === 'first\n') await provider.writeFile(rt, '/workspace/go', Buffer.from('1'));
          }
          if (e.type === 'exit') {
            expect(e.exitCode).toBe(0);
            seen.push('<exit>');
          }
        }
        expect(seen.join('')).toBe('first\nsecond\n<exit>');
      });

      it('delivers large output completely to a slow consumer', async () => {
        const size = 4 * 1024 * 1024;
        const hash = createHash('sha256');
        let total = 0;
        let chunks = 0;
        const evs: ExecEvent['type'][] = [];
        for await (const e of provider.execStream(rt, shellRequest(`head -c ${size} /dev/zero | tr '\\0' 'a'`))) {
          evs.push(e.type);
          if (e.type === 'stdout') {
            hash.update(e.data);
            total += e.data.length;
            if (chunks++ < 20) await sleep(20);
          }
        }
        expect(total).toBe(size);
        expect(hash.digest('hex')).toBe(createHash('sha256').update(Buffer.alloc(size, 'a')).digest('hex'));
        expect(evs.at(-1)).toBe('exit');
      });

      it('times out with a typed timeout and kills the whole process tree', async () => {
        const err = await expectCode(
          () => run('(sleep 2; echo late > late-timeout.txt) & sleep 30 & sleep 30; wait', { timeoutMs: 500 }),
          'timeout',
        );
        expect(err.code).toBe('timeout');
        await sleep(3000);
        await expectCode(() => provider.stat(rt, '/workspace/late-timeout.txt'), 'not_found');
        expect((await run('echo alive')).stdout).toBe('alive\n');
      });

      it('breaking out of the stream kills the command', async () => {
        for await (const e of provider.execStream(rt, shellRequest('echo started; sleep 2; echo late > late-break.txt; sleep 30'))) {
          if (e.type === 'stdout') break;
        }
        await sleep(3000);
        await expectCode(() => provider.stat(rt, '/workspace/late-break.txt'), 'not_found');
      });

      it('aborting the signal ends the stream and kills the command', async () => {
        const ac = new AbortController();
        let threw = false;
        let sawExit = false;
        try {
          for await (const e of provider.execStream(rt, shellRequest('echo started; sleep 2; echo late > late-abort.txt; sleep 30'), ac.signal)) {
            if (e.type === 'stdout') ac.abort();
            if (e.type === 'exit') sawExit = true;
          }
        } catch {
          threw = true;
        }
        expect(threw || sawExit).toBe(true);
        await sleep(3000);
        await expectCode(() => provider.stat(rt, '/workspace/late-abort.txt'), 'not_found');
      });

      it('runs concurrent commands independently', async () => {
        const [a, b] = await Promise.all([run('sleep 0.3; echo a'), run('echo b; exit 2')]);
        expect(a).toMatchObject({ exitCode: 0, stdout: 'a\n' });
        expect(b).toMatchObject({ exitCode: 2, stdout: 'b\n' });
      });
    });

    describe('files', () => {
      it('writes and reads text', async () => {
        await provider.writeFile(rt, '/workspace/hello.txt', Buffer.from('hello, sandbox\n'));
        expect(await text('/workspace/hello.txt')).toBe('hello, sandbox\n');
        expect((await run('cat hello.txt')).stdout).toBe('hello, sandbox\n');
      });

      it('round-trips all 256 byte values', async () => {
        const bytes = Buffer.alloc(256 * 4);
        for (let i = 0; i < bytes.length; i++) bytes[i] = i % 256;
        await provider.writeFile(rt, '/workspace/bytes.bin', bytes);
        expect((await readAll(await provider.readFile(rt, '/workspace/bytes.bin'))).equals(bytes)).toBe(true);
        expect((await provider.stat(rt, '/workspace/bytes.bin')).size).toBe(bytes.length);
      });

      it('accepts a Readable and streams large files both ways', async () => {
        const size = 3 * 1024 * 1024 + 17;
        const data = Buffer.alloc(size);
        for (let i = 0; i < size; i++) data[i] = (i * 31 + 7) % 251;
        const parts = [data.subarray(0, 1000), data.subarray(1000, 2_000_000), data.subarray(2_000_000)];
        await provider.writeFile(rt, '/workspace/big.bin', Readable.from(parts));
        const back = await readAll(await provider.readFile(rt, '/workspace/big.bin'));
        expect(back.length).toBe(size);
        expect(back.equals(data)).toBe(true);
      });

      it('overwrites, creates parent directories, and replaces content entirely', async () => {
        await provider.writeFile(rt, '/workspace/deep/er/file.txt', Buffer.from('long content here'));
        await provider.writeFile(rt, '/workspace/deep/er/file.txt', Buffer.from('short'));
        expect(await text('/workspace/deep/er/file.txt')).toBe('short');
        expect((await provider.stat(rt, '/workspace/deep/er')).isDir).toBe(true);
      });

      it('handles concurrent writes that create the same new directories', async () => {
        await Promise.all(Array.from({ length: 20 }, (_, i) => provider.writeFile(rt, `/workspace/conc/a/b/f${i}.txt`, Buffer.from(String(i)))));
        const names = (await provider.listFiles(rt, '/workspace/conc/a/b')).map((e) => e.name);
        expect(names).toHaveLength(20);
        expect(await text('/workspace/conc/a/b/f7.txt')).toBe('7');
      });

      it('applies the mode given on write (default 0644)', async () => {
        await provider.writeFile(rt, '/workspace/plain.txt', Buffer.from('p'));
        expect((await provider.stat(rt, '/workspace/plain.txt')).mode).toBe(0o644);
        await provider.writeFile(rt, '/workspace/run.sh', Buffer.from('#!/bin/sh\necho ran "$1"\n'), 0o755);
        expect((await provider.stat(rt, '/workspace/run.sh')).mode).toBe(0o755);
        expect((await run('./run.sh', { args: ['it'] })).stdout).toBe('ran it\n');
        await provider.writeFile(rt, '/workspace/secret.txt', Buffer.from('s'), 0o600);
        expect((await provider.stat(rt, '/workspace/secret.txt')).mode).toBe(0o600);
      });

      it('reading a missing file is not_found; reading a directory is bad_request', async () => {
        await expectCode(() => provider.readFile(rt, '/workspace/does-not-exist.txt'), 'not_found');
        await expectCode(() => provider.readFile(rt, '/workspace/no-dir/x.txt'), 'not_found');
        await expectCode(() => provider.readFile(rt, '/workspace'), 'bad_request');
      });

      it('lists entries with name, path, size, isDir, modTime and mode, sorted by name', async () => {
        await provider.writeFile(rt, '/workspace/ls/b.txt', Buffer.from('12345'));
        await provider.writeFile(rt, '/workspace/ls/a/nested.txt', Buffer.from('n'));
        const entries = await provider.listFiles(rt, '/workspace/ls');
        expect(entries.map((e) => e.name)).toEqual(['a', 'b.txt']);
        const [dir, file] = entries;
        expect(Object.keys(file ?? {}).sort()).toEqual(['isDir', 'modTime', 'mode', 'name', 'path', 'size']);
        expect(file).toMatchObject({ name: 'b.txt', path: '/workspace/ls/b.txt', size: 5, isDir: false, mode: 0o644 });
        expect(dir).toMatchObject({ name: 'a', path: '/workspace/ls/a', isDir: true });
        for (const e of entries) {
          expect(Number.isFinite(e.modTime)).toBe(true);
          expect(e.modTime).toBeGreaterThan(Date.parse('2020-01-01'));
          expect(Number.isInteger(e.mode)).toBe(true);
        }
        await expectCode(() => provider.listFiles(rt, '/workspace/ls-missing'), 'not_found');
        await expectCode(() => provider.listFiles(rt, '/workspace/ls/b.txt'), 'bad_request');
      });

      it('stats files and directories; a missing path is not_found', async () => {
        await provider.writeFile(rt, '/workspace/st/f.txt', Buffer.from('abc'));
        expect(await provider.stat(rt, '/workspace/st/f.txt')).toMatchObject({ name: 'f.txt', path: '/workspace/st/f.txt', size: 3, isDir: false });
        expect(await provider.stat(rt, '/workspace/st')).toMatchObject({ name: 'st', path: '/workspace/st', isDir: true });
        await expectCode(() => provider.stat(rt, '/workspace/st/nope'), 'not_found');
      });

      it('deletes files and directories (non-recursive on a non-empty dir is conflict)', async () => {
        await provider.writeFile(rt, '/workspace/del/one.txt', Buffer.from('1'));
        await provider.writeFile(rt, '/workspace/del/sub/two.txt', Buffer.from('2'));
        await provider.deleteFile(rt, '/workspace/del/one.txt', false);
        await expectCode(() => provider.stat(rt, '/workspace/del/one.txt'), 'not_found');
        await expectCode(() => provider.deleteFile(rt, '/workspace/del', false), 'conflict');
        expect(await text('/workspace/del/sub/two.txt')).toBe('2');
        await provider.deleteFile(rt, '/workspace/del', true);
        await expectCode(() => provider.stat(rt, '/workspace/del'), 'not_found');
        await expectCode(() => provider.deleteFile(rt, '/workspace/del', true), 'not_found');
        await run('mkdir empty-dir');
        await provider.deleteFile(rt, '/workspace/empty-dir', false);
        await expectCode(() => provider.stat(rt, '/workspace/empty-dir'), 'not_found');
      });

      it('moves files and directories; a missing source is not_found', async () => {
        await provider.writeFile(rt, '/workspace/mv/src.txt', Buffer.from('moving'));
        await provider.moveFile(rt, '/workspace/mv/src.txt', '/workspace/mv/dst.txt');
        await expectCode(() => provider.stat(rt, '/workspace/mv/src.txt'), 'not_found');
        expect(await text('/workspace/mv/dst.txt')).toBe('moving');
        await provider.moveFile(rt, '/workspace/mv', '/workspace/mv2');
        expect(await text('/workspace/mv2/dst.txt')).toBe('moving');
        await expectCode(() => provider.moveFile(rt, '/workspace/mv/none', '/workspace/x'), 'not_found');
      });

      it('chmods; a missing path is not_found', async () => {
        await provider.writeFile(rt, '/workspace/ch.txt', Buffer.from('c'));
        await provider.chmod(rt, '/workspace/ch.txt', 0o600);
        expect((await provider.stat(rt, '/workspace/ch.txt')).mode).toBe(0o600);
        await provider.chmod(rt, '/workspace/ch.txt', 0o755);
        expect((await provider.stat(rt, '/workspace/ch.txt')).mode).toBe(0o755);
        await expectCode(() => provider.chmod(rt, '/workspace/ch-missing', 0o600), 'not_found');
      });

      it('globs with *, ? and **, sorted; no match is empty', async () => {
        for (const f of ['g/a.txt', 'g/b.log', 'g/c1.txt', 'g/d/c.txt', 'g/d/e/f.txt']) {
          await provider.writeFile(rt, `/workspace/${f}`, Buffer.from(f));
        }
        expect(await provider.glob(rt, '/workspace/g/*.txt')).toEqual(['/workspace/g/a.txt', '/workspace/g/c1.txt']);
        expect(await provider.glob(rt, '/workspace/g/c?.txt')).toEqual(['/workspace/g/c1.txt']);
        expect(await provider.glob(rt, '/workspace/g/**/*.txt')).toEqual([
          '/workspace/g/a.txt',
          '/workspace/g/c1.txt',
          '/workspace/g/d/c.txt',
          '/workspace/g/d/e/f.txt',
        ]);
        expect(await provider.glob(rt, '/workspace/g/*.none')).toEqual([]);
        expect(await provider.glob(rt, '/workspace/no-such-dir/**')).toEqual([]);
      });
    });

    describe('symlinks never reach the host', () => {
      let hostDir: string;
      const secret = 'HOST-SECRET-CONTENT';

      beforeAll(async () => {
        hostDir = mkdtempSync(join(tmpdir(), 'stacyvm-contract-host-'));
        writeFileSync(join(hostDir, 'host-only-secret.txt'), secret);
        chmodSync(join(hostDir, 'host-only-secret.txt'), 0o640);
        const plant = await run(
          `ln -s '${hostDir}/host-only-secret.txt' filelink && ln -s '${hostDir}' dirlink && ln -s /etc/passwd passwdlink && ` +
            `ln -s ../../../../../../../../../..${hostDir} rellink && echo planted`,
        );
        expect(plant.stdout).toBe('planted\n');
      });

      afterAll(() => rmSync(hostDir, { recursive: true, force: true }));

      const hostUntouched = (): void => {
        expect(readFileSync(join(hostDir, 'host-only-secret.txt'), 'utf8')).toBe(secret);
        expect(statSync(join(hostDir, 'host-only-secret.txt')).mode & 0o7777).toBe(0o640);
        expect(existsSync(join(hostDir, 'new.txt'))).toBe(false);
        expect(existsSync(join(hostDir, 'moved-in.txt'))).toBe(false);
      };

      it('reads through a planted link never return host content', async () => {
        for (const p of ['/workspace/filelink', '/workspace/dirlink/host-only-secret.txt', '/workspace/rellink/host-only-secret.txt', '/workspace/passwdlink']) {
          const r = await settleTyped(async () => (await readAll(await provider.readFile(rt, p))).toString(), 'bad_request', 'not_found');
          if (r.ok) expect(r.value).not.toContain(secret);
        }
        for (const p of ['/workspace/dirlink', '/workspace/rellink']) {
          const r = await settleTyped(() => provider.listFiles(rt, p), 'bad_request', 'not_found');
          if (r.ok) expect(r.value.map((e) => e.name)).not.toContain('host-only-secret.txt');
        }
        await settleTyped(() => provider.stat(rt, '/workspace/dirlink/host-only-secret.txt'), 'bad_request', 'not_found');
        for (const pattern of ['/workspace/dirlink/*', '/workspace/**/host-only-secret.txt', '/workspace/rellink/*']) {
          const r = await settleTyped(() => provider.glob(rt, pattern), 'bad_request');
          if (r.ok) expect(r.value.join('\n')).not.toContain('host-only-secret.txt');
        }
        hostUntouched();
      });

      it('writes through a planted link never write a host file', async () => {
        await settleTyped(() => provider.writeFile(rt, '/workspace/filelink', Buffer.from('PWNED')), 'bad_request', 'not_found');
        hostUntouched();
        await settleTyped(() => provider.writeFile(rt, '/workspace/dirlink/new.txt', Buffer.from('PWNED')), 'bad_request', 'not_found');
        await settleTyped(() => provider.writeFile(rt, '/workspace/rellink/new.txt', Buffer.from('PWNED')), 'bad_request', 'not_found');
        await settleTyped(() => provider.writeFile(rt, '/workspace/dirlink/sub/new.txt', Buffer.from('PWNED')), 'bad_request', 'not_found');
        expect(existsSync(join(hostDir, 'sub'))).toBe(false);
        hostUntouched();
      });

      it('chmod, delete and move through a planted link never touch a host file', async () => {
        await settleTyped(() => provider.chmod(rt, '/workspace/filelink', 0o777), 'bad_request', 'not_found');
        await settleTyped(() => provider.chmod(rt, '/workspace/dirlink/host-only-secret.txt', 0o777), 'bad_request', 'not_found');
        hostUntouched();
        await settleTyped(() => provider.deleteFile(rt, '/workspace/dirlink/host-only-secret.txt', false), 'bad_request', 'not_found');
        await settleTyped(() => provider.deleteFile(rt, '/workspace/rellink/host-only-secret.txt', false), 'bad_request', 'not_found');
        hostUntouched();
        await provider.writeFile(rt, '/workspace/to-move.txt', Buffer.from('m'));
        await settleTyped(() => provider.moveFile(rt, '/workspace/to-move.txt', '/workspace/dirlink/moved-in.txt'), 'bad_request', 'not_found');
        await settleTyped(() => provider.moveFile(rt, '/workspace/dirlink/host-only-secret.txt', '/workspace/stolen.txt'), 'bad_request', 'not_found');
        hostUntouched();
        const stolen = await settleTyped(async () => (await readAll(await provider.readFile(rt, '/workspace/stolen.txt'))).toString(), 'not_found');
        if (stolen.ok) expect(stolen.value).not.toContain(secret);
        // Deleting the link itself (recursively) removes the link, never the host directory.
        await settleTyped(() => provider.deleteFile(rt, '/workspace/dirlink', true), 'bad_request');
        await settleTyped(() => provider.deleteFile(rt, '/workspace/filelink', false), 'bad_request');
        hostUntouched();
        expect(existsSync(hostDir)).toBe(true);
      });
    });
  });
}
