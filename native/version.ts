// berth's version, read from package.json (the one place it is written). The bundler inlines
// the file, so the bundled CLI and the release carry the same string.
import pkg from "../package.json" with { type: "json" };

export const BERTH_VERSION: string = pkg.version;
