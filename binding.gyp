{
  "targets": [
    {
      "target_name": "resnet_native",
      "sources": [
        "native/src/addon.c",
        "native/src/conv.c",
        "native/src/conv_dense.c",
        "native/src/conv_gather.c",
        "native/src/conv_pil.c",
        "native/src/conv_pil2.c",
        "native/src/conv_prow.c",
        "native/src/conv_qgrid.c",
        "native/src/conv_rows.c",
        "native/src/conv_taps.c",
        "native/src/conv_wino.c",
        "native/src/conv_wino2.c",
        "native/src/gemm.c",
        "native/src/ops.c",
        "native/src/pool.c"
      ],
      "cflags_c": ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE", "-fno-math-errno"],
      "cflags!": ["-O2"],
      "libraries": ["-lpthread", "-lm"]
    }
  ]
}
