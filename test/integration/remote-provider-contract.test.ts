/**
 * The provider contract, run through the remote hop: RemoteProvider → HTTP /rpc → WorkerNode →
 * MockProvider. Passing it means a remote worker's runtime is indistinguishable from a local one
 * for every Provider operation.
 */
import { providerContract } from '../contracts/provider.contract.js';
import { RemoteProvider, RemoteWorkerClient } from '../../src/worker/rpc-client.js';
import { SIGNING_KEY, TestLeases, startTestWorker } from './worker-harness.js';

providerContract('mock', async () => {
  const worker = await startTestWorker();
  const client = new RemoteWorkerClient({ workerId: worker.workerId, url: worker.url, credential: { kind: 'signing_key', keys: [SIGNING_KEY] } });
  const provider = await RemoteProvider.connect(client, 'mock', new TestLeases(worker.workerId).supplier);
  return {
    provider,
    image: 'host',
    cleanup: async () => {
      await client.close();
      await worker.stop();
    },
  };
});
