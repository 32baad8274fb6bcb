"""The ``myctr`` command line, with podman's verbs and flags.

Errors follow docker: a myctr error exits 125 with one line on stderr (``myctr: ...``),
a command that cannot be executed 126, one that is not found 127; otherwise the exit
status is the container's (128+N when it was killed by signal N).

Cold start matters (``myctr run`` is timed against crun): heavy modules are imported
inside the commands that use them, and commands that talk to no event loop are driven
without starting one (:func:`main`).
"""

from __future__ import annotations

import sys
from typing import Any

import asyncclick as click

EXIT_MYCTR_ERROR = 125
# Commands that run an event loop (trio); the rest are driven without one.
EVENT_LOOP_COMMANDS: frozenset[str] = frozenset()


@click.group(context_settings={"help_option_names": ["--help"]})
@click.option("--root", envvar="MYCTR_ROOT", type=click.Path(file_okay=False),
              help="Keep all state, sockets and logs under DIR (env MYCTR_ROOT).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto",
              show_default=True, help="auto: console on a TTY, JSON lines otherwise.")
@click.pass_context
async def cli(ctx: click.Context, root: str | None, log_level: str, log_format: str) -> None:
    """myctr: a lightweight Linux container runtime."""
    from runtime import log
    from runtime.paths import StatePaths

    log.configure(log_level, log_format)
    ctx.obj = StatePaths.under(root) if root else StatePaths.default()


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--rootfs", required=True, type=click.Path(),
              help="Root filesystem directory (the overlay's read-only lower layer).")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option("--name", help="Assign a name to the container.")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-e", "--env", multiple=True, help="Set an environment variable (K=V or K).")
@click.option("--env-file", multiple=True, help="Read environment variables from a file.")
@click.option("-h", "--hostname", help="Container host name (default: the short id).")
@click.option("-u", "--user", help="USER[:GROUP], names or numbers.")
@click.option("--group-add", multiple=True, help="Add a supplementary group.")
@click.option("-w", "--workdir", default="/", help="Working directory inside the container.")
@click.option("--cap-add", multiple=True, help="Add a capability (or ALL).")
@click.option("--cap-drop", multiple=True, help="Drop a capability (or ALL).")
@click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only.")
@click.option("-v", "--volume", multiple=True, help="Bind mount SRC:DST[:ro].")
@click.option("--tmpfs", multiple=True, help="Mount a tmpfs at DST[:OPTIONS].")
@click.option("--network", "--net", "network", default="none", show_default=True,
              help="none or host.")
@click.option("--init", "use_init", is_flag=True, help="Run an init (catatonit) as PID 1.")
@click.option("--init-path", help="Path of the init to use with --init.")
@click.option("--ulimit", multiple=True, help="NAME=SOFT[:HARD], e.g. nofile=1024:2048.")
@click.option("--security-opt", multiple=True,
              help="seccomp=unconfined, no-new-privileges[:true|false].")
@click.option("--uidmap", multiple=True, help="CONTAINER:HOST:SIZE (root: run in a user ns).")
@click.option("--gidmap", multiple=True, help="CONTAINER:HOST:SIZE.")
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
async def run(paths: Any, **opts: Any) -> int:
    """Run a command in a new container."""
    from supervisor.foreground import run_foreground
    from supervisor.run_options import foreground_run_from_options

    return run_foreground(paths, foreground_run_from_options(opts))


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers.")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@click.pass_obj
async def ps(paths: Any, show_all: bool, quiet: bool) -> int:
    """List containers."""
    from runtime import containerdir

    states = [s for s in containerdir.list_states(paths) if show_all or s.status == "running"]
    if quiet:
        for s in states:
            click.echo(s.id[:12])
        return 0
    click.echo(f"{'CONTAINER ID':<14}{'NAME':<24}{'STATUS':<12}{'PID':>8}")
    for s in states:
        status = s.status if s.exit_code is None else f"{s.status} ({s.exit_code})"
        click.echo(f"{s.id[:12]:<14}{s.name:<24}{status:<12}{s.pid or '':>8}")
    return 0


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Remove a running container too.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def rm(paths: Any, force: bool, containers: tuple[str, ...]) -> int:
    """Remove containers that have exited."""
    from supervisor.foreground import remove_container

    for ref in containers:
        click.echo(remove_container(paths, ref, force))
    return 0


@cli.group()
async def rootfs() -> None:
    """Root filesystems for --rootfs."""


@rootfs.command("bootstrap")
@click.argument("kind", type=click.Choice(["busybox"]))
@click.argument("dest", type=click.Path())
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
async def rootfs_bootstrap(kind: str, dest: str, force: bool) -> int:
    """Build a minimal root filesystem in DEST from the host's busybox-static."""
    from runtime.bootstrap import bootstrap_busybox

    click.echo(bootstrap_busybox(dest, force=force))
    return 0


def _drive(coro: Any) -> Any:
    """Run a coroutine that never awaits an event loop, without starting one."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("this command needs an event loop; add it to EVENT_LOOP_COMMANDS")


def _invoke(args: list[str]) -> int:
    from runtime.errors import ContainerError

    try:
        if EVENT_LOOP_COMMANDS.intersection(args):
            result = cli(args, prog_name="myctr", standalone_mode=False, _anyio_backend="trio")
        else:
            result = _drive(cli.main(args, prog_name="myctr", standalone_mode=False))
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        click.echo(f"myctr: {exc.format_message()}", err=True)
        return EXIT_MYCTR_ERROR
    except click.exceptions.Abort:
        return 130
    except ContainerError as exc:
        click.echo(f"myctr: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:  # a host failure no layer translated: still one line
        click.echo(f"myctr: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return EXIT_MYCTR_ERROR
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    code = _invoke(sys.argv[1:])
    sys.exit(code)
