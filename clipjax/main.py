"""Command-line entry point.

  python -m clipjax.main --config=configs/FILE.py[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Loads and validates the config, builds the device mesh and runs `config.task` in DIR. A multi-host job runs
the same command on every host: inside SLURM or on a TPU pod slice the hosts find each other; elsewhere pass
the three multi-host flags (see launch/). Running the same command again resumes from DIR. A run that
finishes writes DIR/summary.json (its final metrics). Exit status: 0 done; 2 bad config (one line on
stderr); 1 another problem the user must fix, e.g. an unwritable workdir or checkpoints from another model
(one line); 75 stopped by SIGTERM / SIGINT after saving a checkpoint (run the command again to resume).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

USAGE = "usage: python -m clipjax.main --config=configs/FILE.py[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]"


@dataclasses.dataclass
class CommandLine:
    spec: str  # config file with optional :ARGS
    workdir: str
    overrides: list[tuple[str, str]]  # (dotted key, value text)
    distributed: dict[str, str]  # multi-host flags given, by name


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Splits argv into its parts. Accepts `--flag=value` and `--flag value`. Raises ConfigError on anything
    else."""
    from clipjax.distributed import FLAGS as DISTRIBUTED_FLAGS
    from clipjax.errors import ConfigError

    spec, workdir, overrides, distributed = None, None, [], {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; {USAGE}")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if not args or args[0].startswith("--"):
                raise ConfigError(f"--{name} needs a value; {USAGE}")
            value = args.pop(0)
        if name == "config":
            spec = value
        elif name == "workdir":
            workdir = value
        elif name.startswith("config."):
            overrides.append((name[len("config.") :], value))
        elif name in DISTRIBUTED_FLAGS:
            distributed[name] = value
        else:
            raise ConfigError(f"unknown flag --{name}; {USAGE}")
    if spec is None or workdir is None:
        raise ConfigError(f"--config and --workdir are required; {USAGE}")
    if "://" in workdir:
        raise ConfigError(
            f"--workdir={workdir}: the workdir (config, metrics, logs) is a local or mounted directory; checkpoints "
            "can go to a bucket with --config.checkpoint_dir=gs://..."
        )
    return CommandLine(spec, workdir, overrides, distributed)


def format_summary(task: str, workdir: str, summary: dict[str, Any]) -> str:
    """The final report: every metric, then steps and wall time."""
    lines = [f"clipjax {task} finished in {workdir}"]
    for key in sorted(k for k in summary if "/" in k):
        lines.append(f"  {key:<24} {summary[key]:.4f}" if summary[key] < 10 else f"  {key:<24} {summary[key]:,.1f}")
    minutes, seconds = divmod(summary["wall_time_s"], 60)
    lines.append(f"  {'steps':<24} {summary['steps']}")
    compile_s = f" (compile {summary['compile_time_s']:.1f}s)" if "compile_time_s" in summary else ""
    lines.append(f"  {'wall time':<24} {int(minutes)}m{seconds:04.1f}s{compile_s}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return 0
    # Imported here so that --help and usage errors answer before JAX starts.
    import jax

    from clipjax import distributed
    from clipjax.compilation_cache import enable_compilation_cache
    from clipjax.config import load_config
    from clipjax.errors import Preempted, UserError
    from clipjax.parallel import make_mesh
    from clipjax.tasks import get_task
    from clipjax.train.workdir import save_summary
    from clipjax.validation import validate

    try:
        command = parse_command_line(argv)
        config = load_config(command.spec, command.overrides)
        enable_compilation_cache(config.compilation_cache_dir)  # before anything compiles
        distributed.initialize(command.distributed)  # before anything asks JAX for devices
        workdir = command.workdir
        validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
        mesh = make_mesh(config.mesh)
        task = get_task(config.task)
        if jax.process_index() == 0:
            per_device = config.batch_size // jax.device_count()
            layout = ", ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
            hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
            training = (
                f", global batch {config.batch_size} ({per_device} per device), {config.total_steps} steps"
                if task.trains
                else ""
            )
            print(
                f"clipjax {config.task}: {jax.device_count()} {jax.devices()[0].platform} devices{hosts}, mesh "
                f"{layout}{training}",
                flush=True,
            )
        summary = task.run(config, workdir, mesh)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_status
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return e.exit_status
    if jax.process_index() == 0:
        save_summary(workdir, config.task, summary, list(argv))
        print(format_summary(config.task, workdir, summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
