/**
 * A restricted Python unpickler: it decodes the pickle byte code that torch.save writes (protocol 2,
 * plus the protocol 3-5 opcodes Python emits for the same data) into plain JS values, and NEVER
 * imports or executes anything. It is the TypeScript counterpart of torch.load(weights_only=True).
 *
 * Python values become:
 *   None → null, bool → boolean, int → number (bigint beyond 2^53), float → number,
 *   str → string, bytes → Uint8Array, tuple → PyTuple, list → PyList, dict → PyDict.
 * Globals (GLOBAL / STACK_GLOBAL) are resolved through the caller's `resolveGlobal`, which returns
 * a PyGlobal for the few names it allows; any other name is refused with a FormatError before the
 * pickle can use it. REDUCE and NEWOBJ only "call" the TS functions attached to allowed PyGlobals;
 * BINPERSID hands persistent ids to the caller's `persistentLoad`.
 *
 * Hostile input: every read is bounds-checked, every opcode consumes at least one byte (so the loop
 * always ends), memo and stack misuse is a FormatError, and nothing recurses on the object graph.
 */
import { formatError } from './raw.js';

export class PyTuple {
  constructor(readonly items: readonly unknown[]) {}
}

export class PyList {
  constructor(readonly items: unknown[] = []) {}
}

/** A dict (or collections.OrderedDict); keys keep insertion order, like Python's. */
export class PyDict {
  readonly map = new Map<unknown, unknown>();
  /** Attributes set by BUILD (an OrderedDict state dict carries `_metadata` this way). */
  state: unknown = undefined;
  constructor(readonly ordered = false) {}
}

/**
 * A global the caller allows. `call` implements REDUCE (`f(*args)`), `newObj` implements NEWOBJ
 * (`cls.__new__(cls, *args)`); a PyGlobal with neither can only be passed around as a value
 * (e.g. torch.FloatStorage inside a persistent id).
 */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly call?: (args: readonly unknown[]) => unknown,
    readonly newObj?: (args: readonly unknown[]) => unknown,
  ) {}

  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

export interface UnpickleOptions {
  /** Names errors ("file.pth: ..."). */
  source?: string;
  /**
   * The value of an allowed global (a PyGlobal to make it callable, or any other value that may
   * only be passed around), or undefined to refuse it; may throw its own FormatError.
   */
  resolveGlobal(module: string, name: string): unknown;
  /** Turns a BINPERSID persistent id into a value (torch: a storage reference). */
  persistentLoad?(pid: unknown): unknown;
  /** Appended to the refusal message of a global. */
  refusalHint?: string;
}

const MAX_PROTOCOL = 5;

/** Decode one pickle from `bytes` (trailing bytes after STOP are ignored). */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions): unknown {
  return new Unpickler(bytes, opts).run();
}

/** A short one-line description of an unpickled value, for error messages. */
export function describePy(v: unknown): string {
  if (v === null) return 'None';
  if (v === undefined) return 'nothing';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return Number.isInteger(v) ? `int ${v}` : `float ${v}`;
  if (typeof v === 'bigint') return `int ${v}`;
  if (typeof v === 'string') return `str ${JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v)}`;
  if (v instanceof Uint8Array) return `bytes (${v.length})`;
  if (v instanceof PyTuple) return `tuple of ${v.items.length}`;
  if (v instanceof PyList) return `list of ${v.items.length}`;
  if (v instanceof PyDict) return `${v.ordered ? 'OrderedDict' : 'dict'} of ${v.map.size}`;
  if (v instanceof PyGlobal) return `global ${v.qualifiedName}`;
  const name = (v as { constructor?: { name?: string } }).constructor?.name;
  return name ? `${name}` : typeof v;
}

