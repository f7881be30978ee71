export { DockerProvider, imageReference, runtimeIsolation, registryOf, normalizeRegistry, EXEC_MARKER_ENV, LABEL_SANDBOX_ID, LABEL_WORKER_ID, LABEL_OWNER_ID, LABEL_CREATED_AT } from './provider.js';
export type { DockerProviderOptions, DockerProviderLogger, PullProgress } from './provider.js';
export { redactDockerConfig, dockerConnectionOptions } from './config.js';
