/** The differentiable ops (functional API, like torch.nn.functional). */
export { conv2d, convOutSize, type Conv2dOptions } from './conv.js';
export { batchNorm, batchNormReluConv2d, type BatchNormOptions } from './norm.js';
export { maxPool2d, adaptiveAvgPool2d, type MaxPool2dOptions } from './pool.js';
export { relu, add, addRelu, mulScalar, sum, mean, reshape, flatten, zeroPadShortcut } from './elementwise.js';
export { linear } from './linear.js';
export { logSoftmax, crossEntropy, type CrossEntropyOptions } from './loss.js';
