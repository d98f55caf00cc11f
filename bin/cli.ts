// berth's command line. Subcommands are loaded lazily so `berth version` stays fast.
import { BERTH_VERSION } from "../native/version.ts";

const USAGE = `usage: berth <command>

commands:
  up          run berth on this host in the foreground: the overlay agent on the embedded
              store (single-host defaults) and the CSI driver on unix:///run/berth/csi.sock
  agent       run the overlay agent (berth agent --help)
  cni-server  run only the CNI fast-path server, for hosts without the agent
  csi         run the CSI driver (berth csi --help)
  docker-plugin  serve berth volumes to the Docker Engine's plugin API (berth docker-plugin --help)
  version     print berth's version
  doctor      check that this host has what berth needs
  status      what berth is doing here: agent, subnet and peers, pools, attachments, volumes
              (berth status --help)
  install     install this release: plugins into the CNI bin dir, a network config, service
              units (berth install --help)
  uninstall   remove what berth install wrote (berth uninstall --help)
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "version":
    case "--version":
      console.log(`berth ${BERTH_VERSION} (node ${process.version})`);
      return 0;
    case "up": {
      const { runUpWithStorage } = await import("./up.ts");
      return runUpWithStorage(rest);
    }
    case "agent": {
      const { runAgentCommand } = await import("../overlay/agent.ts");
      return runAgentCommand(rest);
    }
    case "cni-server": {
      const { runCniServerCommand } = await import("./cni-server.ts");
      return runCniServerCommand(rest);
    }
    case "csi": {
      const { runCsiCommand } = await import("../csi/main.ts");
      return runCsiCommand(rest);
    }
    case "docker-plugin": {
      const { runDockerPluginCommand } = await import("./docker-plugin.ts");
      return runDockerPluginCommand(rest);
    }
    case "status": {
      const { runStatus } = await import("./status.ts");
      return runStatus(rest);
    }
    case "doctor": {
      const { runDoctor } = await import("./doctor.ts");
      return runDoctor(rest);
    }
    case "install":
    case "uninstall": {
      const { runInstallCommand } = await import("./install.ts");
      return runInstallCommand(cmd, rest);
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`berth: unknown command "${cmd}"\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`berth: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
