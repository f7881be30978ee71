/**
 * Runs the store contract against SQLite (temp files) and PostgreSQL (a scratch database made
 * and dropped by this run on the server at STACYVM_TEST_PG_DSN, one schema per test).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe } from 'vitest';
import { createScratchDatabase, type ScratchDatabase } from '../fixtures/pg-scratch.js';
import { hostSupports } from '../host.js';
import { storeContract } from './store.contract.js';

describe('store contract: sqlite', () => {
  let dir = '';
  let n = 0;
  storeContract({
    dialect: 'sqlite',
    setup: async () => {
      dir = await mkdtemp(join(tmpdir(), 'stacyvm-store-'));
    },
    teardown: async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    },
    fresh: () => Promise.resolve({ driver: 'sqlite', path: join(dir, `db-${++n}`, 'stacyvm.db') }),
  });
});

const pgDsn = process.env.STACYVM_TEST_PG_DSN;
const pgRuns = hostSupports('store contract: postgres', () =>
  pgDsn ? null : 'STACYVM_TEST_PG_DSN is not set (eval "$(scripts/test-services.sh postgres)")',
);

describe.runIf(pgRuns)('store contract: postgres', () => {
  let scratch: ScratchDatabase | undefined;
  storeContract({
    dialect: 'postgres',
    setup: async () => {
      scratch = await createScratchDatabase(pgDsn!, 'stacyvm_test');
    },
    teardown: async () => {
      await scratch?.drop();
    },
    fresh: async () => ({ driver: 'postgres', dsn: await scratch!.freshSchemaDsn() }),
  });
});
