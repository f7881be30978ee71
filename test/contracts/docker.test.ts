/**
 * The provider contract suite against the docker provider on a real dockerd
 * (scripts/test-services.sh docker), in the busybox test image built by the fixture.
 */
import { DockerProvider } from '../../src/providers/docker/index.js';
import { TEST_IMAGE, busyboxStaticProbe, dockerSocketProbe, readyTestDocker, testDockerConfig } from '../fixtures/docker.js';
import { hostSupports } from '../host.js';
import { providerContract } from './provider.contract.js';

providerContract(
  'docker',
  async () => {
    await readyTestDocker();
    const provider = new DockerProvider({ config: testDockerConfig() });
    return { provider, image: TEST_IMAGE, cleanup: () => provider.close() };
  },
  { skip: !hostSupports('docker provider contract', dockerSocketProbe, busyboxStaticProbe) },
);
