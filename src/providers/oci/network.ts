import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { badRequest, providerError } from '../../core/errors.js';
import { runTool } from '../../images/proc.js';

/**
 * Bridge networking: a host bridge holding the subnet's first address as gateway, NAT for the
 * subnet, and per sandbox a named network namespace with one end of a veth pair (eth0, a fixed
 * address, default route via the gateway) and the other end on the bridge. Bridge ports are
 * `isolated`, so sandboxes reach the gateway and the outside but not each other.
 */
export interface Subnet {
  network: number;
  prefix: number;
}

export function parseSubnet(cidr: string): Subnet {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr.trim());
  if (!m) throw badRequest(`invalid subnet ${JSON.stringify(cidr)}`);
  const octets = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  if (octets.some((o) => o > 255) || prefix < 8 || prefix > 29) throw badRequest(`invalid subnet ${JSON.stringify(cidr)}`);
  const ip = ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { network: (ip & mask) >>> 0, prefix };
}

export function ipToString(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
}

/** The gateway (host) address of a subnet: its first host address. */
export function gatewayOf(s: Subnet): number {
  return s.network + 1;
}

/** Lowest free host address after the gateway, or throws `resource_limit`-like provider_error. */
export function allocateAddress(s: Subnet, used: Set<string>): string {
  const size = 2 ** (32 - s.prefix);
  for (let i = 2; i < size - 1; i++) {
    const ip = ipToString(s.network + i);
    if (!used.has(ip)) return ip;
  }
  throw providerError(`bridge subnet ${ipToString(s.network)}/${s.prefix} has no free address`);
}

/** Interface and namespace names derived from the runtime id (IFNAMSIZ is 16). */
export function netNames(runtimeId: string): { netns: string; hostIf: string; peerIf: string } {
  const h = createHash('sha256').update(runtimeId).digest('hex').slice(0, 10);
  return { netns: `stacyvm-${runtimeId}`, hostIf: `svh${h}`, peerIf: `svp${h}` };
}

const ip = (args: string[], allowFailure = false): ReturnType<typeof runTool> => runTool('ip', args, { allowFailure, timeoutMs: 30_000 });

/** Creates the bridge, gateway address and NAT rule unless they exist. Idempotent. */
export async function ensureBridge(bridge: string, cidr: string): Promise<void> {
  const s = parseSubnet(cidr);
  const subnet = `${ipToString(s.network)}/${s.prefix}`;
  const gw = `${ipToString(gatewayOf(s))}/${s.prefix}`;
  if ((await ip(['link', 'show', bridge], true)).code !== 0) {
    const add = await ip(['link', 'add', bridge, 'type', 'bridge'], true);
    if (add.code !== 0 && (await ip(['link', 'show', bridge], true)).code !== 0) {
      throw providerError(`cannot create bridge ${bridge}: ${add.stderr.trim()}`);
    }
  }
  const addrs = await ip(['-o', '-4', 'addr', 'show', 'dev', bridge]);
  if (!addrs.stdout.includes(` ${gw} `)) await ip(['addr', 'add', gw, 'dev', bridge], true);
  await ip(['link', 'set', bridge, 'up']);
  if ((await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim() !== '1') {
    await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n');
  }
  const rule = ['-t', 'nat', 'POSTROUTING', '-s', subnet, '!', '-o', bridge, '-j', 'MASQUERADE'];
  const check = await runTool('iptables', ['-w', ...rule.slice(0, 2), '-C', ...rule.slice(2)], { allowFailure: true });
  if (check.code !== 0) await runTool('iptables', ['-w', ...rule.slice(0, 2), '-A', ...rule.slice(2)]);
}

/** Removes the bridge and its NAT rule (used by tests and `stacyvm` maintenance). */
export async function removeBridge(bridge: string, cidr: string): Promise<void> {
  const s = parseSubnet(cidr);
  const subnet = `${ipToString(s.network)}/${s.prefix}`;
  await runTool('iptables', ['-w', '-t', 'nat', '-D', 'POSTROUTING', '-s', subnet, '!', '-o', bridge, '-j', 'MASQUERADE'], { allowFailure: true });
  await ip(['link', 'del', bridge], true);
}

/** Creates the sandbox's network namespace wired to the bridge; returns the netns path. */
export async function createSandboxNetwork(runtimeId: string, bridge: string, cidr: string, address: string): Promise<string> {
  const s = parseSubnet(cidr);
  const { netns, hostIf, peerIf } = netNames(runtimeId);
  const inNs = (args: string[]): ReturnType<typeof runTool> => ip(['-n', netns, ...args]);
  await ip(['netns', 'add', netns]);
  try {
    await ip(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', peerIf, 'netns', netns]);
    await ip(['link', 'set', hostIf, 'master', bridge]);
    await runTool('bridge', ['link', 'set', 'dev', hostIf, 'isolated', 'on'], { allowFailure: true });
    await ip(['link', 'set', hostIf, 'up']);
    await inNs(['link', 'set', peerIf, 'name', 'eth0']);
    await inNs(['addr', 'add', `${address}/${s.prefix}`, 'dev', 'eth0']);
    await inNs(['link', 'set', 'lo', 'up']);
    await inNs(['link', 'set', 'eth0', 'up']);
    await inNs(['route', 'add', 'default', 'via', ipToString(gatewayOf(s))]);
  } catch (err) {
    await removeSandboxNetwork(runtimeId);
    throw err;
  }
  return `/run/netns/${netns}`;
}

/** Idempotent: deleting the namespace destroys its veth end, which takes the host end along. */
export async function removeSandboxNetwork(runtimeId: string): Promise<void> {
  const { netns, hostIf } = netNames(runtimeId);
  if (!existsSync(`/run/netns/${netns}`)) return;
  await ip(['netns', 'del', netns], true);
  await ip(['link', 'del', hostIf], true);
}
