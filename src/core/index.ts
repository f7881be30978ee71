export * from './errors.js';
export * from './duration.js';
export * from './ids.js';
export * from './clock.js';
export * from './types.js';
export * from './paths.js';
export * from './version.js';
export * from './ndjson.js';
