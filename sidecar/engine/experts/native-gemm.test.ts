/**
 * The native products' own guard rails: every offset is checked against the memory it is given,
 * so a wrong call throws a named error instead of reading or writing outside it. (Their results
 * are specified in block-kernel.test.ts, bit for bit against the reference.)
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
