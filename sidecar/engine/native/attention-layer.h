// A Mixtral layer's attention sublayer, norm and router in one native call (attention-layer.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** The addon's `attention_layer` export (attention-layer.cc documents its arguments). */
napi_value AttentionLayer(napi_env env, napi_callback_info info);

}  // namespace sirocco
