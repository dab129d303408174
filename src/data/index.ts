/**
 * Data layer for training: datasets (Fashion-MNIST, CIFAR-10, ImageFolder, in-memory arrays),
 * torchvision-style transforms with explicit seeded randomness, and a DataLoader with reproducible
 * shuffling and optional worker threads. See each module's header for the details.
 */
export { DatasetNotFoundError, DownloadError } from './errors.js';
export {
  type Sample,
  type DatasetInfo,
  type Dataset,
  type AsyncDataset,
  type AnyDataset,
  type SharedImages,
  type InMemoryDatasetInit,
  type SplitOptions,
  InMemoryDataset,
  Subset,
  isAsyncDataset,
  loadSample,
  trainValSplit,
} from './dataset.js';
export { type IdxArray, parseIdx, readIdx, serializeIdx, maybeGunzip } from './idx.js';
export { type TarEntry, parseTar, buildTar } from './tar.js';
export { type DownloadOptions, type DownloadResult, downloadFile, cacheRoot, md5File, writeFileAtomic } from './download.js';
export { type LocateSpec, type Located, locateDataset } from './locate.js';
export {
  type Split,
  type FashionMnistOptions,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  FASHION_MNIST_FILES,
  FASHION_MNIST_MD5,
  FASHION_MNIST_URLS,
  FASHION_MNIST_ENV,
  FASHION_MNIST_URL_ENV,
  FASHION_MNIST_SYSTEM_DIR,
  loadFashionMnist,
  readFashionMnist,
  locateFashionMnist,
} from './fashion_mnist.js';
export {
  type Cifar10Options,
  CIFAR10_CLASSES,
  CIFAR10_MEAN,
  CIFAR10_STD,
  CIFAR10_FILES,
  CIFAR10_META,
  CIFAR10_URL,
  CIFAR10_MD5,
  CIFAR10_ENV,
  CIFAR10_URL_ENV,
  CIFAR10_DIR,
  CIFAR10_SYSTEM_DIR,
  parseCifarBatch,
  readCifarMeta,
  readCifar10,
  loadCifar10,
  locateCifar10,
  extractCifar10Archive,
} from './cifar10.js';
export { type DecodedImage, type DecodeFn, type ImageFolderOptions, IMG_EXTENSIONS, ImageFolder, toCHW } from './image_folder.js';
export {
  type Pixels,
  type ImageCHW,
  type Transform,
  type TransformSpec,
  type Size,
  type Padding,
  type PaddingMode,
  type RandomCropOptions,
  type RandomResizedCropOptions,
  type ColorJitterOptions,
  type FactorRange,
  type RandomErasingOptions,
  type ResizeOptions,
  BaseTransform,
  Compose,
  ToFloat,
  Normalize,
  RandomCrop,
  RandomHorizontalFlip,
  RandomResizedCrop,
  ColorJitter,
  RandomErasing,
  Resize,
  CenterCrop,
  transformFromSpec,
  hflip,
  crop,
  resizedCrop,
  erase,
  adjustBrightness,
  adjustContrast,
  adjustSaturation,
  roundHalfEven,
} from './transforms.js';
export { type BuiltBatch, buildBatch } from './batch.js';
export { deriveSeed, shuffleGenerator, sampleGenerator } from './seed.js';
export { type DataLoaderOptions, type Batch, type DataLoaderState, DataLoader } from './loader.js';
