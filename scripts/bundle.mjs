// Placeholder until plugins exist: bundles entry points with esbuild.
