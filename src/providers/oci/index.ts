import { join } from 'node:path';
import type { Config } from '../../config/types.js';
import { ImageStore } from '../../images/store.js';
import { OciProvider } from './provider.js';

export { OciProvider } from './provider.js';

/**
 * The oci provider as the server runs it: images from `<data_dir>/images`, bundles and runc
 * state under `providers.oci.root`, healthy only when the default image is installed.
 */
export function createOciProvider(config: Config): OciProvider {
  return new OciProvider({
    config: config.providers.oci,
    images: new ImageStore(join(config.dataDir, 'images')),
    defaultImage: config.defaults.image,
  });
}
