import { posix } from 'node:path';
import { badRequest } from './errors.js';

/**
 * Normalises a client-supplied sandbox path. Paths are absolute inside the sandbox; any `..`
 * segment, NUL bytes and relative paths are rejected rather than "fixed", so a client never gets
 * a different file than it named. Symlinks are the provider's job: only it can see the sandbox
 * filesystem.
 */
export function normalizeSandboxPath(input: unknown, field = 'path'): string {
  if (typeof input !== 'string' || input.length === 0) throw badRequest(`${field}: required`);
  if (input.includes('\0')) throw badRequest(`${field}: must not contain NUL bytes`);
  if (input.length > 4096) throw badRequest(`${field}: longer than 4096 bytes`);
  if (!input.startsWith('/')) throw badRequest(`${field}: must be absolute inside the sandbox (start with "/")`);
  if (input.split('/').includes('..')) throw badRequest(`${field}: ".." is not allowed in sandbox paths`);
  return posix.normalize(input);
}
