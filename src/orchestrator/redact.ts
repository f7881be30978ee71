const SECRET_KEY = /(key|token|password|secret|dsn)$/i;
const REDACTED = '[redacted]';

/**
 * Returns a deep copy of a configuration object with secret-looking values replaced, so
 * diagnostics can show the effective configuration without leaking credentials. Empty values
 * stay visible: "not configured" is useful to an operator and reveals nothing.
 */
export function redactSecrets(value: unknown, key = ''): unknown {
  if (SECRET_KEY.test(key) || /keys$|tokens$|token_ids$|tokenids$/i.test(key)) return redactLeaf(value);
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = redactSecrets(v, k);
    return out;
  }
  return value;
}

function redactLeaf(value: unknown): unknown {
  if (value === null || value === undefined || value === '') return value;
  if (Array.isArray(value)) return value.map(() => REDACTED);
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value)) out[k] = REDACTED;
    return out;
  }
  return REDACTED;
}
