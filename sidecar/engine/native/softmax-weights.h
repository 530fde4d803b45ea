// A sampled row's softmax weights in native SIMD, the sampler's own arithmetic bit for bit (softmax-weights.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** Adds `softmax_weights` to the addon's exports. */
void registerSoftmaxWeights(napi_env env, napi_value exports);

}  // namespace sirocco
