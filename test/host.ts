/**
 * Gatekeeping for tests that need host features (root, runc, dockerd, PostgreSQL). Locally a
 * missing feature skips the suite with a printed reason; under CI=true it fails instead,
 * because CI installs everything and nothing may skip there.
 */
import { execFileSync } from 'node:child_process';

export const inCI = process.env.CI === 'true';

/** Returns null when usable, or the reason it is not. */
export type HostProbe = () => string | null;

export const isRoot: HostProbe = () => (process.getuid?.() === 0 ? null : 'not running as root');

export function hasBinary(name: string): HostProbe {
  return () => {
    try {
      execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
      return null;
    } catch {
      return `${name} is not installed`;
    }
  };
}

/**
 * Evaluates probes for a suite. Returns `true` when the suite should run. In CI a failing probe
 * throws so the run goes red; elsewhere it prints the reason and the caller skips.
 */
export function hostSupports(suite: string, ...probes: HostProbe[]): boolean {
  for (const probe of probes) {
    const reason = probe();
    if (reason !== null) {
      if (inCI) throw new Error(`${suite}: required host feature missing in CI: ${reason}`);
      console.warn(`[skip] ${suite}: ${reason}`);
      return false;
    }
  }
  return true;
}
