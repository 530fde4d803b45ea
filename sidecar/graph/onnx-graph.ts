/**
 * A small ONNX graph builder on top of onnx-proto (protobufjs ModelProto encoding).
 *
 * Graph code calls `node(...)` and gets output names back, so a transformer block reads like the
 * maths. Weights go to an external data file beside the .onnx (ONNX `external_data` with
 * location/offset/length) because protobuf caps a message at 2 GB; small constants stay inline.
 */
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type Attribute = onnxProto.onnx.IAttributeProto;
type Tensor = onnxProto.onnx.ITensorProto;
type ValueInfo = onnxProto.onnx.IValueInfoProto;
type NodeProto = onnxProto.onnx.INodeProto;

export const MS_DOMAIN = 'com.microsoft';

export type ElementType = 'float32' | 'uint8' | 'int8' | 'int64';
const ELEMENT_CODE: Record<ElementType, number> = { float32: 1, uint8: 2, int8: 3, int64: 7 };

/** A dimension is a fixed size or a symbolic name (batch, sequence…). */
export type Dim = number | string;

export type AttributeValue = number | number[] | string | { float: number };

/** Initializers at least this large go to the external data file. */
const EXTERNAL_THRESHOLD_BYTES = 1024;
/** Large tensors start on a page boundary so onnxruntime can memory-map them. */
const PAGE = 4096;

/**
 * Appends tensor bytes to one external data file. Several graphs may share a writer only if they
 * share the file; each .onnx in a store has its own.
 */
export class ExternalDataWriter {
  private readonly fd: number;
  private offset = 0;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'w');
  }

  append(bytes: Uint8Array): { offset: number; length: number } {
    const align = bytes.length >= PAGE ? PAGE : 64;
    const padding = (align - (this.offset % align)) % align;
    if (padding) writeSync(this.fd, new Uint8Array(padding));
    const offset = this.offset + padding;
    let written = 0;
    while (written < bytes.length) written += writeSync(this.fd, bytes, written, bytes.length - written);
    this.offset = offset + bytes.length;
    return { offset, length: bytes.length };
  }

  get bytesWritten(): number {
    return this.offset;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function toBytes(data: Float32Array | Uint8Array | Int8Array | BigInt64Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function attribute(name: string, value: AttributeValue): Attribute {
  const { AttributeType } = onnx.AttributeProto;
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if (typeof value === 'object') return { name, type: AttributeType.FLOAT, f: value.float };
  return { name, type: AttributeType.INT, i: value };
}

function valueInfo(name: string, type: ElementType, dims: Dim[]): ValueInfo {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEMENT_CODE[type],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

/** One output name per element of `T` (a tuple stays a tuple of the same length). */
export type OutputNames<T extends readonly unknown[]> = { -readonly [I in keyof T]: string };

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly initializers: Tensor[] = [];
  private readonly constants = new Map<string, string>();
  private counter = 0;

  /** @param external where large initializers are written; the .onnx must sit in the same folder. */
  constructor(
    readonly name: string,
    private readonly external: ExternalDataWriter,
  ) {}

  input(name: string, type: ElementType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /**
   * Declares a graph output (after the nodes that consume the value). The producing node's output
   * is renamed rather than copied through an Identity node: for the present KV tensors such a
   * copy costs as much as the Concat itself.
   */
  output(value: string, name: string, type: ElementType, dims: Dim[]): void {
    if (value !== name) {
      const producer = this.nodes.find((n) => n.output?.includes(value));
      const alreadyOutput = this.outputs.some((o) => o.name === value);
      if (producer && !alreadyOutput) {
        producer.output = producer.output!.map((o) => (o === value ? name : o));
        for (const n of this.nodes) n.input = n.input!.map((i) => (i === value ? name : i));
      } else this.node('Identity', [value], { name });
    }
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** A weight or constant tensor; large ones are written to the external data file right away. */
  initializer(name: string, type: ElementType, dims: number[], data: Float32Array | Uint8Array | Int8Array | BigInt64Array): string {
    const bytes = toBytes(data);
    const tensor: Tensor = { name, dataType: ELEMENT_CODE[type], dims };
    if (bytes.length >= EXTERNAL_THRESHOLD_BYTES) {
      const { offset, length } = this.external.append(bytes);
      tensor.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      tensor.externalData = [
        { key: 'location', value: basename(this.external.path) },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(length) },
      ];
    } else {
      tensor.rawData = bytes.slice();
    }
    this.initializers.push(tensor);
    return name;
  }

  /** A small int64 constant (shapes, axes), shared between nodes. */
  ints(values: readonly number[]): string {
    const key = `i64:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.initializer(`const_${this.constants.size}_i64`, 'int64', [values.length], BigInt64Array.from(values.map(BigInt)));
      this.constants.set(key, name);
    }
    return name;
  }

  /** A float32 scalar constant. */
  scalar(value: number): string {
    const key = `f32:${value}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.initializer(`const_${this.constants.size}_f32`, 'float32', [], Float32Array.of(value));
      this.constants.set(key, name);
    }
    return name;
  }

  /**
   * Adds one node and returns its output names. `options.name` names the single output (defaults
   * to a fresh name); `options.outputs` gives the count for multi-output ops.
   */
  node(
    op: string,
    inputs: string[],
    options: { name?: string; outputs?: number; domain?: string; attrs?: Record<string, AttributeValue> } = {},
  ): string[] {
    const id = this.counter++;
    const count = options.outputs ?? 1;
    const outputs =
      count === 1 && options.name ? [options.name] : Array.from({ length: count }, (_, i) => `${op}_${id}${count > 1 ? `_${i}` : ''}`);
    this.nodes.push({
      opType: op,
      name: `${op}_${id}`,
      input: inputs,
      output: outputs,
      domain: options.domain ?? '',
      attribute: Object.entries(options.attrs ?? {}).map(([k, v]) => attribute(k, v)),
    });
    return outputs;
  }

  /** Single-output shorthand for `node`. */
  op(op: string, inputs: string[], attrs?: Record<string, AttributeValue>, domain?: string): string {
    return this.node(op, inputs, { attrs, domain })[0]!; // one output by default
  }

  /** Splits `x` along `axis` into pieces of `sizes`; one output name per size, as a tuple to destructure. */
  split<const Sizes extends readonly number[]>(x: string, sizes: Sizes, axis: number): OutputNames<Sizes> {
    // `node` returns exactly `outputs` names.
    return this.node('Split', [x, this.ints(sizes)], { outputs: sizes.length, attrs: { axis } }) as OutputNames<Sizes>;
  }

  /** Encodes the model and writes it to `path` (the external data file is written already). */
  save(path: string): void {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'sirocco',
      opsetImport: [
        { domain: '', version: 17 },
        { domain: MS_DOMAIN, version: 1 },
      ],
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    });
    writeFileSync(path, onnx.ModelProto.encode(model).finish());
  }
}
