/**
 * Images for pretrained models: decoding (sharp) and the exact torchvision / transformers
 * preprocessing arithmetic (Pillow's resampling re-implemented), as a float32 model input.
 */
export { decodeImage, probeImage, MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, type DecodeOptions } from './decode.js';
export { listImageFiles, isImageFileName } from './files.js';
export { resizeU8, PIL_RESAMPLE_CODES, type ResampleFilter } from './resample.js';
export {
  IMAGENET_MEAN,
  IMAGENET_STD,
  IMAGENET_STANDARD_MEAN,
  IMAGENET_STANDARD_STD,
  describePreprocess,
  hfConvNextDefaults,
  hfPreprocessFromConfig,
  normalizeToChw,
  preprocessImage,
  resizeAndCrop,
  shorterSideSize,
  torchvisionPreset,
  type HfConvNextPreprocess,
  type PreprocessSpec,
  type RgbImage,
  type TorchvisionPreprocess,
  type Triple,
} from './preprocess.js';
