export * from './claims.js';
export * from './methods.js';
export * from './envelope.js';
export * from './wire-errors.js';
export * from './fence.js';
export * from './tokens.js';
export * from './gate.js';
