/**
 * The benchmark workloads: what each one runs, in one table that every engine (resnet-ts, the
 * ONNX Runtime worker, scripts/bench/torch_bench.py) reads, so all of them run the same thing.
 */
import { UsageError } from '../errors.js';

export interface Workload {
  /** Stable name, used by --only and as the JSON key ("resnet50-b1"). */
  id: string;
  title: string;
  kind: 'inference' | 'train';
  /** Architecture in the model registry (and torchvision's name, for the ImageNet ones). */
  arch: string;
  /** Input [C, H, W] of one image. */
  input: readonly [number, number, number];
  batch: number;
  numClasses: number;
  /** Left out of the default set (small smoke-test workloads). */
  hidden?: boolean;
}

/**
 * Training recipe of the "train" workloads (also in torch_bench.py): forward in train mode,
 * mean cross-entropy, backward, SGD with momentum and weight decay. Targets are random classes.
 */
export const TRAIN_RECIPE = { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 } as const;

export const WORKLOADS: readonly Workload[] = [
  { id: 'resnet18-b1', title: 'ResNet-18 inference, 3x224x224, batch 1', kind: 'inference', arch: 'resnet18', input: [3, 224, 224], batch: 1, numClasses: 1000 },
  { id: 'resnet18-b8', title: 'ResNet-18 inference, 3x224x224, batch 8', kind: 'inference', arch: 'resnet18', input: [3, 224, 224], batch: 8, numClasses: 1000 },
  { id: 'resnet50-b1', title: 'ResNet-50 inference, 3x224x224, batch 1', kind: 'inference', arch: 'resnet50', input: [3, 224, 224], batch: 1, numClasses: 1000 },
  { id: 'resnet50-b8', title: 'ResNet-50 inference, 3x224x224, batch 8', kind: 'inference', arch: 'resnet50', input: [3, 224, 224], batch: 8, numClasses: 1000 },
  {
    id: 'resnet18-train',
    title: 'ResNet-18 training step, 3x32x32, batch 64, 10 classes (SGD momentum 0.9, wd 5e-4, lr 0.1)',
    kind: 'train',
    arch: 'resnet18',
    input: [3, 32, 32],
    batch: 64,
    numClasses: 10,
  },
  {
    id: 'resnet20-train',
    title: 'CIFAR ResNet-20 training step, 1x28x28, batch 128, 10 classes (SGD momentum 0.9, wd 5e-4, lr 0.1)',
    kind: 'train',
    arch: 'resnet20',
    input: [1, 28, 28],
    batch: 128,
    numClasses: 10,
  },
  // Smoke tests (tests and quick checks of the harness; not in the default set).
  { id: 'tiny', title: 'CIFAR ResNet-20 inference, 3x32x32, batch 2 (smoke test)', kind: 'inference', arch: 'resnet20', input: [3, 32, 32], batch: 2, numClasses: 10, hidden: true },
  { id: 'tiny-train', title: 'CIFAR ResNet-20 training step, 1x28x28, batch 4 (smoke test)', kind: 'train', arch: 'resnet20', input: [1, 28, 28], batch: 4, numClasses: 10, hidden: true },
];

/** The workload whose peak memory is reported (in a fresh process per engine). */
export const MEMORY_WORKLOAD = 'resnet50-b1';
/** Training memory is measured at these batch sizes of this workload (resnet-ts only). */
export const TRAIN_MEMORY = { workload: 'resnet20-train', batches: [32, 64, 128, 256] } as const;

export function getWorkload(id: string): Workload {
  const w = WORKLOADS.find((x) => x.id === id);
  if (!w) throw new UsageError(`unknown workload ${JSON.stringify(id)}; known: ${WORKLOADS.map((x) => x.id).join(', ')}`);
  return w;
}

/** `--only a,b`: the named workloads in the order given (duplicates dropped); default: all non-hidden. */
export function selectWorkloads(only?: string): Workload[] {
  if (only === undefined) return WORKLOADS.filter((w) => !w.hidden);
  const names = only.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (names.length === 0) throw new UsageError(`--only needs a comma-separated list of workloads (${WORKLOADS.map((x) => x.id).join(', ')})`);
  return [...new Set(names)].map(getWorkload);
}
