import { describe, expect, it } from 'vitest';
import { allocateAddress, gatewayOf, ipToString, netNames, parseSubnet } from '../../src/providers/oci/network.js';
import { mergeEnv, shellQuote } from '../../src/providers/oci/provider.js';
import { DEFAULT_CAPS, DENIED_SYSCALLS, buildRuntimeSpec, seccompProfile, type SpecInput } from '../../src/providers/oci/spec.js';

const input: SpecInput = {
  sandboxId: 'sb-01234567',
  uid: 1000,
  gid: 1000,
  env: ['PATH=/bin'],
  memoryMb: 512,
  vcpus: 1.5,
  pidsLimit: 256,
  caps: DEFAULT_CAPS,
  readOnlyRootfs: false,
  busyboxHostPath: '/bin/busybox',
  workspaceHostPath: '/b/workspace',
  hostsHostPath: '/b/hosts',
  hostnameHostPath: '/b/hostname',
  cgroupsPath: '/stacyvm/x',
  annotations: { 'io.stacyvm.sandbox-id': 'sb-01234567' },
};

type Spec = {
  process: { user: { uid: number }; capabilities: Record<string, string[]>; noNewPrivileges: boolean; args: string[] };
  root: { readonly: boolean };
  hostname: string;
  mounts: { destination: string; options?: string[] }[];
  linux: {
    namespaces: { type: string; path?: string }[];
    resources: { memory: { limit: number }; cpu: { quota: number; period: number }; pids: { limit: number } };
    maskedPaths: string[];
    readonlyPaths: string[];
  };
};

describe('oci runtime spec', () => {
  it('encodes the security defaults', () => {
    const s = buildRuntimeSpec(input) as unknown as Spec;
    expect(s.process.user.uid).toBe(1000);
    expect(s.process.noNewPrivileges).toBe(true);
    expect(s.process.capabilities.effective).toEqual([]);
    expect(s.process.capabilities.bounding).toEqual(DEFAULT_CAPS);
    expect(s.process.capabilities.bounding).not.toContain('CAP_SYS_ADMIN');
    expect(s.linux.namespaces.map((n) => n.type).sort()).toEqual(['cgroup', 'ipc', 'mount', 'network', 'pid', 'uts']);
    expect(s.linux.resources).toMatchObject({ memory: { limit: 512 * 1024 * 1024 }, cpu: { quota: 150_000, period: 100_000 }, pids: { limit: 256 } });
    expect(s.linux.maskedPaths).toContain('/proc/kcore');
    expect(s.linux.maskedPaths).toContain('/sys/firmware');
    expect(s.linux.readonlyPaths).toContain('/proc/sysrq-trigger');
    expect(s.hostname).toBe('sb-01234567');
    expect(s.mounts.find((m) => m.destination === '/.stacyvm/busybox')?.options).toContain('ro');
    expect(s.root.readonly).toBe(false);
    expect(s.mounts.some((m) => m.destination === '/tmp')).toBe(false);
  });

  it('gives root the capability set, mounts /tmp for a read-only root, joins a given netns, 0 pids = unlimited', () => {
    const s = buildRuntimeSpec({ ...input, uid: 0, readOnlyRootfs: true, netnsPath: '/run/netns/n', pidsLimit: 0 }) as unknown as Spec;
    expect(s.process.capabilities.effective).toEqual(DEFAULT_CAPS);
    expect(s.root.readonly).toBe(true);
    expect(s.mounts.some((m) => m.destination === '/tmp')).toBe(true);
    expect(s.linux.namespaces.find((n) => n.type === 'network')?.path).toBe('/run/netns/n');
    expect(s.linux.resources.pids.limit).toBe(-1);
  });

  it('denies the dangerous syscalls and namespace-creating clone flags', () => {
    const p = seccompProfile() as { defaultAction: string; syscalls: { names: string[]; action: string; args?: { value: number }[] }[] };
    expect(p.defaultAction).toBe('SCMP_ACT_ALLOW');
    for (const sc of ['keyctl', 'add_key', 'request_key', 'mount', 'umount2', 'pivot_root', 'swapon', 'reboot', 'kexec_load', 'init_module', 'finit_module', 'delete_module', 'ptrace', 'bpf', 'perf_event_open', 'unshare', 'setns', 'open_by_handle_at', 'name_to_handle_at', 'userfaultfd']) {
      expect(DENIED_SYSCALLS).toContain(sc);
    }
    const cloneRules = p.syscalls.filter((r) => r.names.includes('clone'));
    expect(cloneRules.map((r) => r.args?.[0]?.value)).toContain(0x10000000); // CLONE_NEWUSER
  });
});

describe('oci helpers', () => {
  it('merges env with later keys winning and rejects bad names', () => {
    expect(mergeEnv(['A=1', 'B=2'], { B: '3', C: 'x=y' })).toEqual(['A=1', 'B=3', 'C=x=y']);
    expect(() => mergeEnv([], { 'BAD-NAME': 'x' })).toThrow();
  });

  it('shell-quotes arguments', () => {
    expect(shellQuote("it's $(x)")).toBe(`'it'\\''s $(x)'`);
  });

  it('allocates bridge addresses after the gateway', () => {
    const s = parseSubnet('10.88.0.0/16');
    expect(ipToString(gatewayOf(s))).toBe('10.88.0.1');
    expect(allocateAddress(s, new Set())).toBe('10.88.0.2');
    expect(allocateAddress(s, new Set(['10.88.0.2', '10.88.0.3']))).toBe('10.88.0.4');
    expect(() => allocateAddress(parseSubnet('10.0.0.0/29'), new Set(['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6']))).toThrow();
    expect(() => parseSubnet('10.0.0.0')).toThrow();
    const n = netNames('sb-01234567-abcdef');
    expect(n.hostIf.length).toBeLessThanOrEqual(15);
    expect(n.peerIf.length).toBeLessThanOrEqual(15);
  });
});
