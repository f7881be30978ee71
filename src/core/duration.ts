/**
 * Go-style durations ("500ms", "30s", "1h30m") because StacyVM's wire API and SDKs speak them.
 * Internally every duration is a number of milliseconds.
 */
import { badRequest } from './errors.js';

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  'µs': 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

const PART = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/;

/** Parses a non-negative Go duration string to milliseconds; throws bad_request otherwise. */
export function parseDuration(input: string, field = 'duration'): number {
  if (typeof input !== 'string' || input.length === 0) throw badRequest(`${field}: expected a duration like "30s" or "1h30m"`);
  if (input === '0') return 0;
  let rest = input;
  let total = 0;
  while (rest.length > 0) {
    const m = PART.exec(rest);
    if (!m) throw badRequest(`${field}: invalid duration ${JSON.stringify(input)} (expected e.g. "500ms", "30s", "1h30m")`);
    total += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
    rest = rest.slice(m[0].length);
  }
  if (!Number.isFinite(total)) throw badRequest(`${field}: duration ${JSON.stringify(input)} is out of range`);
  return Math.round(total);
}

/** Formats milliseconds the way Go's time.Duration.String does: "2h0m0s", "1m30s", "1.5s", "500ms", "0s". */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  const neg = ms < 0;
  let v = Math.abs(ms);
  let out: string;
  if (v < 1000) {
    out = `${trimFloat(v)}ms`;
  } else {
    const h = Math.floor(v / 3_600_000);
    v -= h * 3_600_000;
    const m = Math.floor(v / 60_000);
    v -= m * 60_000;
    const s = `${trimFloat(v / 1000)}s`;
    out = h > 0 ? `${h}h${m}m${s}` : m > 0 ? `${m}m${s}` : s;
  }
  return neg ? `-${out}` : out;
}

function trimFloat(n: number): string {
  return String(Number(n.toFixed(9)));
}
