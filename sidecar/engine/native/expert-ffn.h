// Mixtral experts whole in one native call, on both threads (expert-ffn.cc).
#pragma once
#include <node_api.h>

namespace sirocco {

/** Adds `expert_ffn` to the addon's exports. */
void registerExpertFfn(napi_env env, napi_value exports);

}  // namespace sirocco
