import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { openStore, type OpenStoreOptions } from '../../src/store/index.js';

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

describe('openStore', () => {
  it('refuses incomplete or unknown database settings with bad_request', () => {
    const bad: OpenStoreOptions[] = [
      { driver: 'sqlite' },
      { driver: 'sqlite', path: '' },
      { driver: 'postgres' },
      { driver: 'mysql' as 'sqlite', path: 'x' },
    ];
    for (const options of bad) expect(() => openStore(options)).toThrow(expect.objectContaining({ code: 'bad_request' }));
  });

  it('opens an in-memory SQLite store', async () => {
    const store = openStore({ driver: 'sqlite', path: ':memory:' });
    await store.migrate();
    expect(store.dialect).toBe('sqlite');
    expect(await store.listSandboxes()).toEqual([]);
    await store.close();
  });

  it('ping reports an unreachable PostgreSQL server as unavailable', async () => {
    const store = openStore({ driver: 'postgres', dsn: `postgres://postgres@127.0.0.1:${await closedPort()}/stacyvm` });
    expect(store.dialect).toBe('postgres');
    await expect(store.ping()).rejects.toMatchObject({ code: 'unavailable' });
    await store.close();
  });
});
