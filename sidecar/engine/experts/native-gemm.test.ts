/**
 * The native products' and experts' own guard rails: every offset is checked against the memory it
 * is given, so a wrong call throws a named error instead of reading or writing outside it. (Their
 * results are specified in block-kernel.test.ts, bit for bit against the reference.)
 */
import { describe, expect, it } from 'vitest';
import { loadNativeGemm, type NativeIsa } from './native-gemm.ts';

const isas = (['avx512vnni', 'avx2'] as const).filter((isa) => loadNativeGemm(isa).gemm !== null);

describe('loading', () => {
  it('is built at install and runs on x86 CPUs with AVX2', () => {
    if (process.arch !== 'x64') return expect(loadNativeGemm().gemm).toBeNull();
    expect(loadNativeGemm().note).toBeNull();
    expect(isas).toContain('avx2');
  });

  it('says why not when asked for an instruction set the CPU lacks, or when turned off', () => {
    const missing = (['avx512vnni', 'avx2'] as NativeIsa[]).find((isa) => !isas.includes(isa));
    if (missing) expect(loadNativeGemm(missing).note).toBe(`this CPU has no ${missing} for the native kernel`);
    const before = process.env.SIROCCO_NATIVE_KERNEL;
    process.env.SIROCCO_NATIVE_KERNEL = 'off';
    try {
      expect(loadNativeGemm()).toEqual({ gemm: null, note: 'turned off by SIROCCO_NATIVE_KERNEL=off' });
    } finally {
      if (before === undefined) delete process.env.SIROCCO_NATIVE_KERNEL;
      else process.env.SIROCCO_NATIVE_KERNEL = before;
    }
  });
});

describe.each(isas)('%s: calls that do not fit are refused', (isa) => {
  const gemm = loadNativeGemm(isa).gemm!;
  const memory = new Uint8Array(65536);
  // 8 rows of 64 inputs: Q4_0 is 8·2·18 = 288 bytes, Q8_0 8·2·34 = 544; 1 activation row: 80 bytes.
  const fits = [memory, 64, 0, 0, 8, 1, 4096, 8192, 8] as const;

  it.each(['q4_0', 'q8_0'] as const)('%s', (format) => {
    const product = gemm.product(format);
    expect(() => product(...fits)).not.toThrow();
    const call = (change: Partial<Record<number, unknown>>) => () => {
      const args: unknown[] = [...fits];
      for (const [at, value] of Object.entries(change)) args[Number(at)] = value;
      (product as (...values: unknown[]) => void)(...args);
    };
    const outOfRange = `${format}_${isa}: shape or offsets out of range`;
    const outside = `${format}_${isa}: the product does not fit in its memory`;
    expect(call({ 1: 48 })).toThrow(outOfRange); // cols not a multiple of 32
    expect(call({ 3: 2 })).toThrow(outOfRange); // rows not in groups of four
    expect(call({ 4: 12 })).toThrow(outOfRange); // past n
    expect(call({ 7: 8194 })).toThrow(outOfRange); // misaligned output
    expect(call({ 2: 65536 - 100 })).toThrow(outside); // weights run past the end
    expect(call({ 6: 65536 - 40 })).toThrow(outside); // activations run past the end
    expect(call({ 5: 4000 })).toThrow(outside); // 4000 activation rows
    // Offsets are unsigned, as WebAssembly reads them: past 2 GiB (a large expert cache's memory) they are
    // checked against the memory like any other, not refused as negative.
    expect(call({ 2: 2 ** 31 + 64 })).toThrow(outside);
    expect(call({ 6: 2 ** 32 - 64 })).toThrow(outside);
    expect(call({ 0: new Float32Array(16) })).toThrow(`${format}_${isa}: memory must be a Uint8Array`);
    expect(call({ 2: 'zero' })).toThrow(`${format}_${isa}: offsets must be numbers`);
    expect(() => (product as (...values: unknown[]) => void)(memory, 64)).toThrow(
      `${format}_${isa}: takes (memory, cols, w, row, rowEnd, m, x, out, n)`,
    );
  });
});

