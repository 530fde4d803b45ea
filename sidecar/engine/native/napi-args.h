// What every N-API entry point of the addon needs: a named error to throw, typed arrays to read.
#pragma once
#include <node_api.h>
#include <stdio.h>

namespace sirocco {

/** Throws ERR_SIROCCO_NATIVE_KERNEL "<call>: <what>"; returns null for the entry point to return. */
inline napi_value throwKernelError(napi_env env, const char* call, const char* what) {
  char message[200];
  snprintf(message, sizeof message, "%s: %s", call, what);
  napi_throw_error(env, "ERR_SIROCCO_NATIVE_KERNEL", message);
  return nullptr;
}

/** A typed array's data and element count, when it has the expected type. */
template <typename T>
bool typedArray(napi_env env, napi_value value, napi_typedarray_type expected, T** data, size_t* length) {
  napi_typedarray_type type;
  void* bytes = nullptr;
  if (napi_get_typedarray_info(env, value, &type, length, &bytes, nullptr, nullptr) != napi_ok || type != expected) return false;
  *data = static_cast<T*>(bytes);
  return true;
}

}  // namespace sirocco
