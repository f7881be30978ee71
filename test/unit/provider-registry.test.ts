import { describe, expect, it } from 'vitest';
import { ProviderRegistry } from '../../src/providers/registry.js';
import type { Provider } from '../../src/providers/provider.js';

/** Only name and close matter to the registry. */
const named = (name: string, closed: string[] = []): Provider =>
  ({ name, close: async () => void closed.push(name) }) as unknown as Provider;

describe('ProviderRegistry', () => {
  it('uses the first provider as default until told otherwise', () => {
    const r = new ProviderRegistry().register(named('mock')).register(named('oci'));
    expect(r.defaultName).toBe('mock');
    r.setDefault('oci');
    expect(r.default().name).toBe('oci');
    expect(r.names()).toEqual(['mock', 'oci']);
    expect(r.list().map((p) => p.name)).toEqual(['mock', 'oci']);
  });

  it('honours an explicit default at registration', () => {
    const r = new ProviderRegistry().register(named('mock')).register(named('docker'), { default: true });
    expect(r.defaultName).toBe('docker');
    expect(r.resolve(undefined).name).toBe('docker');
    expect(r.resolve('').name).toBe('docker');
    expect(r.resolve('mock').name).toBe('mock');
  });

  it('rejects unknown names with bad_request and duplicates loudly', () => {
    const r = new ProviderRegistry().register(named('mock'));
    expect(r.get('nope')).toBeUndefined();
    expect(() => r.require('nope')).toThrow(expect.objectContaining({ code: 'bad_request' }));
    expect(() => r.setDefault('nope')).toThrow(expect.objectContaining({ code: 'bad_request' }));
    expect(() => r.register(named('mock'))).toThrow(/twice/);
    expect(() => new ProviderRegistry().defaultName).toThrow(/no provider/);
  });

  it('closes every provider', async () => {
    const closed: string[] = [];
    const r = new ProviderRegistry().register(named('a', closed)).register(named('b', closed));
    await r.closeAll();
    expect(closed.sort()).toEqual(['a', 'b']);
  });
});
