"""msnpipe COMMAND [ARGS]: every stage's command line as one installed program.

    pip install -e .                                  # or: make setup (python -m ... then works)
    msnpipe shard /data/imagenet out/shards           # = python -m shard /data/imagenet out/shards
    msnpipe embed out/shards --split val ...          # = python -m embed ...
    msnpipe probe.knn out/embeddings.zarr ...         # = python -m probe.knn ...
    msnpipe COMMAND --help                            # that command's options

Each command is a module's `main`, loaded only when it is the one asked for.
"""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS = {  # command -> module whose main(argv) runs it
    "shard": "shard.__main__", "shard.verify": "shard.verify",
    "embed": "embed.__main__", "embed.info": "embed.info", "embed.verify": "embed.verify",
    "embed.export": "embed.export", "embed.from_npy": "embed.from_npy",
    "probe": "probe.__main__", "probe.msn": "probe.msn", "probe.knn": "probe.knn",
    "probe.plot": "probe.plot", "probe.table": "probe.table", "probe.diagnose": "probe.diagnose",
    "probe.active": "probe.active",
    "bench": "bench.__main__", "bench.demo": "bench.demo", "bench.report": "bench.report",
}


def usage() -> str:
    return __doc__.split("\n\n", 1)[0] + "\n\ncommands: " + ", ".join(COMMANDS) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run `msnpipe COMMAND ARGS`: COMMAND's main with ARGS; 2 for an unknown command."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        print(f"msnpipe: unknown command {name!r}{hint}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    return int(module.main(rest) or 0)
