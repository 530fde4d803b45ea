// A sampled row's softmax weights in native SIMD, the sampler's own arithmetic bit for bit (softmax-weights.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** The addon's `softmax_weights` export (softmax-weights.cc documents its arguments). */
napi_value SoftmaxWeights(napi_env env, napi_callback_info info);

}  // namespace sirocco
