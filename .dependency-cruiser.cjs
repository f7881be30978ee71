/**
 * Layering from DESIGN.md: dependencies point inward,
 * api → orchestrator → (store, providers, workerproto) → core. Only src/main (the composition
 * root) and src/cli may build concrete implementations.
 */
const layer = (name) => `^src/${name}/`;
module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', from: {}, to: { circular: true } },
    {
      name: 'core-imports-nothing',
      severity: 'error',
      from: { path: layer('core') },
      to: { path: '^src/', pathNot: layer('core') },
    },
    {
      name: 'config-only-core',
      severity: 'error',
      from: { path: layer('config') },
      to: { path: '^src/', pathNot: [layer('core'), layer('config')] },
    },
    {
      name: 'store-only-core',
      severity: 'error',
      from: { path: layer('store') },
      to: { path: '^src/', pathNot: [layer('core'), layer('store')] },
    },
    {
      name: 'providers-only-core',
      severity: 'error',
      from: { path: layer('providers') },
      to: { path: '^src/', pathNot: [layer('core'), layer('providers'), layer('config'), layer('images')] },
    },
    {
      name: 'workerproto-only-core',
      severity: 'error',
      from: { path: layer('workerproto') },
      to: { path: '^src/', pathNot: [layer('core'), layer('workerproto')] },
    },
    {
      name: 'orchestrator-uses-interfaces',
      severity: 'error',
      from: { path: layer('orchestrator') },
      to: {
        path: '^src/(api|cli|main|worker)/|^src/store/(sqlite|postgres)|^src/providers/[^/]+/',
      },
    },
    {
      name: 'api-uses-interfaces',
      severity: 'error',
      from: { path: layer('api') },
      to: { path: '^src/(cli|main|worker)/|^src/store/(sqlite|postgres)|^src/providers/[^/]+/' },
    },
    {
      name: 'only-composition-root-builds',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(main|cli)/' },
      to: { path: layer('main') },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
