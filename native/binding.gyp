{
  "targets": [
    {
      "target_name": "berth_native",
      "sources": ["src/addon.cc", "src/netns.cc", "src/netlink.cc", "src/mount.cc", "src/statfs.cc", "src/loop.cc", "src/fallocate.cc",
                  "src/clone.cc", "src/freeze.cc", "src/quota.cc", "src/unixserve.cc", "src/digest.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "berth_launcher",
      "type": "executable",
      "sources": ["../cni/fastpath/launcher/launcher.c"],
      "defines": ["BERTH_NODE=\"<!(node -p process.execPath)\""],
      "cflags!": ["-fPIC", "-pthread"],
      "ldflags!": ["-pthread", "-rdynamic"],
      "cflags": [
        "-std=c11", "-O2", "-Wall", "-Wextra", "-Wshadow", "-ffreestanding", "-fno-tree-loop-distribute-patterns",
        "-fstack-protector-strong", "-fno-pie", "-fno-asynchronous-unwind-tables"
      ],
      "ldflags": ["-static", "-nostdlib", "-no-pie", "-Wl,--gc-sections,-z,noexecstack,--build-id=none"]
    },
    {
      "target_name": "berth_cnirun",
      "type": "executable",
      "sources": ["bench/cnirun.c"],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wshadow", "-Wno-format-truncation"]
    }
  ]
}
