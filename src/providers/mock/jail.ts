/**
 * File operations confined to one host directory that stands for a sandbox's `/`. Every path
 * is resolved component by component; a symlink is followed only when its real target stays
 * inside the root, otherwise the operation is rejected with `bad_request`. The final open uses
 * O_NOFOLLOW so a symlink swapped in after the check fails instead of being followed.
 */
import { constants, createReadStream, createWriteStream, type Stats } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, realpath, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { join, posix, sep } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import picomatch from 'picomatch';
import { StacyError, badRequest, conflict, providerError } from '../../core/errors.js';
import type { FileEntry } from '../provider.js';

const MAX_GLOB_RESULTS = 10_000;

function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** Maps a host filesystem error to the catalog; StacyErrors pass through. */
function mapFsError(err: unknown, sandboxPath: string): StacyError {
  if (err instanceof StacyError) return err;
  switch (errnoOf(err)) {
    case 'ENOENT':
      return new StacyError('not_found', `${sandboxPath}: no such file or directory`);
    case 'ENOTDIR':
      return new StacyError('not_found', `${sandboxPath}: a path component is not a directory`);
    case 'EISDIR':
      return badRequest(`${sandboxPath}: is a directory`);
    case 'ENOTEMPTY':
    case 'EEXIST':
      return conflict(`${sandboxPath}: directory not empty`);
    case 'ELOOP':
      return badRequest(`${sandboxPath}: symlink not allowed here`);
    case 'EACCES':
    case 'EPERM':
      return new StacyError('forbidden', `${sandboxPath}: permission denied`);
    case 'EINVAL':
      return badRequest(`${sandboxPath}: invalid operation`);
    default:
      return providerError(`${sandboxPath}: file operation failed`, err);
  }
}

export class Jail {
  /** @param root host directory standing for the sandbox's `/`; must be a real path. */
  constructor(readonly root: string) {}

  private inside(real: string): boolean {
    return real === this.root || real.startsWith(this.root + sep);
  }

  private async realInside(hostPath: string, sandboxPath: string): Promise<string> {
    const real = await realpath(hostPath);
    if (!this.inside(real)) throw badRequest(`${sandboxPath}: symlink points outside the sandbox`);
    return real;
  }

