/**
 * The engine's face: everything the server, the CLI and the benchmarks use of it. A converted store
 * goes in (`loadModel`), batched forward steps over sequences come out; Mixtral experts stay
 * resident or are paged from disk through the expert cache (experts/).
 */
export { DEVICES, type Device } from './device.ts';
export {
  DEFAULT_EVICTION_POLICY,
  EVICTION_POLICIES,
  type EvictionPolicy,
  ExpertCache,
  type ExpertCacheCounters,
  type ExpertCacheStats,
} from './experts/expert-cache.ts';
export { type ExpertBits, ExpertStore, expertBlocksInRowOrder, expertFileBytes, expertViews } from './experts/expert-store.ts';
export { nativeSoftmaxWeights } from './experts/native-gemm.ts';
export type { KvReserveStats } from './kv-memory.ts';
export {
  type ForwardEntry,
  type LoadOptions,
  loadModel,
  type ModelInfo,
  type ModelRuntime,
  type RoutingEvent,
  type Sequence,
} from './model-runtime.ts';