class Unpickler {
  private pos = 0;
  private stack: unknown[] = [];
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, unknown>();
  private readonly dv: DataView;
  private readonly source: string;
  private opStart = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly opts: UnpickleOptions,
  ) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.source = opts.source ?? 'pickle';
  }

  private fail(message: string): never {
    throw formatError(this.source, `pickle: ${message} (at byte ${this.opStart})`);
  }

  // ---- reading -------------------------------------------------------------------------------

  private need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length) this.fail(`unexpected end of data reading ${what} (truncated pickle?)`);
  }

  private u8(): number {
    this.need(1, 'an opcode argument');
    return this.bytes[this.pos++]!;
  }

  private u16(): number {
    this.need(2, 'a 2-byte argument');
    const v = this.dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  private u32(): number {
    this.need(4, 'a 4-byte argument');
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  private i32(): number {
    this.need(4, 'a 4-byte argument');
    const v = this.dv.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }

  private u64(): number {
    this.need(8, 'an 8-byte argument');
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(this.bytes.length)) this.fail(`length ${v} exceeds the pickle's ${this.bytes.length} bytes`);
    return Number(v);
  }

  private take(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  private utf8(n: number, what: string): string {
    const b = this.take(n, what);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(b);
    } catch {
      return this.fail(`${what} is not valid UTF-8`);
    }
  }

  /** A "\n"-terminated ASCII line (GLOBAL's module and name). */
  private line(what: string): string {
    const start = this.pos;
    const end = this.bytes.indexOf(0x0a, start);
    if (end < 0) this.fail(`unterminated ${what}`);
    this.pos = end + 1;
    return new TextDecoder('latin1').decode(this.bytes.subarray(start, end));
  }

  /** Little-endian two's-complement integer of n bytes (LONG1/LONG4). */
  private long(n: number): number | bigint {
    const b = this.take(n, 'a long integer');
    if (n === 0) return 0;
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return toInt(v);
  }

  // ---- stack -----------------------------------------------------------------------------------

  private push(v: unknown): void {
    this.stack.push(v);
  }

  private pop(what = 'a value'): unknown {
    if (this.stack.length === 0) this.fail(`stack underflow: expected ${what}`);
    if (this.marks.length && this.stack.length <= this.marks[this.marks.length - 1]!) {
      this.fail(`expected ${what} but found a MARK`);
    }
    return this.stack.pop();
  }

  private top(what: string): unknown {
    if (this.stack.length === 0 || (this.marks.length && this.stack.length <= this.marks[this.marks.length - 1]!)) {
      this.fail(`stack underflow: expected ${what}`);
    }
    return this.stack[this.stack.length - 1];
  }

  /** Items pushed since the last MARK (the mark is removed). */
  private popMark(): unknown[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail('no MARK on the stack');
    const items = this.stack.splice(m);
    return items;
  }

  private memoPut(index: number): void {
    this.memo.set(index, this.top('a value to memoize'));
  }

  private memoGet(index: number): void {
    if (!this.memo.has(index)) this.fail(`memo key ${index} was never stored`);
    this.push(this.memo.get(index));
  }

  // ---- objects ---------------------------------------------------------------------------------

  private global(module: string, name: string): unknown {
    const g = this.opts.resolveGlobal(module, name);
    if (g === undefined) {
      const shown = `${module}.${name}`;
      const hint = this.opts.refusalHint ? ` (${this.opts.refusalHint})` : '';
      throw formatError(this.source, `refusing to load global ${JSON.stringify(shown.length > 120 ? `${shown.slice(0, 117)}...` : shown)}${hint}`);
    }
    return g;
  }

  private setItem(d: unknown, k: unknown, v: unknown): void {
    if (!(d instanceof PyDict)) this.fail(`SETITEM(S) target is ${describePy(d)}, not a dict`);
    if (k instanceof PyList || k instanceof PyDict) this.fail(`unhashable dict key (${describePy(k)})`);
    d.map.set(k, v);
  }

  private append(l: unknown, items: unknown[]): void {
    if (!(l instanceof PyList)) this.fail(`APPEND(S) target is ${describePy(l)}, not a list`);
    for (const it of items) l.items.push(it);
  }

  private invoke(f: unknown, args: unknown, how: 'call' | 'newObj'): unknown {
    if (!(f instanceof PyGlobal)) this.fail(`${how === 'call' ? 'REDUCE' : 'NEWOBJ'} on ${describePy(f)}, which is not a callable global`);
    if (!(args instanceof PyTuple)) this.fail(`arguments of ${f.qualifiedName} are ${describePy(args)}, not a tuple`);
    const fn = how === 'call' ? f.call : f.newObj;
    if (!fn) this.fail(`${f.qualifiedName} cannot be ${how === 'call' ? 'called' : 'instantiated'} here`);
    return fn(args.items);
  }

  // ---- main loop -------------------------------------------------------------------------------

  run(): unknown {
    const n = this.bytes.length;
    if (n === 0) this.fail('empty pickle');
    while (this.pos < n) {
      this.opStart = this.pos;
      const op = this.bytes[this.pos++]!;
      switch (op) {
        case 0x80: { // PROTO
          const p = this.u8();
          if (p > MAX_PROTOCOL) this.fail(`unsupported pickle protocol ${p}`);
          break;
        }
        case 0x95: // FRAME: an 8-byte length we do not need (the whole pickle is in memory)
          this.u64();
          break;
        case 0x2e: { // STOP
          if (this.marks.length) this.fail('STOP with an unclosed MARK');
          if (this.stack.length !== 1) this.fail(`STOP with ${this.stack.length} values on the stack (expected 1)`);
          return this.stack[0];
        }
        // -- containers
        case 0x7d: this.push(new PyDict()); break; // EMPTY_DICT '}'
        case 0x5d: this.push(new PyList()); break; // EMPTY_LIST ']'
        case 0x29: this.push(new PyTuple([])); break; // EMPTY_TUPLE ')'
        case 0x28: this.marks.push(this.stack.length); break; // MARK '('
        case 0x74: this.push(new PyTuple(this.popMark())); break; // TUPLE 't'
        case 0x85: this.push(new PyTuple([this.pop()])); break; // TUPLE1
        case 0x86: { // TUPLE2
          const b = this.pop();
          const a = this.pop();
          this.push(new PyTuple([a, b]));
          break;
        }
        case 0x87: { // TUPLE3
          const c = this.pop();
          const b = this.pop();
          const a = this.pop();
          this.push(new PyTuple([a, b, c]));
          break;
        }
        case 0x6c: this.push(new PyList(this.popMark())); break; // LIST 'l'
        case 0x64: { // DICT 'd'
          const items = this.popMark();
          if (items.length % 2) this.fail('DICT with an odd number of items');
          const d = new PyDict();
          for (let i = 0; i < items.length; i += 2) this.setItem(d, items[i], items[i + 1]);
          this.push(d);
          break;
        }
        case 0x73: { // SETITEM 's'
          const v = this.pop();
          const k = this.pop();
          this.setItem(this.top('a dict'), k, v);
          break;
        }
        case 0x75: { // SETITEMS 'u'
          const items = this.popMark();
          if (items.length % 2) this.fail('SETITEMS with an odd number of items');
          const d = this.top('a dict');
          for (let i = 0; i < items.length; i += 2) this.setItem(d, items[i], items[i + 1]);
          break;
        }
        case 0x61: { // APPEND 'a'
          const v = this.pop();
          this.append(this.top('a list'), [v]);
          break;
        }
        case 0x65: { // APPENDS 'e'
          const items = this.popMark();
          this.append(this.top('a list'), items);
          break;
        }
        // -- scalars
        case 0x4e: this.push(null); break; // NONE 'N'
        case 0x88: this.push(true); break; // NEWTRUE
        case 0x89: this.push(false); break; // NEWFALSE
        case 0x4a: this.push(this.i32()); break; // BININT 'J'
        case 0x4b: this.push(this.u8()); break; // BININT1 'K'
        case 0x4d: this.push(this.u16()); break; // BININT2 'M'
        case 0x8a: this.push(this.long(this.u8())); break; // LONG1
        case 0x8b: { // LONG4
          const len = this.i32();
          if (len < 0) this.fail('LONG4 with a negative length');
          if (len > 64) this.fail(`LONG4 of ${len} bytes is not a plausible checkpoint value`);
          this.push(this.long(len));
          break;
        }
        case 0x47: { // BINFLOAT 'G' (big-endian)
          this.need(8, 'a float');
          this.push(this.dv.getFloat64(this.pos, false));
          this.pos += 8;
          break;
        }
        // -- strings and bytes
        case 0x58: this.push(this.utf8(this.u32(), 'BINUNICODE string')); break; // 'X'
        case 0x8c: this.push(this.utf8(this.u8(), 'SHORT_BINUNICODE string')); break;
        case 0x8d: this.push(this.utf8(this.u64(), 'BINUNICODE8 string')); break;
        case 0x54: { // BINSTRING 'T' (Python 2 str; decoded as latin-1)
          const len = this.i32();
          if (len < 0) this.fail('BINSTRING with a negative length');
          this.push(new TextDecoder('latin1').decode(this.take(len, 'BINSTRING')));
          break;
        }
        case 0x55: this.push(new TextDecoder('latin1').decode(this.take(this.u8(), 'SHORT_BINSTRING'))); break; // 'U'
        case 0x42: this.push(this.take(this.u32(), 'BINBYTES').slice()); break; // 'B'
        case 0x43: this.push(this.take(this.u8(), 'SHORT_BINBYTES').slice()); break; // 'C'
        case 0x8e: this.push(this.take(this.u64(), 'BINBYTES8').slice()); break;
        // -- memo
        case 0x71: this.memoPut(this.u8()); break; // BINPUT 'q'
        case 0x72: this.memoPut(this.u32()); break; // LONG_BINPUT 'r'
        case 0x94: this.memoPut(this.memo.size); break; // MEMOIZE
        case 0x68: this.memoGet(this.u8()); break; // BINGET 'h'
        case 0x6a: this.memoGet(this.u32()); break; // LONG_BINGET 'j'
        // -- stack manipulation
        case 0x30: this.pop(); break; // POP '0'
        case 0x31: this.popMark(); break; // POP_MARK '1'
        case 0x32: this.push(this.top('a value to duplicate')); break; // DUP '2'
        // -- globals and objects
        case 0x63: { // GLOBAL 'c'
          const module = this.line('GLOBAL module name');
          const name = this.line('GLOBAL name');
          this.push(this.global(module, name));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.pop('a global name');
          const module = this.pop('a module name');
          if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL needs two strings');
          this.push(this.global(module, name));
          break;
        }
        case 0x52: { // REDUCE 'R'
          const args = this.pop('arguments');
          const f = this.pop('a callable');
          this.push(this.invoke(f, args, 'call'));
          break;
        }
        case 0x81: { // NEWOBJ
          const args = this.pop('arguments');
          const cls = this.pop('a class');
          this.push(this.invoke(cls, args, 'newObj'));
          break;
        }
        case 0x92: { // NEWOBJ_EX
          const kwargs = this.pop('keyword arguments');
          const args = this.pop('arguments');
          const cls = this.pop('a class');
          if (!(kwargs instanceof PyDict) || kwargs.map.size !== 0) this.fail('NEWOBJ_EX with keyword arguments is not supported');
          this.push(this.invoke(cls, args, 'newObj'));
          break;
        }
        case 0x62: { // BUILD 'b'
          const state = this.pop('a state');
          const obj = this.top('an object to build');
          if (obj instanceof PyDict) obj.state = state;
          else this.fail(`BUILD (setting the state of an object) on ${describePy(obj)} is not supported`);
          break;
        }
        case 0x51: { // BINPERSID 'Q'
          const pid = this.pop('a persistent id');
          if (!this.opts.persistentLoad) this.fail('persistent ids are not allowed in this pickle');
          this.push(this.opts.persistentLoad(pid));
          break;
        }
        default:
          this.fail(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}${op >= 0x20 && op < 0x7f ? ` (${JSON.stringify(String.fromCharCode(op))})` : ''}`);
      }
    }
    this.opStart = this.pos;
    return this.fail('pickle ends without a STOP opcode (truncated?)');
  }
}

function toInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}
