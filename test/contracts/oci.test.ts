import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageStore } from '../../src/images/store.js';
import { OciProvider } from '../../src/providers/oci/provider.js';
import { hasBinary, hostSupports, isRoot } from '../host.js';
import { providerContract } from './provider.contract.js';

const supported = hostSupports('oci provider contract', isRoot, hasBinary('runc'), hasBinary('busybox'), hasBinary('mount'));

providerContract(
  'oci',
  async () => {
    const root = await mkdtemp(join(tmpdir(), 'stacyvm-oci-contract-'));
    const images = new ImageStore(join(root, 'images'));
    await images.buildBusybox('busybox');
    const provider = new OciProvider({
      images,
      config: {
        enabled: true,
        runcPath: 'runc',
        root: join(root, 'oci'),
        networkMode: 'none',
        bridgeName: 'stacyvm0',
        bridgeSubnet: '10.88.0.0/16',
        readOnlyRootfs: false,
        user: '1000:1000',
        pidsLimit: 256,
        addedCaps: [],
      },
    });
    return {
      provider,
      image: 'busybox',
      cleanup: async () => {
        for (const rt of await provider.inventory()) await provider.destroy(rt.runtimeId);
        await rm(root, { recursive: true, force: true });
      },
    };
  },
  { skip: !supported },
);
