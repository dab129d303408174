/**
 * DataLoader worker thread (started by ./loader.ts): rebuilds the transform from its spec and the
 * shared in-memory dataset (if any), then answers batch requests with transferred buffers.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { buildBatch, unpackSamples } from './batch.js';
import { InMemoryDataset, type Sample } from './dataset.js';
import type { WorkerInit, WorkerReply, WorkerRequest } from './loader.js';
import { transformFromSpec } from './transforms.js';

const init = workerData as WorkerInit;
const port = parentPort!;

const ready = (async () => ({
  transform: init.transform !== null ? await transformFromSpec(init.transform) : null,
  dataset: init.shared !== null ? InMemoryDataset.fromShared(init.shared) : null,
}))();
// A failed start is reported with each request (below); keep it from being an unhandled rejection.
ready.catch(() => {});

port.on('message', async (req: WorkerRequest) => {
  let reply: WorkerReply;
  const transfer: ArrayBuffer[] = [];
  try {
    const { transform, dataset } = await ready;
    let sample: (k: number) => Sample;
    if (req.packed !== undefined) {
      const samples = unpackSamples(req.packed);
      sample = (k) => samples[k]!;
    } else {
      const src = req.source!;
      sample = (k) => dataset!.get(src[k]!);
    }
    const b = buildBatch(sample, req.indices, req.seed, req.epoch, transform);
    reply = { id: req.id, x: b.x, shape: b.shape, y: b.y };
    transfer.push(b.x.buffer as ArrayBuffer, b.y.buffer as ArrayBuffer);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    reply = { id: req.id, error: { name: err.name, message: err.message, ...(err.stack !== undefined ? { stack: err.stack } : {}) } };
  }
  port.postMessage(reply, transfer);
});
