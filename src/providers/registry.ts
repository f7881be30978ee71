import { badRequest } from '../core/errors.js';
import type { Provider } from './provider.js';

/**
 * The providers a server (or worker) runs, by name, with one default. Built in the composition
 * root and handed to the orchestrator, which only sees the Provider interface.
 */
export class ProviderRegistry {
  private readonly providers = new Map<string, Provider>();
  private defaultProviderName: string | undefined;

  /** Adds a provider; a second provider with the same name is a programming error. */
  register(provider: Provider, options: { default?: boolean } = {}): this {
    if (this.providers.has(provider.name)) throw new Error(`provider ${provider.name} registered twice`);
    this.providers.set(provider.name, provider);
    if (options.default === true || this.defaultProviderName === undefined) this.defaultProviderName = provider.name;
    return this;
  }

  /** Makes an already registered provider the default. */
  setDefault(name: string): void {
    this.require(name);
    this.defaultProviderName = name;
  }

  /** The provider called `name`, or undefined. */
  get(name: string): Provider | undefined {
    return this.providers.get(name);
  }

  /** The provider called `name`; an unknown name is the client's `bad_request`. */
  require(name: string): Provider {
    const provider = this.providers.get(name);
    if (provider === undefined) {
      throw badRequest(`unknown provider ${JSON.stringify(name)} (available: ${this.names().join(', ') || 'none'})`);
    }
    return provider;
  }

  /** Name of the default provider; throws when nothing is registered. */
  get defaultName(): string {
    if (this.defaultProviderName === undefined) throw new Error('no provider registered');
    return this.defaultProviderName;
  }

  /** The default provider. */
  default(): Provider {
    return this.require(this.defaultName);
  }

  /** `name`, or the default provider when `name` is undefined or empty. */
  resolve(name?: string | null): Provider {
    return name === undefined || name === null || name === '' ? this.default() : this.require(name);
  }

  has(name: string): boolean {
    return this.providers.has(name);
  }

  /** Registered names, sorted. */
  names(): string[] {
    return [...this.providers.keys()].sort();
  }

  /** Registered providers, sorted by name. */
  list(): Provider[] {
    return this.names().map((n) => this.providers.get(n) as Provider);
  }

  /** Closes every provider's shared resources (runtimes keep running). */
  async closeAll(): Promise<void> {
    await Promise.allSettled(this.list().map((p) => p.close?.()));
  }
}
