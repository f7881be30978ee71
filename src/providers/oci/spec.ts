/**
 * The OCI runtime config for a sandbox, and the security defaults it encodes. Everything here
 * is pure data so it can be unit-tested and documented (docs/providers-oci.md).
 */

/** Where the host's static busybox is bind-mounted read-only; PID 1 and file operations use it. */
export const TOOLS_DIR = '/.stacyvm';
export const BUSYBOX_IN_CONTAINER = `${TOOLS_DIR}/busybox`;

/**
 * Capabilities kept in the bounding set. Processes of the non-root sandbox user (commands and file
 * operations) get none of them effective; they matter only for a root-configured sandbox, where
 * this set lets ordinary software (apt, chown, a server on port 80) work.
 */
export const DEFAULT_CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_NET_BIND_SERVICE',
];

export const MASKED_PATHS = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

export const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/**
 * Syscalls refused with EPERM. The profile is a deny-list on top of the capability drop: it
 * removes kernel attack surface that is reachable without capabilities (keyrings, bpf, perf,
 * userfaultfd, io_uring, user namespaces) and belts-and-braces the privileged ones.
 */
export const DENIED_SYSCALLS = [
  'acct', 'add_key', 'bpf', 'clock_adjtime', 'clock_settime', 'create_module', 'delete_module',
  'finit_module', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'get_kernel_syms',
  'init_module', 'io_uring_enter', 'io_uring_register', 'io_uring_setup', 'ioperm', 'iopl', 'kcmp',
  'kexec_file_load', 'kexec_load', 'keyctl', 'lookup_dcookie', 'mount', 'mount_setattr',
  'move_mount', 'name_to_handle_at', 'nfsservctl', 'open_by_handle_at', 'open_tree', 'perf_event_open',
  'pivot_root', 'process_vm_readv', 'process_vm_writev', 'ptrace', 'query_module', 'quotactl',
  'reboot', 'request_key', 'setns', 'settimeofday', 'stime', 'swapoff', 'swapon',
  'syslog', '_sysctl', 'umount', 'umount2', 'unshare', 'uselib', 'userfaultfd', 'ustat', 'vm86',
  'vm86old',
];

/** clone() flags that create namespaces (CLONE_NEWNS … CLONE_NEWNET, CLONE_NEWCGROUP, CLONE_NEWTIME). */
const CLONE_NS_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080];

const EPERM = 1;
const ENOSYS = 38;

export function seccompProfile(): Record<string, unknown> {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32', 'SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'],
    syscalls: [
      { names: DENIED_SYSCALLS, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      // clone3 passes flags in memory seccomp cannot read: make libc fall back to clone().
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      ...CLONE_NS_FLAGS.map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      })),
    ],
  };
}

export interface SpecInput {
  sandboxId: string;
  uid: number;
  gid: number;
  env: string[];
  memoryMb: number;
  vcpus: number;
  pidsLimit: number;
  caps: string[];
  readOnlyRootfs: boolean;
  busyboxHostPath: string;
  workspaceHostPath: string;
  hostsHostPath: string;
  hostnameHostPath: string;
  cgroupsPath: string;
  annotations: Record<string, string>;
  /** Network namespace to join (bridge mode); absent = a fresh one with only loopback. */
  netnsPath?: string;
  resolvConfHostPath?: string;
}

/**
 * PID 1: the host busybox's shell waiting on a sleep forever. ash's wait reaps every child
 * (waitpid(-1)), so orphans of exec'd commands never linger as zombies; TERM ends it cleanly.
 */
export const INIT_SCRIPT =
  `trap 'echo "stacyvm init: stopping"; exit 0' TERM INT; echo "stacyvm init: sandbox $STACYVM_SANDBOX_ID up"; ` +
  `while :; do ${BUSYBOX_IN_CONTAINER} sleep 2147483647 & wait $!; done`;

export function capabilitySet(caps: string[], effective: boolean): Record<string, string[]> {
  return {
    bounding: caps,
    effective: effective ? caps : [],
    permitted: effective ? caps : [],
    inheritable: [],
    ambient: [],
  };
}

/** The complete config.json for a sandbox bundle whose rootfs is `<bundle>/rootfs`. */
export function buildRuntimeSpec(i: SpecInput): Record<string, unknown> {
  const mounts: Record<string, unknown>[] = [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
    { destination: BUSYBOX_IN_CONTAINER, type: 'bind', source: i.busyboxHostPath, options: ['rbind', 'ro', 'nosuid', 'nodev'] },
    { destination: '/workspace', type: 'bind', source: i.workspaceHostPath, options: ['rbind', 'rw', 'nosuid', 'nodev'] },
    { destination: '/etc/hosts', type: 'bind', source: i.hostsHostPath, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] },
    { destination: '/etc/hostname', type: 'bind', source: i.hostnameHostPath, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] },
  ];
  if (i.resolvConfHostPath) {
    mounts.push({ destination: '/etc/resolv.conf', type: 'bind', source: i.resolvConfHostPath, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] });
  }
  if (i.readOnlyRootfs) {
    mounts.push({ destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', 'size=262144k'] });
  }
  const namespaces: Record<string, string>[] = [
    { type: 'pid' },
    { type: 'ipc' },
    { type: 'uts' },
    { type: 'mount' },
    { type: 'cgroup' },
    i.netnsPath ? { type: 'network', path: i.netnsPath } : { type: 'network' },
  ];
  const memoryBytes = i.memoryMb * 1024 * 1024;
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: i.uid, gid: i.gid },
      args: [BUSYBOX_IN_CONTAINER, 'sh', '-c', INIT_SCRIPT],
      env: [...i.env, `STACYVM_SANDBOX_ID=${i.sandboxId}`],
      cwd: '/',
      capabilities: capabilitySet(i.caps, i.uid === 0),
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }],
      noNewPrivileges: true,
    },
    root: { path: 'rootfs', readonly: i.readOnlyRootfs },
    hostname: i.sandboxId,
    mounts,
    annotations: i.annotations,
    linux: {
      namespaces,
      cgroupsPath: i.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: memoryBytes },
        cpu: { quota: Math.max(1000, Math.round(i.vcpus * 100_000)), period: 100_000 },
        // 0 means unlimited in config; runc reads a non-positive limit the same way
        pids: { limit: i.pidsLimit > 0 ? i.pidsLimit : -1 },
      },
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      seccomp: seccompProfile(),
    },
  };
}
