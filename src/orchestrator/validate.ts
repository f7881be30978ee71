import { formatDuration } from '../core/duration.js';
import { badRequest, StacyError } from '../core/errors.js';
import type { QuotaRecord, TemplateRecord } from '../core/types.js';
import type { Config } from '../config/types.js';
import type { Caller, SpawnRequest, TemplateInput } from './service.js';

/** A spawn request with every default applied and every bound checked. */
export interface ResolvedSpawn {
  image: string;
  provider: string;
  template: string | null;
  memoryMb: number;
  vcpus: number;
  ttlMs: number;
  ownerId: string | null;
  metadata: Record<string, string>;
  env: Record<string, string>;
  networkMode: string | undefined;
}

const OWNER_FORBIDDEN = /[\s\p{Cc}/\\]/u;

/** Owner ids follow the X-User-ID rules: trimmed, ≤128 chars, no whitespace, control chars or path separators. */
export function checkOwnerId(ownerId: string, field = 'owner_id'): string {
  if (ownerId.length === 0) throw badRequest(`${field}: must not be empty`);
  if (ownerId.length > 128) throw badRequest(`${field}: longer than 128 characters`);
  if (OWNER_FORBIDDEN.test(ownerId)) throw badRequest(`${field}: must not contain whitespace, control characters or path separators`);
  return ownerId;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Environment variables must be representable in a process environment: no '=' or NUL in names, no NUL in values. */
export function checkEnv(env: Record<string, string>, field = 'env'): Record<string, string> {
  for (const [k, v] of Object.entries(env)) {
    if (!ENV_NAME.test(k)) throw badRequest(`${field}: invalid variable name ${JSON.stringify(k)}`);
    if (typeof v !== 'string' || v.includes('\0')) throw badRequest(`${field}.${k}: must be a string without NUL bytes`);
  }
  return env;
}

const MAX_METADATA_ENTRIES = 64;

/** Metadata is free-form but bounded, so one record cannot grow without limit. */
/** Metadata key that marks a warm-pool sandbox nobody has claimed yet; clients may not set it. */
export const POOLED_METADATA_KEY = 'stacyvm.pool';

/** True for a warm-pool sandbox that has not been claimed. */
export function isPooled(record: { metadata: Record<string, string> }): boolean {
  return Object.hasOwn(record.metadata, POOLED_METADATA_KEY);
}

function checkMetadata(metadata: Record<string, string>): Record<string, string> {
  const entries = Object.entries(metadata);
  if (Object.hasOwn(metadata, POOLED_METADATA_KEY)) throw badRequest(`metadata.${POOLED_METADATA_KEY}: reserved for the warm pool`);
  if (entries.length > MAX_METADATA_ENTRIES) throw badRequest(`metadata: at most ${MAX_METADATA_ENTRIES} entries`);
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > 128) throw badRequest('metadata: keys must be 1-128 characters');
    if (typeof v !== 'string' || v.length > 4096) throw badRequest(`metadata.${k}: must be a string of at most 4096 characters`);
  }
  return metadata;
}

const TEMPLATE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Template names are used in URL paths, so they stay within a safe alphabet. */
export function checkTemplateName(name: string): string {
  if (!TEMPLATE_NAME.test(name)) throw badRequest('name: 1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit');
  return name;
}

/** The owner a spawn is recorded under, enforcing that a non-admin user can only spawn for itself. */
export function resolveOwner(requested: string | undefined, caller: Caller): string | null {
  if (requested !== undefined) checkOwnerId(requested);
  if (caller.userId !== null && !caller.isAdmin && requested !== undefined && requested !== caller.userId) {
    throw new StacyError('forbidden', 'owner_id must match the calling user');
  }
  return requested ?? caller.userId ?? null;
}

function checkInt(value: number, field: string, min: number, max: number): number {
  if (!Number.isInteger(value)) throw badRequest(`${field}: must be an integer`);
  if (value < min || value > max) throw badRequest(`${field}: must be between ${min} and ${max} (got ${value})`);
  return value;
}

