# The native kernels (sidecar/engine/native: expert products, attention layer), built by `npm ci` (scripts/build-native.mjs).
# -ffp-contract=off: its fp32 steps must round as written to match the WebAssembly kernel bit for bit.
# -Wno-maybe-uninitialized: GCC 12's own AVX-512 headers trip it.
{
  "targets": [
    {
      "target_name": "block_gemm",
      "sources": [
        "sidecar/engine/native/block-gemm.cc",
        "sidecar/engine/native/attention-layer.cc",
        "sidecar/engine/native/expert-ffn.cc",
        "sidecar/engine/native/helper-thread.cc",
        "sidecar/engine/native/softmax-weights.cc"
      ],
      "cflags_cc": ["-O3", "-ffp-contract=off", "-fno-exceptions", "-std=c++17", "-Wno-maybe-uninitialized"]
    }
  ]
}
