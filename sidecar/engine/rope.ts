/**
 * Rotate-half RoPE's cos/sin table, one row per absolute position, for onnxruntime's fused
 * `RotaryEmbedding` (com.microsoft): the graphs index it with each token's position, so a step
 * passes a view of the rows it needs instead of computing angles per token. Angles are computed in
 * float64 and rounded once to float32 (golden logits stay within 1e-4 of the reference).
 */
export class RopeTable {
  private cosRows = new Float32Array(0);
  private sinRows = new Float32Array(0);
  private rows = 0;
  private readonly inverseFrequency: number[];

  constructor(
    readonly headDim: number,
    theta: number,
  ) {
    this.inverseFrequency = Array.from({ length: headDim / 2 }, (_, i) => theta ** ((-2 * i) / headDim));
  }

  /** cos and sin [count, head_dim/2] for positions 0…count−1: views, which a later call that grows the table leaves intact. */
  upTo(count: number): { cos: Float32Array; sin: Float32Array } {
    const half = this.headDim / 2;
    if (count > this.rows) this.grow(Math.max(count, 2 * this.rows, 256));
    return { cos: this.cosRows.subarray(0, count * half), sin: this.sinRows.subarray(0, count * half) };
  }

  private grow(rows: number): void {
    const half = this.headDim / 2;
    const cos = new Float32Array(rows * half);
    const sin = new Float32Array(rows * half);
    cos.set(this.cosRows);
    sin.set(this.sinRows);
    for (let position = this.rows; position < rows; position++) {
      for (let f = 0; f < half; f++) {
        const angle = position * this.inverseFrequency[f]!;
        cos[position * half + f] = Math.cos(angle);
        sin[position * half + f] = Math.sin(angle);
      }
    }
    this.cosRows = cos;
    this.sinRows = sin;
    this.rows = rows;
  }
}
