/**
 * Error types of resnet-ts. Every error a user can cause (bad shapes, bad files, bad flags) is one
 * of these, with a message that reads as one line: what was wrong, where, and what was expected.
 * The CLI prints `error: <message>` for these and exits non-zero; anything else is a bug.
 */

/** Base class: an error caused by the caller's input, not by a bug in resnet-ts. */
export class ResnetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A tensor argument has the wrong shape, dtype or value for an op ("conv2d: ..."). */
export class ShapeError extends ResnetError {}

/** A file (safetensors, .npy, checkpoint, image) is malformed, truncated or lies about itself. */
export class FormatError extends ResnetError {}

/** A state dict does not fit a model: missing/unexpected keys or shape mismatches. */
export class StateDictError extends ResnetError {}

/** A bad option or argument (unknown architecture, malformed --input, ...). */
export class UsageError extends ResnetError {}
