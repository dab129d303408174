/**
 * Module: the base of every layer and model, shaped like torch.nn.Module.
 *
 * Children, parameters and buffers are registered under names; the dotted paths of those names
 * ("layer1.0.bn1.running_mean") are the state-dict keys, identical to PyTorch's, so checkpoints
 * load without a mapping table. Registration order is PyTorch's order (own parameters, own
 * buffers, then children), which is also the order of stateDict() and namedParameters().
 *
 * `call(x)` runs `forward(x)` and then the forward hooks; always call modules through `call`
 * (the summary and diagnostics rely on hooks seeing every invocation).
 */
import { largeFloatBuffer, zeroedFloats } from '../tensor/alloc.js';
import { StateDictError } from '../errors.js';
import { Tensor, shapeStr } from '../tensor/tensor.js';

export type ForwardHook = (module: Module, input: Tensor, output: Tensor) => void;
export type ForwardPreHook = (module: Module, input: Tensor) => void;

export interface Handle {
  remove(): void;
}

export interface LoadResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

/** A tensor, an array, or anything with a shape+data pair (e.g. a parsed safetensors entry). */
export type StateDictValue = Tensor;
export type StateDict = Map<string, StateDictValue>;

let globalHooks: ForwardHook[] = [];
let globalPreHooks: ForwardPreHook[] = [];

/** Registers a hook called before every module's forward (tracing call nesting); returns a handle. */
export function registerGlobalForwardPreHook(hook: ForwardPreHook): Handle {
  globalPreHooks = [...globalPreHooks, hook];
  return { remove: () => void (globalPreHooks = globalPreHooks.filter((h) => h !== hook)) };
}

/** Registers a hook on every module (used by summary()); remove it with the returned handle. */
export function registerGlobalForwardHook(hook: ForwardHook): Handle {
  globalHooks = [...globalHooks, hook];
  return { remove: () => void (globalHooks = globalHooks.filter((h) => h !== hook)) };
}

/** Bumped whenever any module registers or replaces a parameter, buffer or child: cached flat
 * views of a module tree (stateVersion) are rebuilt when it moves. */
let structureEpoch = 0;

/** A large parameter's storage moved onto the large-buffer allocator (memory of its own, advised for
 * huge pages: ../tensor/alloc.ts): it lives as long as its module, and every optimizer step streams
 * it. Other tensors stay where they were made (a tensor made and dropped inside a synchronous loop
 * would keep such memory mapped until the event loop turns). */
function toLargeMemory(t: Tensor): void {
  const d = t.isMeta ? null : t.data;
  if (d === null) return;
  const b = largeFloatBuffer(d.length);
  if (b === null) return;
  const a = new Float32Array(b);
  a.set(d);
  t.data = a;
}

export abstract class Module {
  training = true;
  private readonly modules_ = new Map<string, Module | null>();
  private readonly params_ = new Map<string, Tensor | null>();
  private readonly buffers_ = new Map<string, Tensor | null>();
  private hooks_: ForwardHook[] = [];

  abstract forward(x: Tensor): Tensor;

  /** The class name as PyTorch prints it ("Conv2d", "BasicBlock"). */
  get typeName(): string {
    return this.constructor.name;
  }

  /** Runs the global pre-hooks, forward, then the module's own hooks, then the global ones. */
  call(x: Tensor): Tensor {
    for (const h of globalPreHooks) h(this, x);
    const y = this.forward(x);
    for (const h of this.hooks_) h(this, x, y);
    for (const h of globalHooks) h(this, x, y);
    return y;
  }

  /** Whether a forward hook (this module's own, or a global one) watches calls to this module.
   * Fused fast paths (batch norm + ReLU in the blocks) are taken only when nothing is watching, so
   * hooks always see every module call. */
  get observed(): boolean {
    return this.hooks_.length > 0 || globalHooks.length > 0 || globalPreHooks.length > 0;
  }

  registerForwardHook(hook: ForwardHook): Handle {
    this.hooks_ = [...this.hooks_, hook];
    return { remove: () => void (this.hooks_ = this.hooks_.filter((h) => h !== hook)) };
  }

  // ---- registration ----------------------------------------------------------------------

  protected addModule<M extends Module | null>(name: string, m: M): M {
    checkName(name, this.modules_.has(name) || this.params_.has(name) || this.buffers_.has(name));
    this.modules_.set(name, m);
    structureEpoch++;
    return m;
  }

  protected addParameter<T extends Tensor | null>(name: string, t: T): T {
    checkName(name, this.modules_.has(name) || this.params_.has(name) || this.buffers_.has(name));
    if (t !== null) {
      t.requiresGrad = true;
      toLargeMemory(t);
    }
    this.params_.set(name, t);
    structureEpoch++;
    return t;
  }

  protected addBuffer<T extends Tensor | null>(name: string, t: T): T {
    checkName(name, this.modules_.has(name) || this.params_.has(name) || this.buffers_.has(name));
    this.buffers_.set(name, t);
    structureEpoch++;
    return t;
  }

  /** Replaces a registered parameter's tensor (e.g. loading, or freezing with a new leaf). */
  protected setParameter(name: string, t: Tensor): void {
    if (!this.params_.has(name)) throw new StateDictError(`${this.typeName} has no parameter "${name}"`);
    this.params_.set(name, t);
    structureEpoch++;
  }

  // ---- traversal -------------------------------------------------------------------------

  /** Direct children with their names (null slots, like downsample=None, are skipped). */
  namedChildren(): [string, Module][] {
    return [...this.modules_].filter((e): e is [string, Module] => e[1] !== null);
  }

