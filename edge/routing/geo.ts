/**
 * Where a client is, from Cloudflare's `request.cf`, and how far that is from a region.
 * Coordinates when present; otherwise the centroid of the client's continent.
 */

export interface GeoPoint {
  lat: number;
  lon: number;
}

/** The `request.cf` fields routing reads (all optional: absent under local dev and in tests). */
export interface ClientGeo {
  latitude?: string | number;
  longitude?: string | number;
  continent?: string;
  country?: string;
  colo?: string;
}

export interface ClientLocation {
  point: GeoPoint | null;
  continent: string | null;
  country: string | null;
  /** A region the client asked for by name (`x-sirocco-region`); ranked first while it is usable. */
  preferredRegion?: string | null;
}

/** Rough population-weighted centroids for Cloudflare's continent codes. */
export const CONTINENT_CENTROIDS: Record<string, GeoPoint> = {
  AF: { lat: 2.0, lon: 21.0 },
  AN: { lat: -80.0, lon: 0.0 },
  AS: { lat: 29.0, lon: 95.0 },
  EU: { lat: 50.0, lon: 10.0 },
  NA: { lat: 40.0, lon: -95.0 },
  OC: { lat: -25.0, lon: 135.0 },
  SA: { lat: -15.0, lon: -60.0 },
};

const EARTH_RADIUS_KM = 6371;

/** Great-circle distance (haversine). */
export function greatCircleKm(a: GeoPoint, b: GeoPoint): number {
  const radians = (degrees: number) => (degrees * Math.PI) / 180;
  const dLat = radians(b.lat - a.lat);
  const dLon = radians(b.lon - a.lon);
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(radians(a.lat)) * Math.cos(radians(b.lat)) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}

function coordinate(value: string | number | undefined, limit: number): number | null {
  if (value === undefined || value === '') return null;
  const parsed = typeof value === 'number' ? value : Number(value);
  return Number.isFinite(parsed) && Math.abs(parsed) <= limit ? parsed : null;
}

export function clientLocation(cf: ClientGeo | undefined, preferredRegion: string | null = null): ClientLocation {
  const continent = typeof cf?.continent === 'string' ? cf.continent.toUpperCase() : null;
  const country = typeof cf?.country === 'string' ? cf.country.toUpperCase() : null;
  const lat = coordinate(cf?.latitude, 90);
  const lon = coordinate(cf?.longitude, 180);
  const point = lat !== null && lon !== null ? { lat, lon } : continent ? (CONTINENT_CENTROIDS[continent] ?? null) : null;
  return { point, continent, country, preferredRegion };
}
