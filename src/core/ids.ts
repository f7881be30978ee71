import { randomBytes } from 'node:crypto';

/** Sandbox ids are `sb-` + 8 hex characters, matching StacyVM's wire format. */
export function newSandboxId(): string {
  return `sb-${randomBytes(4).toString('hex')}`;
}

export const SANDBOX_ID_PATTERN = /^sb-[0-9a-f]{8}$/;

/** Opaque request/event ids. */
export function newId(prefix: string): string {
  return `${prefix}-${randomBytes(8).toString('hex')}`;
}
