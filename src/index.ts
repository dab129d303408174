/**
 * resnet-ts public API.
 *
 * Layers, bottom-up (each imports only from the ones above it in this list):
 *   tensor (Tensor, autograd, RNG) → kernels (interface + registry) → backends (ts reference)
 *   → ops (differentiable functions) → nn (Module and layers) → models (ResNet family)
 *   → io (safetensors, .npy, state dicts) → summary → cli.
 */
export * from './errors.js';
export { Tensor, tensor, zeros, ones, full, empty, randn, rand, meta, withMetaTensors, numelOf, shapeStr, recycleGrads, type TensorDType } from './tensor/tensor.js';
export { backward, noGrad, isGradEnabled, type BackwardOptions, type GradFn } from './tensor/autograd.js';
export { Generator, manualSeed, defaultGenerator } from './tensor/rng.js';
export type { Kernels, KernelName, Conv2dParams, Pool2dParams, AdaptivePoolParams, BatchNormParams, SgdParams } from './kernels/kernels.js';
export { kernels, setBackend, listBackends, registerBackend, withBackend, nativeBackend, setNumThreads, getNumThreads } from './kernels/registry.js';
export * as F from './ops/index.js';
export { Module, registerGlobalForwardHook, registerGlobalForwardPreHook, type ForwardHook, type Handle, type StateDict, type LoadResult } from './nn/module.js';
export * from './nn/layers.js';
export * as init from './nn/init.js';
export { BasicBlock, Bottleneck, PlainBasicBlock, PlainBottleneck, ZeroPadShortcut, conv1x1, conv3x3 } from './models/blocks.js';
export { ResNet, type ResNetOptions, type ShortcutType, type BlockKind } from './models/resnet.js';
export * from './models/registry.js';
export { parseSafetensors, serializeSafetensors, readSafetensors, writeSafetensors } from './io/safetensors.js';
export { parseNpy, serializeNpy, readNpy, writeNpy } from './io/npy.js';
export type { RawTensor, DType } from './io/raw.js';
export { readStateDict, writeStateDict, loadWeights, readTensorNpy, writeTensorNpy, rawToTensor, tensorToRaw } from './io/state.js';
export { readCheckpoint, saveHfFolder, resnetFromHfConfig, readHfConfig } from './io/checkpoint.js';
export { parsePth, readPth } from './io/pth.js';
export { parseHfConfig, resnetOptionsFromHf, hfToTorchvisionKeys, torchvisionToHfKeys, hfConfigFromModel, type HfResNetConfig } from './io/hf.js';
export { summary } from './summary/torchsummary.js';
export { treeSummary, modelStats, type TreeOptions, type ModelStats } from './summary/tree.js';
export * from './data/index.js';
export { SGD } from './optim/sgd.js';
export { AdamW } from './optim/adamw.js';
export * from './optim/schedulers.js';
export { train, evaluate, TrainingDiverged, type BatchSource, type TrainOptions, type EpochRecord } from './train/trainer.js';
export { compileInference, InferencePlan, type InferenceOptions } from './inference/plan.js';
export { InferenceWorker, type InferenceWorkerSpec, type InferenceWorkerOptions, type InferenceInput } from './inference/worker.js';
export { TrainingWorker, type TrainingWorkerOptions } from './train/worker.js';
export * from './hub/index.js';
export * from './image/index.js';
