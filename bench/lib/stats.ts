/** Timing and percentile helpers shared by the benchmarks. */

/** Monotonic milliseconds. */
export const now = (): number => Number(process.hrtime.bigint()) / 1e6;

export function round(x: number): number {
  return Math.round(x * 100) / 100;
}

/** Nearest-rank percentile `p` (0–100); NaN for no samples. */
export function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return round(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!);
}

export function summary(xs: number[]): { p50: number; p99: number; n: number } {
  return { p50: pct(xs, 50), p99: pct(xs, 99), n: xs.length };
}
