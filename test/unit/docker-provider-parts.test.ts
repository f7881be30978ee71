import { describe, expect, it } from 'vitest';
import { isStacyError } from '../../src/core/errors.js';
import { defaultConfig } from '../../src/config/load.js';
import { dockerConnectionOptions, redactDockerConfig } from '../../src/providers/docker/config.js';

const DOCKER_DEFAULTS = defaultConfig().providers.docker;
import { demuxDockerStream, type DemuxedChunk } from '../../src/providers/docker/demux.js';
import { imageReference, normalizeRegistry, registryOf, runtimeIsolation } from '../../src/providers/docker/provider.js';

const frame = (type: number, payload: string | Buffer): Buffer => {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUInt32BE(data.length, 4);
  return Buffer.concat([header, data]);
};

async function demux(chunks: Buffer[]): Promise<DemuxedChunk[]> {
  const out: DemuxedChunk[] = [];
  for await (const c of demuxDockerStream(chunks)) out.push(c);
  return out;
}

describe('demuxDockerStream', () => {
  it('splits frames into stdout and stderr', async () => {
    const out = await demux([Buffer.concat([frame(1, 'out'), frame(2, 'err'), frame(1, 'more')])]);
    expect(out.map((c) => [c.stream, c.data.toString()])).toEqual([
      ['stdout', 'out'],
      ['stderr', 'err'],
      ['stdout', 'more'],
    ]);
  });

  it('reassembles frames and headers split across chunks at every offset', async () => {
    const whole = Buffer.concat([frame(1, 'hello world'), frame(2, Buffer.from([0, 1, 2, 255])), frame(1, '')]);
    for (let cut = 1; cut < whole.length; cut++) {
      const out = await demux([whole.subarray(0, cut), whole.subarray(cut)]);
      expect(out.map((c) => c.stream)).toEqual(['stdout', 'stderr']);
      expect(out[0]?.data.toString()).toBe('hello world');
      expect(out[1]?.data).toEqual(Buffer.from([0, 1, 2, 255]));
    }
  });

  it('rejects a truncated stream and an unknown frame type', async () => {
    await expect(demux([frame(1, 'abc').subarray(0, 10)])).rejects.toThrow(/truncated/);
    await expect(demux([frame(7, 'x')])).rejects.toThrow(/invalid frame type/);
  });
});

describe('docker config', () => {
  it('redacts registry credentials', () => {
    const cfg = { ...DOCKER_DEFAULTS, registryAuth: { username: 'bob', password: 'hunter2', serveraddress: 'registry.example:5000' } };
    const shown = JSON.stringify(redactDockerConfig(cfg));
    expect(shown).not.toContain('hunter2');
    expect(shown).not.toContain('bob');
    expect(shown).toContain('registry.example:5000');
    expect(redactDockerConfig(DOCKER_DEFAULTS).registryAuth).toBeNull();
  });

  it('parses socket paths and tcp URLs', () => {
    expect(dockerConnectionOptions('/var/run/docker.sock')).toEqual({ socketPath: '/var/run/docker.sock' });
    expect(dockerConnectionOptions('unix:///run/d.sock')).toEqual({ socketPath: '/run/d.sock' });
    expect(dockerConnectionOptions('tcp://127.0.0.1:2375')).toEqual({ protocol: 'http', host: '127.0.0.1', port: 2375 });
    expect(dockerConnectionOptions('https://docker.internal')).toEqual({ protocol: 'https', host: 'docker.internal', port: 2376 });
    for (const bad of ['', 'docker.sock', 'ftp://x:1']) {
      let err: unknown;
      try {
        dockerConnectionOptions(bad);
      } catch (e) {
        err = e;
      }
      expect(isStacyError(err, 'bad_request'), bad).toBe(true);
    }
  });
});

describe('imageReference', () => {
  it('defaults the tag and does not mistake a registry port for one', () => {
    expect(imageReference('busybox')).toEqual({ repo: 'busybox', tag: 'latest', ref: 'busybox:latest' });
    expect(imageReference('python:3')).toEqual({ repo: 'python', tag: '3', ref: 'python:3' });
    expect(imageReference('127.0.0.1:5000/a/b')).toEqual({ repo: '127.0.0.1:5000/a/b', tag: 'latest', ref: '127.0.0.1:5000/a/b:latest' });
    expect(imageReference('127.0.0.1:5000/a/b:v1').tag).toBe('v1');
    expect(imageReference('busybox@sha256:abc').ref).toBe('busybox@sha256:abc');
  });
});

describe('registryOf / normalizeRegistry', () => {
  it('tells which registry an image pulls from, so credentials only go there', () => {
    expect(registryOf('python:3')).toBe('docker.io');
    expect(registryOf('library/python')).toBe('docker.io');
    expect(registryOf('ghcr.io/org/img:1')).toBe('ghcr.io');
    expect(registryOf('127.0.0.1:5000/a/b')).toBe('127.0.0.1:5000');
    expect(registryOf('localhost/a')).toBe('localhost');
    expect(normalizeRegistry('https://index.docker.io/v1/')).toBe('docker.io');
    expect(normalizeRegistry('')).toBe('docker.io');
    expect(normalizeRegistry('Registry.Example.com:5000')).toBe('registry.example.com:5000');
    expect(normalizeRegistry('https://ghcr.io/')).toBe('ghcr.io');
  });
});

describe('runtimeIsolation', () => {
  it('claims vm only for VM-backed runtimes', () => {
    for (const r of ['runc', 'io.containerd.runc.v2', 'runsc', 'crun']) expect(runtimeIsolation(r)).toBe('container');
    for (const r of ['kata-runtime', 'kata-qemu', 'io.containerd.kata.v2', 'kata-fc']) expect(runtimeIsolation(r)).toBe('vm');
  });
});
