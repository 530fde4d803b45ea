{
  "targets": [
    {
      "target_name": "block_gemm",
      "sources": ["sidecar/engine/experts/native/block-gemm.cc"],
      "cflags_cc": ["-O3", "-ffp-contract=off", "-fno-exceptions", "-std=c++17"],
      "cflags_cc!": ["-fno-rtti"]
    }
  ]
}
