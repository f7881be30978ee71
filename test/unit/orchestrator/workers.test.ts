/**
 * Runs the worker/placement/lease/reconcile suites on SQLite (in memory) and on PostgreSQL (a
 * scratch database made and dropped by this run at STACYVM_TEST_PG_DSN, one schema per test).
 */
import { afterAll, beforeAll, describe } from 'vitest';
import { openPostgresStore } from '../../../src/store/postgres.js';
import { createScratchDatabase, type ScratchDatabase } from '../../fixtures/pg-scratch.js';
import { hostSupports } from '../../host.js';
import { sqliteMemory } from './harness.js';
import { workerSuites } from './worker-suites.js';

describe('sqlite', () => {
  workerSuites('sqlite', sqliteMemory);
});

const pgDsn = process.env.STACYVM_TEST_PG_DSN;
const pgRuns = hostSupports('orchestrator on postgres', () =>
  pgDsn ? null : 'STACYVM_TEST_PG_DSN is not set (eval "$(scripts/test-services.sh postgres)")',
);

describe.runIf(pgRuns)('postgres', () => {
  let scratch: ScratchDatabase | undefined;
  beforeAll(async () => {
    scratch = await createScratchDatabase(pgDsn as string, 'stacyvm_orch');
  });
  afterAll(async () => {
    await scratch?.drop();
  });
  workerSuites('postgres', async () => {
    const store = openPostgresStore({ dsn: await scratch!.freshSchemaDsn() });
    await store.migrate();
    return store;
  });
});