  /**
   * The real host directory holding the last component of `sandboxPath` and that component's
   * name ('' for `/`). With `create`, missing directories are made (never through a symlink
   * that leaves the root).
   */
  async parentOf(sandboxPath: string, create = false): Promise<{ dir: string; base: string }> {
    if (!sandboxPath.startsWith('/') || sandboxPath.includes('\0')) throw badRequest(`${JSON.stringify(sandboxPath)}: not an absolute sandbox path`);
    const segments = sandboxPath.split('/').filter((s) => s.length > 0);
    if (segments.some((s) => s === '..' || s === '.')) throw badRequest(`${sandboxPath}: must be normalised`);
    const base = segments.pop() ?? '';
    let dir = this.root;
    try {
      for (const segment of segments) dir = await this.step(join(dir, segment), sandboxPath, create);
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
    return { dir, base };
  }

  /** Enters one directory component: made when missing (with `create`), followed when a link stays inside. */
  private async step(next: string, sandboxPath: string, create: boolean): Promise<string> {
    let info: Stats;
    try {
      info = await lstat(next);
    } catch (err) {
      if (!create || errnoOf(err) !== 'ENOENT') throw err;
      try {
        await mkdir(next, { mode: 0o755 });
        return next;
      } catch (mkdirErr) {
        // A concurrent writer made it first: use what is there now, checked like any other.
        if (errnoOf(mkdirErr) !== 'EEXIST') throw mkdirErr;
        info = await lstat(next);
      }
    }
    let dir = next;
    if (info.isSymbolicLink()) {
      dir = await this.realInside(next, sandboxPath);
      info = await stat(dir);
    }
    if (!info.isDirectory()) throw new StacyError('not_found', `${sandboxPath}: a path component is not a directory`);
    return dir;
  }

  /** The real host path of `sandboxPath`, following symlinks only while they stay inside. */
  async resolve(sandboxPath: string): Promise<string> {
    const { dir, base } = await this.parentOf(sandboxPath);
    if (base === '') return dir;
    const candidate = join(dir, base);
    try {
      const info = await lstat(candidate);
      return info.isSymbolicLink() ? await this.realInside(candidate, sandboxPath) : candidate;
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /** Host path of the directory entry itself (a symlink is not followed). */
  private async entryPath(sandboxPath: string): Promise<string> {
    const { dir, base } = await this.parentOf(sandboxPath);
    if (base === '') throw badRequest(`${sandboxPath}: not allowed on the sandbox root`);
    return join(dir, base);
  }

  async readFile(sandboxPath: string): Promise<Readable> {
    const real = await this.resolve(sandboxPath);
    try {
      // O_NONBLOCK: opening a FIFO planted by a command must not block a pool thread forever.
      const handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        const info = await handle.stat();
        if (info.isDirectory()) throw badRequest(`${sandboxPath}: is a directory`);
        if (!info.isFile()) throw badRequest(`${sandboxPath}: not a regular file`);
      } catch (err) {
        await handle.close();
        throw err;
      }
      return createReadStream('', { fd: handle, autoClose: true });
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /**
   * Writes to a fresh file next to the target and renames it over the target, so a planted
   * symlink at the target is replaced rather than followed and readers never see a partial
   * file. Without `mode`, an existing file keeps its mode and a new one gets 0644.
   */
  async writeFile(sandboxPath: string, content: Buffer | Readable, mode?: number): Promise<void> {
    const { dir, base } = await this.parentOf(sandboxPath, true);
    if (base === '') throw badRequest(`${sandboxPath}: is a directory`);
    const target = join(dir, base);
    let finalMode = mode ?? 0o644;
    try {
      const existing = await lstat(target);
      if (existing.isDirectory()) throw badRequest(`${sandboxPath}: is a directory`);
      if (mode === undefined && existing.isFile()) finalMode = existing.mode & 0o7777;
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw mapFsError(err, sandboxPath);
    }
    const temp = join(dir, `.stacyvm-write-${randomBytes(6).toString('hex')}`);
    try {
      const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      const source = Buffer.isBuffer(content) ? Readable.from([content]) : content;
      await pipeline(source, createWriteStream('', { fd: handle, autoClose: true }));
      await chmod(temp, finalMode);
      await rename(temp, target);
    } catch (err) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw mapFsError(err, sandboxPath);
    }
  }

  private entry(sandboxPath: string, name: string, info: Stats): FileEntry {
    return {
      name,
      path: sandboxPath,
      size: info.isDirectory() ? 0 : info.size,
      isDir: info.isDirectory(),
      modTime: Math.floor(info.mtimeMs),
      mode: info.mode & 0o7777,
    };
  }

  async stat(sandboxPath: string): Promise<FileEntry> {
    const real = await this.resolve(sandboxPath);
    try {
      return this.entry(sandboxPath, posix.basename(sandboxPath) || '/', await stat(real));
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /** Entries of a directory sorted by name; symlinks are listed, never followed. */
  async list(sandboxPath: string): Promise<FileEntry[]> {
    const real = await this.resolve(sandboxPath);
    try {
      const info = await stat(real);
      if (!info.isDirectory()) throw badRequest(`${sandboxPath}: not a directory`);
      const names = (await readdir(real)).filter((n) => !n.startsWith('.stacyvm-write-')).sort();
      const entries: FileEntry[] = [];
      for (const name of names) {
        try {
          entries.push(this.entry(posix.join(sandboxPath, name), name, await lstat(join(real, name))));
        } catch (err) {
          // Removed between readdir and lstat: it is simply no longer there.
          if (errnoOf(err) !== 'ENOENT') throw err;
        }
      }
      return entries;
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /** Deletes a file, symlink (not its target) or directory; a non-empty directory needs `recursive`. */
  async delete(sandboxPath: string, recursive: boolean): Promise<void> {
    const target = await this.entryPath(sandboxPath);
    try {
      const info = await lstat(target);
      if (!info.isDirectory()) await unlink(target);
      else if (recursive) await rm(target, { recursive: true, force: false });
      else await rmdir(target);
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /** Renames an entry (a symlink moves as a symlink); the destination's parents are created. */
  async move(fromPath: string, toPath: string): Promise<void> {
    const from = await this.entryPath(fromPath);
    try {
      await lstat(from);
    } catch (err) {
      throw mapFsError(err, fromPath);
    }
    if (toPath === fromPath) return;
    if (toPath.startsWith(fromPath.endsWith('/') ? fromPath : `${fromPath}/`)) throw badRequest(`${toPath}: cannot move a directory into itself`);
    const { dir, base } = await this.parentOf(toPath, true);
    if (base === '') throw badRequest(`${toPath}: not allowed on the sandbox root`);
    try {
      await rename(from, join(dir, base));
    } catch (err) {
      throw mapFsError(err, toPath);
    }
  }

  async chmod(sandboxPath: string, mode: number): Promise<void> {
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw badRequest(`mode: must be between 0 and 0o7777`);
    const real = await this.resolve(sandboxPath);
    try {
      await chmod(real, mode);
    } catch (err) {
      throw mapFsError(err, sandboxPath);
    }
  }

  /**
   * Absolute sandbox paths matching `pattern`, sorted. The walk starts at the pattern's literal
   * prefix and never descends through symlinks, so `**` cannot wander out of the sandbox.
   */
  async glob(pattern: string): Promise<string[]> {
    if (!pattern.startsWith('/')) throw badRequest('pattern: must be absolute inside the sandbox');
    if (pattern.includes('\0')) throw badRequest('pattern: must not contain NUL bytes');
    const segments = pattern.split('/').filter((s) => s.length > 0);
    if (segments.includes('..')) throw badRequest('pattern: ".." is not allowed');
    const literal: string[] = [];
    for (const segment of segments) {
      if (/[*?[\]{}()!+@]/.test(segment)) break;
      literal.push(segment);
    }
    const base = `/${literal.join('/')}`;
    if (literal.length === segments.length) {
      try {
        await this.stat(base);
        return [base];
      } catch (err) {
        if (err instanceof StacyError && (err.code === 'not_found' || err.code === 'bad_request')) return [];
        throw err;
      }
    }
    let start: string;
    try {
      start = await this.resolve(base);
      if (!(await stat(start)).isDirectory()) return [];
    } catch (err) {
      if (err instanceof StacyError && (err.code === 'not_found' || err.code === 'bad_request')) return [];
      throw mapFsError(err, base);
    }
    const isMatch = picomatch(pattern);
    const deep = segments.slice(literal.length).some((s) => s.includes('**'));
    const maxDepth = deep ? Number.POSITIVE_INFINITY : segments.length - literal.length;
    const results: string[] = [];
    const walk = async (hostDir: string, sandboxDir: string, depth: number): Promise<void> => {
      let dirents;
      try {
        dirents = await readdir(hostDir, { withFileTypes: true });
      } catch {
        return; // vanished or unreadable while walking
      }
      for (const dirent of dirents) {
        if (results.length >= MAX_GLOB_RESULTS) return;
        if (dirent.name.startsWith('.stacyvm-write-')) continue;
        const sandboxPath = posix.join(sandboxDir, dirent.name);
        if (isMatch(sandboxPath)) results.push(sandboxPath);
        if (dirent.isDirectory() && depth + 1 < maxDepth) await walk(join(hostDir, dirent.name), sandboxPath, depth + 1);
      }
    };
    await walk(start, base, 0);
    return results.sort();
  }
}
