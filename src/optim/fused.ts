/**
 * Optimizer steps inside backward(): each parameter is updated as soon as backward() has accumulated
 * its gradient (a post-accumulate-grad hook), while that gradient, just written by the op's
 * backward kernel, and often the parameter, just read by it, are still in cache. The update of one
 * parameter reads no other's, so the result is the same, bit for bit, as backward() then step().
 * What it changes: gradient clipping or any other edit of the gradients between backward() and
 * step() has no place to run, and with gradient accumulation every backward() steps.
 */
import { UsageError } from '../errors.js';
import { recycleGrads, type Tensor } from '../tensor/tensor.js';

export interface FuseOptions {
  /**
   * After its update, each parameter's gradient goes back to the allocator and `.grad` becomes null
   * (zero_grad inside the hook, as PyTorch's optimizer-in-backward recipe): nothing can read the
   * gradients after backward(), and the next weight gradient of the same size is written into that
   * buffer while it is still in cache (ResNet-18: about 1 ms a step). Default false.
   */
  freeGrads?: boolean;
}

export interface FusedHandle {
  /** Stops updating inside backward(): step() works again. */
  remove(): void;
  /** FuseOptions.freeGrads, changeable between steps (the trainer clears it while hooks watch the model). */
  freeGrads: boolean;
}

/** The fused state an optimizer keeps (null: step() updates). */
export class FusedUpdates {
  private handle: FusedHandle | null = null;

  constructor(private readonly who: string) {}

  get active(): boolean {
    return this.handle !== null;
  }

  /** Registers `update(p)` on every parameter; one registration at a time. */
  fuse(params: readonly Tensor[], update: (p: Tensor) => void, opts: FuseOptions = {}): FusedHandle {
    if (this.handle !== null) throw new UsageError(`${this.who}.fuseIntoBackward(): already fused; remove() the first handle before fusing again`);
    const frozen = params.filter((p) => !p.requiresGrad);
    if (frozen.length > 0) {
      throw new UsageError(`${this.who}.fuseIntoBackward(): ${frozen.length} parameter(s) do not require grad (frozen?): backward() never updates them; leave them out of the optimizer`);
    }
    if (opts.freeGrads !== undefined && typeof opts.freeGrads !== 'boolean') throw new UsageError(`${this.who}.fuseIntoBackward(): freeGrads must be a boolean`);
    const hooks = params.map((p) =>
      p.registerPostAccumulateGradHook((t) => {
        update(t);
        if (handle.freeGrads) recycleGrads([t]);
      }),
    );
    const handle: FusedHandle = {
      freeGrads: opts.freeGrads ?? false,
      remove: () => {
        if (this.handle !== handle) return;
        for (const h of hooks) h.remove();
        this.handle = null;
      },
    };
    this.handle = handle;
    return handle;
  }

  /** step()'s guard: a second update of the same gradients would be a silent wrong answer. */
  checkStep(): void {
    if (this.handle !== null) {
      throw new UsageError(`${this.who}.step(): this optimizer already updates every parameter inside backward() (fuseIntoBackward); remove() its handle to step explicitly`);
    }
  }
}
