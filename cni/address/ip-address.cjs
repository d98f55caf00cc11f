"use strict";
// The ip-address package, loaded on first use rather than at start-up: its IPv4 module builds
// tables of special-purpose ranges (some forty parsed addresses) when it loads, which a
// plugin that only meets IPv4 addresses never needs. A `require` inside a function is what
// lets the bundler keep the package inside the plugin bundle yet evaluate it only when called.
let lib;
exports.ipAddress = () => {
  lib ??= require("ip-address");
  return lib;
};
