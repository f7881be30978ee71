export { createOrchestrator } from './orchestrator.js';
export type { Orchestrator, OrchestratorLogger, OrchestratorOptions } from './orchestrator.js';
export { place, isStale } from './scheduler.js';
export type { Placement, PlacementInput } from './scheduler.js';
export type * from './service.js';