  /** This module and all descendants, pre-order, with dotted names ("" for this one). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [n, m] of this.namedChildren()) out.push(...m.namedModules(prefix ? `${prefix}.${n}` : n));
    return out;
  }

  modules(): Module[] {
    return this.namedModules().map(([, m]) => m);
  }

  /** Own parameters (not children's). */
  ownParameters(): [string, Tensor][] {
    return [...this.params_].filter((e): e is [string, Tensor] => e[1] !== null);
  }

  ownBuffers(): [string, Tensor][] {
    return [...this.buffers_].filter((e): e is [string, Tensor] => e[1] !== null);
  }

  /** All parameters with dotted names, in PyTorch's named_parameters() order. */
  namedParameters(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [prefix, m] of this.namedModules()) {
      for (const [n, p] of m.ownParameters()) out.push([prefix ? `${prefix}.${n}` : n, p]);
    }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  namedBuffers(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [prefix, m] of this.namedModules()) {
      for (const [n, b] of m.ownBuffers()) out.push([prefix ? `${prefix}.${n}` : n, b]);
    }
    return out;
  }

  /** Total number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((s, p) => s + p.numel, 0);
  }

  /** Applies `fn` to every module (children first, as nn.Module.apply). */
  apply(fn: (m: Module) => void): this {
    for (const [, c] of this.namedChildren()) c.apply(fn);
    fn(this);
    return this;
  }

  train(mode = true): this {
    for (const m of this.modules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Clears the gradients of all parameters. */
  zeroGrad(): void {
    for (const p of this.parameters()) p.grad = null;
  }

  // ---- state dict ------------------------------------------------------------------------

  /** A number that changes when a parameter or buffer anywhere in this module tree is modified in
   * place (its version) or replaced (its id). The inference plan checks it on every call to know
   * when to re-fold, so it sums over a cached flat list of the tree's tensors (rebuilt when any
   * module's registrations change) instead of building the state dict's names. */
  stateVersion(): number {
    if (!this.stateTensors_ || this.stateTensors_.epoch !== structureEpoch) {
      const tensors: Tensor[] = [];
      const walk = (m: Module): void => {
        for (const t of m.params_.values()) if (t) tensors.push(t);
        for (const t of m.buffers_.values()) if (t) tensors.push(t);
        for (const c of m.modules_.values()) if (c) walk(c);
      };
      walk(this);
      this.stateTensors_ = { epoch: structureEpoch, tensors };
    }
    let v = 0;
    for (const t of this.stateTensors_.tensors) v += t.version + t.id * 1e-9;
    return v;
  }
  private stateTensors_: { epoch: number; tensors: Tensor[] } | null = null;

  /** Parameters and buffers by dotted name, in PyTorch's state_dict() order. Shares storage. */
  stateDict(): StateDict {
    const out: StateDict = new Map();
    for (const [prefix, m] of this.namedModules()) {
      const key = (n: string): string => (prefix ? `${prefix}.${n}` : n);
      for (const [n, p] of m.ownParameters()) out.set(key(n), p);
      for (const [n, b] of m.ownBuffers()) out.set(key(n), b);
    }
    return out;
  }

  /**
   * Copies values from `sd` into this module's parameters and buffers.
   * strict (default): every key must match and every shape must agree; all problems are reported
   * in one StateDictError. Non-strict: shape mismatches still fail; missing and unexpected keys
   * are returned.
   */
  loadStateDict(sd: ReadonlyMap<string, Tensor>, opts: { strict?: boolean } = {}): LoadResult {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const missingKeys = [...own.keys()].filter((k) => !sd.has(k));
    const unexpectedKeys = [...sd.keys()].filter((k) => !own.has(k));
    const mismatched: string[] = [];
    for (const [k, t] of own) {
      const src = sd.get(k);
      if (src && (src.ndim !== t.ndim || src.shape.some((d, i) => d !== t.shape[i]))) {
        mismatched.push(`${k}: checkpoint ${shapeStr(src.shape)} vs model ${shapeStr(t.shape)}`);
      }
    }
    const problems: string[] = [];
    if (mismatched.length) problems.push(`shape mismatch for ${mismatched.length} key(s): ${listSome(mismatched, '; ')}`);
    if (strict && missingKeys.length) problems.push(`${missingKeys.length} missing key(s): ${listSome(missingKeys)}`);
    if (strict && unexpectedKeys.length) problems.push(`${unexpectedKeys.length} unexpected key(s): ${listSome(unexpectedKeys)}`);
    if (problems.length) throw new StateDictError(`error loading state dict for ${this.typeName}: ${problems.join(' | ')}`);
    for (const [k, t] of own) {
      const src = sd.get(k);
      if (src && !src.isMeta) {
        if (t.isMeta) t.data = zeroedFloats(t.numel);
        t.copy_(src);
      }
    }
    return { missingKeys, unexpectedKeys };
  }
}

/** The first items of a long list, then a count: a 500-key mismatch stays readable. */
function listSome(items: readonly string[], sep = ', ', max = 12): string {
  const head = items.slice(0, max).join(sep);
  return items.length > max ? `${head}${sep}... and ${items.length - max} more` : head;
}

function checkName(name: string, taken: boolean): void {
  if (name === '' || name.includes('.')) throw new Error(`module attribute name "${name}" must be non-empty and contain no "."`);
  if (taken) throw new Error(`attribute "${name}" is already registered`);
}
