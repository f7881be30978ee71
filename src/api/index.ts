export { buildApp, API_PREFIX, type BuildAppOptions } from './app.js';
export type { WorkerAuth } from './auth.js';
