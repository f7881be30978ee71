/**
 * Builds the providers this server runs from config, and resolves the default. Each provider
 * has one factory here; `auto` prefers real isolation (oci) when it works on this host and
 * otherwise falls back to mock with a loud warning, because mock runs commands as plain host
 * processes.
 */
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { StacyError } from '../core/errors.js';
import { DockerProvider } from '../providers/docker/index.js';
import { MockProvider, mockRootFrom } from '../providers/mock/mock-provider.js';
import { createOciProvider } from '../providers/oci/index.js';
import type { Provider } from '../providers/provider.js';
import { ProviderRegistry } from '../providers/registry.js';

type ProviderName = 'mock' | 'oci' | 'docker';

/** A factory builds a provider and says whether it can serve the default image on this host. */
interface ProviderFactory {
  enabled(config: Config): boolean;
  build(config: Config, log: Logger): Promise<Provider>;
}

const FACTORIES: Record<ProviderName, ProviderFactory> = {
  mock: {
    enabled: (c) => c.providers.mock.enabled,
    build: async (c) => new MockProvider({ root: mockRootFrom(c) }),
  },
  // Healthy only when runc works here and the default image is installed, which is what auto asks.
  oci: {
    enabled: (c) => c.providers.oci.enabled,
    build: async (c) => createOciProvider(c),
  },
  docker: {
    enabled: (c) => c.providers.docker.enabled,
    build: async (c, log) => new DockerProvider({ config: c.providers.docker, log }),
  },
};

/**
 * Preference order when `providers.default` is `auto`: real isolation first. docker only
 * counts when it is explicitly enabled (it is off by default) and its daemon answers.
 */
const AUTO_ORDER: readonly ProviderName[] = ['oci', 'docker', 'mock'];

/**
 * Builds every enabled provider into a registry with its default set. Throws `bad_request`
 * when the configured default is not an enabled provider.
 */
export async function buildProviders(config: Config, log: Logger): Promise<ProviderRegistry> {
  const registry = new ProviderRegistry();
  for (const [name, factory] of Object.entries(FACTORIES) as [ProviderName, ProviderFactory][]) {
    if (!factory.enabled(config)) continue;
    try {
      registry.register(await factory.build(config, log.child({ provider: name })));
    } catch (err) {
      log.warn({ err, provider: name }, `provider ${name} could not be started; it is left out`);
    }
  }
  const wanted = config.providers.default;
  if (wanted === 'auto') {
    const chosen = await pickAuto(registry, log);
    registry.setDefault(chosen);
  } else {
    if (!registry.has(wanted)) {
      throw new StacyError('bad_request', `providers.default is ${JSON.stringify(wanted)}, which is not an enabled provider (enabled: ${registry.names().join(', ') || 'none'})`);
    }
    registry.setDefault(wanted);
  }
  const def = registry.default();
  if (def.capabilities.isolation === 'none') {
    log.warn(
      { provider: def.name, isolation: 'none' },
      `WARNING: the default provider is ${def.name}, which has isolation: none — commands run as plain host processes; never use it for untrusted code`,
    );
  }
  return registry;
}

async function pickAuto(registry: ProviderRegistry, log: Logger): Promise<string> {
  for (const name of AUTO_ORDER) {
    const provider = registry.get(name);
    if (provider === undefined) continue;
    if (name === 'mock') return name;
    const health = await provider.health();
    if (health.healthy) return name;
    log.info({ provider: name, reason: health.error }, `providers.default=auto: ${name} is not usable here`);
  }
  const first = registry.names()[0];
  if (first === undefined) throw new StacyError('bad_request', 'no provider is enabled (enable providers.mock, providers.oci or providers.docker)');
  return first;
}