/** The effective maximum TTL for an owner: the configured maximum, lowered by the owner's quota. */
export function maxTtlFor(config: Config, quota: QuotaRecord | undefined): number {
  const q = quota?.maxTtlMs;
  return q !== null && q !== undefined && q > 0 ? Math.min(q, config.defaults.maxTtlMs) : config.defaults.maxTtlMs;
}

export function checkTtl(ttlMs: number, maxTtlMs: number, field = 'ttl'): number {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw badRequest(`${field}: must be a positive duration`);
  if (ttlMs > maxTtlMs) throw badRequest(`${field}: ${formatDuration(ttlMs)} exceeds the maximum TTL of ${formatDuration(maxTtlMs)}`);
  return ttlMs;
}

/**
 * Merges request ▸ template ▸ configured defaults and validates the result against the
 * configured maxima. `providerNames` are the providers this process can place: its own and,
 * for a control plane, those its registered workers advertise.
 */
export function resolveSpawn(input: {
  request: SpawnRequest;
  template: TemplateRecord | undefined;
  config: Config;
  defaultProvider: string;
  providerNames: readonly string[];
  ownerId: string | null;
  quota: QuotaRecord | undefined;
}): ResolvedSpawn {
  const { request, template, config } = input;
  const d = config.defaults;
  const provider = request.provider ?? template?.provider ?? input.defaultProvider;
  if (!input.providerNames.includes(provider)) {
    const known = input.providerNames.length > 0 ? input.providerNames.join(', ') : 'none';
    throw badRequest(`provider: ${JSON.stringify(provider)} is not enabled (enabled: ${known})`);
  }
  const image = request.image ?? template?.image ?? d.image;
  if (image.trim().length === 0 || image.length > 512) throw badRequest('image: must be a non-empty image reference');
  const memoryMb = checkInt(request.memoryMb ?? template?.memoryMb ?? d.memoryMb, 'memory_mb', 1, d.maxMemoryMb);
  const vcpus = checkInt(request.vcpus ?? template?.vcpus ?? d.vcpus, 'vcpus', 1, d.maxVcpus);
  const maxTtl = maxTtlFor(config, input.quota);
  // An explicit TTL above the maximum is an error; the server default quietly fits an owner's lower cap.
  const explicitTtl = request.ttlMs ?? template?.ttlMs ?? undefined;
  const ttlMs = explicitTtl !== undefined ? checkTtl(explicitTtl, maxTtl) : Math.min(d.ttlMs, maxTtl);
  return {
    image,
    provider,
    template: template?.name ?? null,
    memoryMb,
    vcpus,
    ttlMs,
    ownerId: input.ownerId,
    metadata: checkMetadata({ ...(template?.metadata ?? {}), ...(request.metadata ?? {}) }),
    env: checkEnv({ ...(template?.env ?? {}), ...(request.env ?? {}) }),
    networkMode: request.networkMode ?? template?.networkMode ?? undefined,
  };
}

/** Validates a template body against the same bounds a spawn would face. */
export function checkTemplate(input: TemplateInput, config: Config, providerNames: readonly string[]): void {
  checkTemplateName(input.name);
  const d = config.defaults;
  if (input.provider !== undefined && input.provider !== null && !providerNames.includes(input.provider)) {
    throw badRequest(`provider: ${JSON.stringify(input.provider)} is not enabled`);
  }
  if (input.image !== undefined && input.image !== null && input.image.trim().length === 0) throw badRequest('image: must not be empty');
  if (input.memoryMb !== undefined && input.memoryMb !== null) checkInt(input.memoryMb, 'memory_mb', 1, d.maxMemoryMb);
  if (input.vcpus !== undefined && input.vcpus !== null) checkInt(input.vcpus, 'vcpus', 1, d.maxVcpus);
  if (input.ttlMs !== undefined && input.ttlMs !== null) checkTtl(input.ttlMs, d.maxTtlMs);
  checkEnv(input.env ?? {});
  checkMetadata(input.metadata ?? {});
}
