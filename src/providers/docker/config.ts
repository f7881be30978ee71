import type { DockerOptions } from 'dockerode';
import type { DockerProviderConfig } from '../../config/types.js';
import { badRequest } from '../../core/errors.js';

const REDACTED = '[redacted]';

/**
 * The config as it may be shown by the API, logs and diagnostics: registry credentials are
 * replaced, everything else is copied so callers cannot mutate the live config.
 */
export function redactDockerConfig(config: DockerProviderConfig): Record<string, unknown> {
  return {
    enabled: config.enabled,
    socket: config.socket,
    runtime: config.runtime,
    networkMode: config.networkMode,
    readOnlyRootfs: config.readOnlyRootfs,
    seccompProfile: config.seccompProfile,
    droppedCaps: [...config.droppedCaps],
    addedCaps: [...config.addedCaps],
    pidsLimit: config.pidsLimit,
    registryAuth:
      config.registryAuth === null
        ? null
        : { serveraddress: config.registryAuth.serveraddress, username: REDACTED, password: REDACTED },
  };
}

/**
 * Turns `socket` into dockerode connection options: a unix socket path (optionally `unix://`),
 * or `tcp://host:port` / `http(s)://host:port` for a daemon listening on TCP.
 */
export function dockerConnectionOptions(socket: string): DockerOptions {
  if (socket.length === 0) throw badRequest('providers.docker.socket: required');
  if (socket.startsWith('unix://')) return { socketPath: socket.slice('unix://'.length) };
  if (socket.startsWith('/')) return { socketPath: socket };
  let url: URL;
  try {
    url = new URL(socket);
  } catch {
    throw badRequest(`providers.docker.socket: ${JSON.stringify(socket)} is neither a unix socket path nor a tcp:// URL`);
  }
  if (!['tcp:', 'http:', 'https:'].includes(url.protocol) || url.hostname === '') {
    throw badRequest(`providers.docker.socket: unsupported scheme in ${JSON.stringify(socket)} (use a path, unix://, tcp:// or https://)`);
  }
  const protocol = url.protocol === 'https:' ? 'https' : 'http';
  const port = url.port === '' ? (protocol === 'https' ? 2376 : 2375) : Number(url.port);
  return { protocol, host: url.hostname, port };
}
