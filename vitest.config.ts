import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // Integration suites start real processes, runc containers and databases; on a
    // 2-core machine running many files at once only adds contention and flakiness.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
