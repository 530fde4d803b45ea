// Mixtral experts whole in one native call, on both threads (expert-ffn.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** The addon's `expert_ffn` export (expert-ffn.cc documents its arguments). */
napi_value ExpertFfn(napi_env env, napi_callback_info info);

}  // namespace sirocco
