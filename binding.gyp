{
  "targets": [
    {
      "target_name": "ublk",
      "sources": ["addon/module.cc", "addon/ctrl.cc", "addon/queue.cc", "addon/fixed-buffer-probe.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "addon"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "libraries": ["-luring"]
    },
    {
      "target_name": "sdnotify",
      "sources": ["addon/sd-notify.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "addon"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "fileops",
      "sources": ["addon/fileops.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "addon"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "libraries": ["-luring"]
    }
  ]
}
