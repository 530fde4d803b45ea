import { describe, expect, it } from 'vitest';
import { autoExpertCacheBytes } from './memory-budget.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** /proc/meminfo as Linux writes it (kB = KiB). */
function meminfo(totalGiB: number, availableGiB: number): string {
  const kib = (gib: number) => String(Math.round(gib * 1024 * 1024)).padStart(8);
  return [
    `MemTotal:       ${kib(totalGiB)} kB`,
    `MemFree:        ${kib(availableGiB / 2)} kB`,
    `MemAvailable:   ${kib(availableGiB)} kB`,
    'Buffers:           12345 kB',
    `Cached:         ${kib(availableGiB / 3)} kB`,
    '',
  ].join('\n');
}

// Mixtral 8x7B with int4 experts: 32 layers × 8 experts of ≈ 84 MiB.
const MIXTRAL = { expertBytes: 84 * MiB, totalExperts: 256 };

describe('autoExpertCacheBytes', () => {
  it('keeps every expert when they fit beside the headroom and the dense weights', () => {
    const { bytes, reason } = autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 1.5 * GiB, meminfo: meminfo(64, 60), cgroup: null });
    expect(bytes).toBe(256 * 84 * MiB);
    expect(reason).toBe('all 256 experts fit (21.0 GiB): 60.0 GiB available less 12.8 GiB headroom and 1.5 GiB of dense weights');
  });

  it('takes the whole experts that fit in MemAvailable less 20% of MemTotal and the dense weights', () => {
    const { bytes, reason } = autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 1.4 * GiB, meminfo: meminfo(24, 22.3), cgroup: null });
    const usable = 22.3 * GiB - 4.8 * GiB - 1.4 * GiB;
    expect(bytes).toBe(Math.floor(usable / (84 * MiB)) * 84 * MiB);
    expect(bytes % (84 * MiB)).toBe(0);
    expect(reason).toBe('196 of 256 experts (16.1 GiB of 21.0 GiB): 22.3 GiB available less 4.8 GiB headroom and 1.4 GiB of dense weights');
  });

  it('keeps at least 1 GiB of headroom on a small machine', () => {
    const { bytes, reason } = autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 0, meminfo: meminfo(4, 3), cgroup: null });
    expect(bytes).toBe(Math.floor((2 * GiB) / (84 * MiB)) * 84 * MiB);
    expect(reason).toMatch(/^24 of 256 experts \(2\.0 GiB of 21\.0 GiB\): 3\.0 GiB available less 1\.0 GiB headroom$/);
  });

  it('returns 0 when nothing fits, for the caller to refuse with its minimum', () => {
    const { bytes, reason } = autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 2 * GiB, meminfo: meminfo(8, 2.5), cgroup: null });
    expect(bytes).toBe(0);
    expect(reason).toBe('0 of 256 experts (0.0 MiB of 21.0 GiB): 2.5 GiB available less 1.6 GiB headroom and 2.0 GiB of dense weights');
  });

  it('reports tiny models in MiB', () => {
    const { bytes, reason } = autoExpertCacheBytes({
      expertBytes: 30 * 1024,
      totalExperts: 16,
      residentBytes: 2 * MiB,
      meminfo: meminfo(16, 12),
      cgroup: null,
    });
    expect(bytes).toBe(16 * 30 * 1024);
    expect(reason).toBe('all 16 experts fit (0.5 MiB): 12.0 GiB available less 3.2 GiB headroom and 2.0 MiB of dense weights');
  });

  it("is held to a container's memory limit, with the headroom taken from the limit", () => {
    const { bytes, reason } = autoExpertCacheBytes({
      ...MIXTRAL,
      residentBytes: GiB,
      meminfo: meminfo(512, 480),
      cgroup: { limitBytes: 16 * GiB, usageBytes: 2 * GiB },
    });
    expect(bytes).toBe(Math.floor((14 * GiB - 3.2 * GiB - GiB) / (84 * MiB)) * 84 * MiB);
    expect(reason).toMatch(
      /: 14\.0 GiB available under the container's 16\.0 GiB limit less 3\.2 GiB headroom and 1\.0 GiB of dense weights$/,
    );
  });

  it('ignores a container limit above what the machine has available', () => {
    const limited = autoExpertCacheBytes({
      ...MIXTRAL,
      residentBytes: 0,
      meminfo: meminfo(24, 10),
      cgroup: { limitBytes: 2 ** 62, usageBytes: GiB },
    });
    expect(limited).toEqual(autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 0, meminfo: meminfo(24, 10), cgroup: null }));
  });

  it('falls back to os.freemem() when meminfo has no MemAvailable, and reads the real machine by default', () => {
    const fallback = autoExpertCacheBytes({ ...MIXTRAL, residentBytes: 0, meminfo: 'MemTotal:  1000 kB\n', cgroup: null });
    expect(fallback.bytes).toBeGreaterThanOrEqual(0);
    expect(fallback.reason).toMatch(/available less 1\.0 GiB headroom$/);
    const real = autoExpertCacheBytes({ expertBytes: MiB, totalExperts: 4, residentBytes: 0 });
    expect(real.bytes % MiB).toBe(0);
    expect(real.bytes).toBeLessThanOrEqual(4 * MiB);
  });

  it.each([
    [{ expertBytes: 0, totalExperts: 8, residentBytes: 0 }, /expertBytes/],
    [{ expertBytes: MiB, totalExperts: 0, residentBytes: 0 }, /totalExperts/],
    [{ expertBytes: MiB, totalExperts: 8, residentBytes: -1 }, /residentBytes/],
  ])('refuses %j', (options, message) => {
    expect(() => autoExpertCacheBytes({ ...options, meminfo: meminfo(8, 4), cgroup: null })).toThrow(message);
  });
});