describe.each(isas)('%s: whole experts and shared products that do not fit are refused', (isa) => {
  const gemm = loadNativeGemm(isa).gemm!;
  const [dim, ffn] = [64, 96];
  const memory = new Uint8Array(65536);
  // A Q8_0 expert: w13 [192, 64] = 192·2·34 bytes, w2 [64, 96] = 64·3·34.
  const w2 = 192 * 2 * 34;
  const dims = Int32Array.of(gemm.isaCode, dim, ffn, 2);
  const expert = (rows: number, w13 = 0, w2At = w2, q4 = 0) => Uint32Array.of(q4, w13, w2At, rows);
  const values = (rows: number) => new Float32Array(rows * dim);

  it('expert_ffn', () => {
    expect(() => gemm.expertFfn(memory, dims, expert(3), values(3), values(3))).not.toThrow();
    const refused = (what: string, call: () => void) => expect(call).toThrow(`expert_ffn: ${what}`);
    refused('bad dims', () => gemm.expertFfn(memory, Int32Array.of(gemm.isaCode, 48, ffn, 2), expert(1), values(1), values(1)));
    refused('bad dims', () => gemm.expertFfn(memory, Int32Array.of(gemm.isaCode, dim, ffn, 3), expert(1), values(1), values(1)));
    refused('dims must be an Int32Array of 4', () => gemm.expertFfn(memory, Int32Array.of(1, dim, ffn), expert(1), values(1), values(1)));
    refused('an expert has an unknown format or no rows', () => gemm.expertFfn(memory, dims, expert(0), values(0), values(0)));
    refused('an expert has an unknown format or no rows', () => gemm.expertFfn(memory, dims, expert(1, 0, w2, 2), values(1), values(1)));
    refused("an expert's weights do not fit in the memory", () =>
      gemm.expertFfn(memory, dims, expert(1, 65536 - 100), values(1), values(1)),
    );
    refused("an expert's weights do not fit in the memory", () =>
      gemm.expertFfn(memory, dims, expert(1, 0, 2 ** 32 - 64), values(1), values(1)),
    );
    refused('x and y must hold every expert', () => gemm.expertFfn(memory, dims, expert(2), values(1), values(1)));
    refused('experts must be a Uint32Array of 4 per expert', () =>
      gemm.expertFfn(memory, dims, Uint32Array.of(0, 0, w2), values(1), values(1)),
    );
    refused('takes (memory, dims, experts, x, y)', () => (gemm.expertFfn as (...args: unknown[]) => void)(memory, dims));
  });

  it('shared_product', () => {
    // 8 rows of 64 inputs in Q8_0 (544 bytes) against one activation row at 4096, out at 8192.
    const shape = (n: number, m = 1, cols = 64) => Int32Array.of(gemm.isaCode, 0, cols, n, m, 2);
    expect(() => gemm.sharedProduct(memory, shape(8), 0, 4096, 8192)).not.toThrow();
    const refused = (what: string, call: () => void) => expect(call).toThrow(`shared_product: ${what}`);
    refused('shape or offsets out of range', () => gemm.sharedProduct(memory, shape(8, 1, 48), 0, 4096, 8192));
    refused('shape or offsets out of range', () => gemm.sharedProduct(memory, shape(6), 0, 4096, 8192));
    refused('shape or offsets out of range', () => gemm.sharedProduct(memory, shape(8), 0, 4096, 8194));
    const unknownLayout = Int32Array.of(gemm.isaCode, 3, 64, 8, 1, 2);
    refused('shape or offsets out of range', () => gemm.sharedProduct(memory, unknownLayout, 0, 4096, 8192));
    refused('the product does not fit in its memory', () => gemm.sharedProduct(memory, shape(8), 65536 - 100, 4096, 8192));
    refused('the product does not fit in its memory', () => gemm.sharedProduct(memory, shape(8, 4000), 0, 4096, 8192));
    refused('dims must be an Int32Array of 6', () => gemm.sharedProduct(memory, Int32Array.of(1, 0, 64, 8, 1), 0, 4096, 8192));
  });
});
