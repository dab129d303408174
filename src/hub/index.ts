/**
 * Pretrained weights: torchvision's weight enums as data, downloads into the Hugging Face and
 * torch hub caches (shared with Python), and the loadPretrained / classify / embed API.
 */
export { IMAGENET_CLASSES } from '../data/imagenet_classes.js';
export { hfEndpoint, hfHome, hfHubCacheDir, hfToken, isCommitHash, isOffline, repoFolderName, torchHome, torchHubCheckpointsDir } from './cache.js';
export { DownloadProgress, HubError, fetchToFile, formatBytes, type FetchResult, type FetchToFileOptions, type ProgressStream } from './download.js';
export { HubCacheMiss, cachedHfFile, hfFile, hfModelSnapshot, isRepoId, type HfFileResult, type HfHubOptions, type HfModelSnapshot } from './hf.js';
export { downloadTorchvisionWeights, torchHubDownload, type TorchHubOptions } from './torchvision.js';
export {
  TORCHVISION_WEIGHTS,
  getTorchvisionWeights,
  hashPrefixOf,
  isWeightsName,
  torchvisionWeightsForFile,
  type TorchvisionWeights,
  type WeightsName,
} from './weights.js';
export {
  classify,
  classifyBatch,
  embed,
  features,
  inferArch,
  loadPretrained,
  logits,
  parseLayer,
  prepareBatch,
  topK,
  type ClassifyOptions,
  type EmbedLayer,
  type ImageInput,
  type LoadPretrainedOptions,
  type Prediction,
  type Pretrained,
} from './pretrained.js';
export * from '../image/index.js';
