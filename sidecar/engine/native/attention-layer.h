// A Mixtral layer's attention sublayer, norm and router in one native call (attention-layer.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** Adds `attention_layer` to the addon's exports. */
void registerAttentionLayer(napi_env env, napi_value exports);

}  // namespace sirocco
