import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OciProvider } from '../../src/providers/oci/provider.js';
import { gatewayOf, ipToString, parseSubnet, removeBridge } from '../../src/providers/oci/network.js';
import { hasBinary, hostSupports } from '../host.js';
import { createOciFixture, ociSupported, run, spawnSpec, type OciFixture } from './oci-fixture.js';

const supported = ociSupported('oci networking') && hostSupports('oci networking', hasBinary('ip'), hasBinary('iptables'));

describe.skipIf(!supported)('oci networking', () => {
  const bridge = `svt${randomBytes(3).toString('hex')}`;
  const subnet = `10.${200 + (process.pid % 50)}.${randomBytes(1)[0]}.0/24`;
  const gateway = ipToString(gatewayOf(parseSubnet(subnet)));
  let fx: OciFixture;
  let bridged: OciProvider;
  let server: Server;
  let port = 0;
  let noneId: string;
  let a: string;
  let b: string;

  beforeAll(async () => {
    fx = await createOciFixture({ bridgeName: bridge, bridgeSubnet: subnet });
    bridged = fx.makeProvider({ networkMode: 'bridge' });
    a = (await bridged.spawn(spawnSpec())).runtimeId;
    b = (await bridged.spawn(spawnSpec())).runtimeId;
    noneId = (await fx.provider.spawn(spawnSpec())).runtimeId;
    server = createServer((_req, res) => res.end('hello from the host\n'));
    await new Promise<void>((resolve) => server.listen(0, gateway, resolve));
    const addr = server.address();
    port = typeof addr === 'object' && addr ? addr.port : 0;
  });
  afterAll(async () => {
    server?.close();
    await fx?.cleanup();
    await removeBridge(bridge, subnet);
  });

  it('bridge sandboxes get their own address and reach a server on the bridge address', async () => {
    const r = await run(bridged, a, { command: `timeout 5 wget -q -O - http://${gateway}:${port}/` });
    expect(r.stdout).toBe('hello from the host\n');
    const addrA = (await run(bridged, a, { command: "ip -4 -o addr show eth0 | awk '{print $4}'" })).stdout.trim();
    const addrB = (await run(bridged, b, { command: "ip -4 -o addr show eth0 | awk '{print $4}'" })).stdout.trim();
    expect(addrA).toMatch(/^10\./);
    expect(addrA).not.toBe(addrB);
  });

  it('bridge sandboxes cannot reach each other', async () => {
    await run(bridged, a, { command: 'echo hi > /workspace/index.html; httpd -p 8080 -h /workspace; for i in 1 2 3 4 5 6 7 8 9 10; do nc -z 127.0.0.1 8080 && break; sleep 0.2; done' });
    const addrA = (await run(bridged, a, { command: "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1" })).stdout.trim();
    expect((await run(bridged, a, { command: 'timeout 3 wget -q -O - http://127.0.0.1:8080/' })).stdout).toBe('hi\n');
    // the host reaches A's server on its bridge address, so B's failure is the port isolation
    expect(await (await fetch(`http://${addrA}:8080/`)).text()).toBe('hi\n');
    const fromB = await run(bridged, b, { command: `timeout 3 wget -q -O - http://${addrA}:8080/` });
    expect(fromB.exitCode).not.toBe(0);
  });

  it('network mode none has no route out, not even to the bridge address', async () => {
    const r = await run(fx.provider, noneId, { command: `timeout 3 wget -q -O - http://${gateway}:${port}/` });
    expect(r.exitCode).not.toBe(0);
    const route = await run(fx.provider, noneId, { command: `ip route get ${gateway}` });
    expect(route.stderr).toMatch(/unreachable/i);
  });

  it('destroy removes the namespace and the host veth', async () => {
    const before = (await run(fx.provider, noneId, { command: 'true' })).exitCode;
    expect(before).toBe(0);
    const c = (await bridged.spawn(spawnSpec())).runtimeId;
    await bridged.destroy(c);
    const { existsSync } = await import('node:fs');
    expect(existsSync(`/run/netns/stacyvm-${c}`)).toBe(false);
  });
});
