/** Runs scripts/smoke-remote-worker.sh (the two-process walk-through of docs/remote-workers.md, as written) so CI keeps it working. */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hostSupports } from '../host.js';
import { CLI } from './server-process.js';

const SCRIPT = resolve(import.meta.dirname, '../../scripts/smoke-remote-worker.sh');
const needs = () => (existsSync(CLI) ? (existsSync('/usr/bin/curl') || existsSync('/bin/curl') ? null : 'curl is not installed') : `${CLI} is not built (npm run build)`);

describe.skipIf(!hostSupports('remote worker smoke script', needs))('scripts/smoke-remote-worker.sh', () => {
  it('runs the documented walk-through as written, then spawn on a remote worker, exec, files, logs, extend and destroy', { timeout: 150_000 }, async () => {
    const { code, out } = await new Promise<{ code: number; out: string }>((done) => {
      execFile('bash', [SCRIPT], { timeout: 140_000, env: { ...process.env, STACYVM_TEST_LOG_LEVEL: 'warn' } }, (err, stdout, stderr) => {
        done({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, out: `${stdout}\n${stderr}` });
      });
    });
    expect(code, out).toBe(0);
    expect(out).toContain('smoke: OK');
  });
});
