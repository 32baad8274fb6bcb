"""The ``myctr`` command line: a thin client of the supervisor's control socket, with
podman's verbs and flags (``supervise`` runs the supervisor itself).

Errors follow docker: a myctr error exits 125 with one line on stderr (``myctr: ...``),
a command that cannot be executed 126, one that is not found 127; otherwise the exit
status is the container's (128+N when it was killed by signal N).

Cold start matters: the client commands talk to the socket with a blocking client and
are driven without starting an event loop (:func:`_drive`); ``supervise`` starts trio
itself, after forking its zygote. A verb imports what it needs only when it runs, and
a client's process ends without the interpreter's teardown (:func:`main`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import asyncclick as click

from supervisor import quick
from supervisor.quick import EXIT_MYCTR_ERROR

_supervised = False  # set by supervise: main() then exits the ordinary way


@click.group(context_settings={"help_option_names": ["--help"]})
@click.option("--root", envvar="MYCTR_ROOT", type=click.Path(file_okay=False),
              help="Keep all state, sockets and logs under DIR (env MYCTR_ROOT).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto",
              show_default=True, help="auto: console on a TTY, JSON lines otherwise.")
@click.pass_context
async def cli(ctx: click.Context, root: str | None, log_level: str, log_format: str) -> None:
    """myctr: a lightweight Linux container runtime and supervisor."""
    from runtime import log
    from runtime.paths import StatePaths

    log.configure(log_level, log_format)
    ctx.obj = StatePaths.under(root) if root else StatePaths.default()


def _client(paths: Any) -> Any:
    from supervisor.client import connect

    return connect(paths)


def _resource_options(f: Any) -> Any:
    for key, flag, text in reversed(quick.DEVICE_THROTTLES):
        f = click.option(flag, key, multiple=True, help=text)(f)
    for key, flags, text in reversed(quick.RESOURCE_FLAGS):
        f = click.option(*flags, key, help=text)(f)
    return f


def _run_options(f: Any) -> Any:
    """The flags shared by ``run`` and ``create``."""
    options = [
        click.option("--rootfs", type=click.Path(),
                     help="Root filesystem directory (the overlay's read-only lower layer)."),
        click.option("--rm", "auto_remove", is_flag=True,
                     help="Remove the container when it exits."),
        click.option("--name", help="Assign a name to the container."),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
        click.option("-e", "--env", multiple=True, help="Set an environment variable."),
        click.option("--env-file", multiple=True, help="Read environment variables from a file."),
        click.option("-h", "--hostname", help="Container host name (default: the short id)."),
        click.option("-u", "--user", help="USER[:GROUP], names or numbers."),
        click.option("--group-add", multiple=True, help="Add a supplementary group."),
        click.option("-w", "--workdir", help="Working directory in the container."),
        click.option("--cap-add", multiple=True, help="Add a capability (or ALL)."),
        click.option("--cap-drop", multiple=True, help="Drop a capability (or ALL)."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("-v", "--volume", multiple=True, help="Bind mount SRC:DST[:ro]."),
        click.option("--tmpfs", multiple=True, help="Mount a tmpfs at DST[:OPTIONS]."),
        click.option("--network", "--net", "network",
                     help="none, host, slirp4netns[:OPT=V,...], bridge or a network's name "
                     "(default: slirp4netns rootless, bridge as root)."),
        click.option("-p", "--publish", multiple=True,
                     help="[IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]."),
        click.option("-P", "--publish-all", is_flag=True,
                     help="Publish the image's EXPOSEd ports on random host ports."),
        click.option("--dns", multiple=True, help="A nameserver for /etc/resolv.conf."),
        click.option("--dns-search", multiple=True, help="A search domain."),
        click.option("--add-host", multiple=True, help="NAME:IP into /etc/hosts."),
        click.option("--network-alias", multiple=True,
                     help="Another name on a named network."),
        click.option("--init", "use_init", is_flag=True, help="Run catatonit as PID 1."),
        click.option("--init-path", help="Path of the init to use with --init."),
        click.option("--ulimit", multiple=True, help="NAME=SOFT[:HARD], e.g. nofile=1024:2048."),
        click.option("--security-opt", multiple=True,
                     help="seccomp=unconfined, no-new-privileges[:true|false]."),
        click.option("--uidmap", multiple=True, help="CONTAINER:HOST:SIZE (root: user ns)."),
        click.option("--gidmap", multiple=True, help="CONTAINER:HOST:SIZE."),
        click.option("--stop-signal", help="The signal stop sends (default: the image's "
                     "StopSignal, else SIGTERM)."),
        click.option("--entrypoint", help="Replace the image's entrypoint ('' clears it)."),
        click.option("--restart", default="no", show_default=True,
                     help="no, on-failure[:N], always or unless-stopped."),
        click.option("--restart-delay", type=float, default=0.1, show_default=True,
                     help="First restart delay in seconds (doubles each time)."),
        click.option("--restart-max-delay", type=float, default=60.0, show_default=True,
                     help="Cap of the restart delay in seconds."),
        click.option("--log-opt", multiple=True, help="max-size=10m, max-file=3."),
        click.option("--cgroups", "cgroups", type=click.Choice(["enabled", "disabled"]),
                     default="enabled", show_default=True,
                     help="disabled: no cgroup for this container (no limits, pause, stats)."),
        click.argument("command", nargs=-1),
    ]
    for option in reversed(options):
        f = option(f)
    return _resource_options(f)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the id.")
@_run_options
@click.pass_obj
async def run(paths: Any, detach: bool, **opts: Any) -> int:
    """Run a command in a new container."""
    params = quick.create_params(opts)  # before connecting: a usage error starts nothing
    return quick.run(_client(paths), params, detach)


@cli.command(context_settings={"allow_interspersed_args": False})
@_run_options
@click.pass_obj
async def create(paths: Any, **opts: Any) -> int:
    """Create a container without starting it."""
    click.echo(_client(paths).call("container.create", quick.create_params(opts))["id"])
    return 0


def _each(paths: Any, method: str, refs: tuple[str, ...], **params: Any) -> int:
    client = _client(paths)
    for ref in refs:
        client.call(method, {"id": ref, **params})
        click.echo(ref)
    return 0


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def start(paths: Any, containers: tuple[str, ...]) -> int:
    """Start created or exited containers."""
    return _each(paths, "container.start", containers)


@cli.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True,
              help="Seconds to wait before killing.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def stop(paths: Any, timeout: int, containers: tuple[str, ...]) -> int:
    """Stop containers: stop signal, grace period, SIGKILL."""
    return _each(paths, "container.stop", containers, timeout=timeout)


@cli.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True)
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def restart(paths: Any, timeout: int, containers: tuple[str, ...]) -> int:
    """Restart containers."""
    return _each(paths, "container.restart", containers, timeout=timeout)


@cli.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True)
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def kill(paths: Any, sig: str, containers: tuple[str, ...]) -> int:
    """Send a signal to containers' PID 1."""
    return _each(paths, "container.kill", containers, signal=sig)


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def rm(paths: Any, force: bool, containers: tuple[str, ...]) -> int:
    """Remove containers."""
    return _each(paths, "container.remove", containers, force=force)


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def pause(paths: Any, containers: tuple[str, ...]) -> int:
    """Freeze every process of containers."""
    return _each(paths, "container.pause", containers)


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def unpause(paths: Any, containers: tuple[str, ...]) -> int:
    """Thaw paused containers."""
    return _each(paths, "container.unpause", containers)


@cli.command()
@_resource_options
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def update(paths: Any, containers: tuple[str, ...], **opts: Any) -> int:
    """Change the resource limits of containers (live, and for later runs)."""
    resources = quick.take_resources(opts)
    if not resources:
        raise click.UsageError("update: give at least one limit (--memory, --cpus, ...)")
    return _each(paths, "container.update", containers, resources=resources)


def _size(n: int | None) -> str:
    if n is None:
        return "--"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.4g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{n}B"


@cli.command()
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-i", "--interval", type=float, default=1.0, show_default=True,
              help="Seconds between samples (and the CPU % window).")
@click.argument("containers", nargs=-1)
@click.pass_obj
async def stats(paths: Any, no_stream: bool, fmt: str, interval: float,
                containers: tuple[str, ...]) -> int:
    """Show containers' resource usage (all running ones by default)."""
    from runtime.errors import ContainerError

    client = _client(paths)
    while True:
        if containers:
            rows = [client.call("container.stats", {"id": ref, "interval": min(interval, 1.0)})
                    for ref in containers]
        else:  # every running one that has a cgroup now (one may be restarting)
            rows = []
            for listed in client.call("container.list", {}):
                try:
                    rows.append(client.call("container.stats",
                                            {"id": listed["id"], "interval": 0}))
                except ContainerError:
                    continue
            if interval > 0:  # one CPU window for all of them, not one each
                import time

                time.sleep(min(interval, 1.0))
                later = {}
                for row in rows:
                    try:
                        later[row["id"]] = client.call("container.stats",
                                                       {"id": row["id"], "interval": 0})
                    except ContainerError:
                        continue
                from runtime.cgroups import cpu_percent

                window = min(interval, 1.0)
                rows = [{**later[r["id"]],
                         "cpu_percent": cpu_percent(r, later[r["id"]], window)}
                        for r in rows if r["id"] in later]
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2 if no_stream else None))
        else:
            click.echo(f"{'CONTAINER ID':<14}{'NAME':<20}{'CPU %':>8}  "
                       f"{'MEM USAGE / LIMIT':<22}{'MEM %':>7}  {'BLOCK I/O':<20}{'PIDS':>6}")
            for r in rows:
                limit = r["memory_limit"] or 0
                mem_pct = 100.0 * r["memory_usage"] / limit if limit else 0.0
                click.echo(
                    f"{r['id'][:12]:<14}{r['name'][:19]:<20}{r['cpu_percent']:>7.2f}%  "
                    f"{_size(r['memory_usage']) + ' / ' + _size(limit):<22}{mem_pct:>6.2f}%  "
                    f"{_size(r['block_read']) + ' / ' + _size(r['block_write']):<20}"
                    f"{r['pids']:>6}")
        if no_stream:
            return 0
        sys.stdout.flush()
        if interval > 1.0:
            import time

            time.sleep(interval - 1.0)


@cli.command()
@click.argument("container")
@click.pass_obj
async def top(paths: Any, container: str) -> int:
    """Show the processes of a container."""
    procs = _client(paths).call("container.top", {"id": container})["processes"]
    click.echo(f"{'PID':>8} {'PPID':>8} {'USER':<12}{'TIME':>9}  COMMAND")
    for p in procs:
        click.echo(f"{p['pid']:>8} {p['ppid']:>8} {p['user'][:11]:<12}{p['time']:>9}  "
                   f"{p['command']}")
    return 0


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers.")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--external", is_flag=True, help="Show the containers of build steps too.")
@click.pass_obj
async def ps(paths: Any, show_all: bool, quiet: bool, fmt: str, external: bool) -> int:
    """List containers."""
    return quick.ps(_client(paths), {"show_all": show_all, "quiet": quiet, "fmt": fmt,
                                     "external": external})


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Follow the output.")
@click.option("--tail", type=int, help="Only the last N lines.")
@click.option("--since", help="RFC 3339 time, unix time, or a duration (10m).")
@click.option("--until", help="RFC 3339 time, unix time, or a duration.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.argument("container")
@click.pass_obj
async def logs(paths: Any, follow: bool, tail: int | None, since: str | None,
               until: str | None, timestamps: bool, container: str) -> int:
    """Show a container's logs."""
    params: dict[str, Any] = {"id": container, "follow": follow}
    for key, value in (("tail", tail), ("since", since), ("until", until)):
        if value is not None:
            params[key] = value
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for item in _client(paths).stream("container.logs", params):
        stream = out.get(item["stream"], sys.stdout.buffer)
        prefix = f"{item['time']} " if timestamps else ""
        stream.write(f"{prefix}{item['line']}\n".encode(errors="surrogateescape"))
        stream.flush()
    return 0


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-e", "--env", multiple=True, help="Set an environment variable.")
@click.option("-u", "--user", help="USER[:GROUP] (default: the container's).")
@click.option("-w", "--workdir", help="Working directory (default: the container's).")
@click.argument("container")
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
async def exec_command(paths: Any, interactive: bool, tty: bool, env: tuple[str, ...],
                       user: str | None, workdir: str | None, container: str,
                       command: tuple[str, ...]) -> int:
    """Run a command in a running container."""
    from runtime import options
    from supervisor.attach import exec_attached

    params: dict[str, Any] = {
        "id": container, "command": list(command), "tty": tty, "interactive": interactive,
        "env": [e for e in (options.parse_env(v) for v in env) if e is not None],
    }
    if user is not None:
        params["user"] = user
    if workdir is not None:
        params["workdir"] = workdir
    return exec_attached(_client(paths), params, interactive, tty)


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def inspect(paths: Any, containers: tuple[str, ...]) -> int:
    """Show containers' details as JSON."""
    return _inspect(paths, "container.inspect", "id", containers)


@cli.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
async def wait(paths: Any, containers: tuple[str, ...]) -> int:
    """Wait for containers to exit; print their exit codes."""
    client = _client(paths)
    code = 0
    for ref in containers:
        code = client.call("container.wait", {"id": ref})["exit_code"]
        click.echo(code)
    return 0


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--since", type=int, help="Resume after this event sequence number.")
@click.pass_obj
async def events(paths: Any, fmt: str, since: int | None) -> int:
    """Stream container events."""
    params = {} if since is None else {"since": since}
    for event in _client(paths).stream("events.subscribe", params):
        event.pop("request_id", None)
        if fmt == "json":
            click.echo(json.dumps(event))
        else:
            attrs = " ".join(f"{k}={v}" for k, v in event["attributes"].items())
            click.echo(f"{event['seq']} {event['type']} {event['container'][:12]} "
                       f"({event['name']}) {attrs}".rstrip())
    return 0


@cli.command()
@click.pass_obj
async def info(paths: Any) -> int:
    """Show the supervisor's effective defaults."""
    click.echo(json.dumps(_client(paths).call("info"), indent=2))
    return 0


@cli.command()
@click.option("--detach", is_flag=True, help="Run in the background.")
@click.option("--idle-exit", type=float, help="Exit after this many idle seconds.")
@click.option("--stop", is_flag=True, help="Stop the running supervisor (its containers "
              "stop gracefully) and wait for it.")
@click.pass_obj
async def supervise(paths: Any, detach: bool, idle_exit: float | None, stop: bool) -> int:
    """Run the supervisor (in the foreground unless --detach)."""
    global _supervised
    _supervised = True
    if stop:
        from supervisor.client import try_connect
        from supervisor.daemon import lock_state_root

        client = try_connect(paths)
        if client is None:
            return 0
        client.call("supervisor.shutdown")
        client.close()
        os.close(lock_state_root(paths, wait=60))  # held until it (and its zygote) exit
        return 0
    from supervisor.daemon import main_supervise

    return main_supervise(paths, idle_exit, detach)


@cli.group()
async def image() -> None:
    """Images: import, list, inspect, tag, remove, prune, save, load."""


@image.command("import")
@click.argument("tarball", type=click.Path(dir_okay=False))
@click.argument("name")
@click.pass_obj
async def image_import(paths: Any, tarball: str, name: str) -> int:
    """Import a root filesystem tarball (plain or gzip) as image NAME[:TAG]."""
    result = _client(paths).call("image.import", {"path": os.path.abspath(tarball),
                                                  "name": name})
    click.echo(result["id"])
    return 0


@image.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@click.option("-a", "--all", "all_", is_flag=True, help="Show build cache images too.")
@click.pass_obj
async def image_ls(paths: Any, fmt: str, quiet: bool, all_: bool) -> int:
    """List images."""
    import time

    rows = _client(paths).call("image.list", {"all": all_})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return 0
    if quiet:
        for row in rows:
            click.echo(row["short_id"])
        return 0
    click.echo(f"{'REPOSITORY':<32}{'TAG':<16}{'IMAGE ID':<14}{'CREATED':<22}SIZE")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
        for tag in row["tags"] or ["<none>:<none>"]:
            repo, _, version = tag.rpartition(":")
            click.echo(f"{repo:<32}{version:<16}{row['short_id']:<14}{created:<22}"
                       f"{_size(row['size'])}")
    return 0


cli.add_command(image_ls, "images")  # docker's and podman's spelling too


@image.command("bootstrap")
@click.argument("kind", type=click.Choice(["busybox"]))
@click.argument("name", default="busybox:latest")
@click.pass_obj
async def image_bootstrap(paths: Any, kind: str, name: str) -> int:
    """Build image NAME (default busybox:latest) from the host's busybox-static."""
    click.echo(_client(paths).call("image.bootstrap", {"kind": kind, "name": name})["id"])
    return 0


@image.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
async def image_inspect(paths: Any, refs: tuple[str, ...]) -> int:
    """Show images' details as JSON."""
    return _inspect(paths, "image.inspect", "ref", refs)


@image.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove the containers using it too.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
async def image_rm(paths: Any, force: bool, refs: tuple[str, ...]) -> int:
    """Untag or remove images."""
    client = _client(paths)
    for ref in refs:
        result = client.call("image.remove", {"ref": ref, "force": force})
        for name in result["untagged"]:
            click.echo(f"Untagged: {name}")
        if result["deleted"]:
            click.echo(f"Deleted: {result['deleted']}")
    return 0


cli.add_command(image_rm, "rmi")


@image.command("tag")
@click.argument("ref")
@click.argument("name")
@click.pass_obj
async def image_tag(paths: Any, ref: str, name: str) -> int:
    """Give image REF another NAME[:TAG]."""
    _client(paths).call("image.tag", {"ref": ref, "name": name})
    return 0


@image.command("prune")
@click.pass_obj
async def image_prune(paths: Any) -> int:
    """Remove unnamed images (build cache too) no container uses, then blobs and
    layers no image refers to."""
    result = _client(paths).call("image.prune", {})
    for image_id in result["deleted"]:
        click.echo(f"Deleted: {image_id}")
    click.echo(f"removed {len(result['deleted'])} image(s), {result['blobs']} blob(s), "
               f"{result['layers']} layer(s)")
    return 0


@image.command("history")
@click.argument("ref")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--no-trunc", is_flag=True, help="Do not truncate CREATED BY.")
@click.option("-q", "--quiet", is_flag=True, help="Only print layer ids.")
@click.pass_obj
async def image_history(paths: Any, ref: str, fmt: str, no_trunc: bool, quiet: bool) -> int:
    """Show the history of image REF, newest step first."""
    result = _client(paths).call("image.history", {"ref": ref})
    entries = result["history"]
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return 0
    short = result["id"].split(":", 1)[1][:12]
    if not quiet:
        click.echo(f"{'ID':<14}{'CREATED':<22}{'CREATED BY':<48}{'SIZE':<10}COMMENT")
    for i, entry in enumerate(entries):
        ident = short if i == 0 else "<missing>"
        if quiet:
            click.echo(ident)
            continue
        by = entry["created_by"].replace("\n", " ")
        if not no_trunc and len(by) > 45:
            by = by[:44] + "…"
        created = entry["created"].replace("T", " ")[:19]
        click.echo(f"{ident:<14}{created:<22}{by:<48}{_size(entry['size']):<10}"
                   f"{entry['comment']}")
    return 0


cli.add_command(image_history, "history")  # podman's and docker's spelling


@cli.command()
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image NAME[:TAG].")
@click.option("-f", "--file", "file", help="The Containerfile (default: CONTEXT/"
              "Containerfile or CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V",
              help="A value for an ARG.")
@click.option("--target", help="Build up to this stage.")
@click.option("--no-cache", is_flag=True, help="Run every step; use no cached one.")
@click.option("--network", default="host", show_default=True,
              help="The network of RUN steps: host, none, slirp4netns, bridge or a "
              "network's name.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
              help="Pulling a missing FROM image: require HTTPS.")
@click.option("--creds", metavar="USER:PASS", help="Registry credentials for FROM pulls.")
@click.argument("context", default=".", type=click.Path(file_okay=False))
@click.pass_obj
async def build(paths: Any, tags: tuple[str, ...], file: str | None,
                build_args: tuple[str, ...], target: str | None, no_cache: bool,
                network: str, quiet: bool, tls_verify: bool, creds: str | None,
                context: str) -> int:
    """Build an image from a Containerfile in CONTEXT."""
    from runtime.errors import SpecError

    args = {}
    for item in build_args:
        key, eq, value = item.partition("=")
        if not key:
            raise SpecError(f"invalid --build-arg {item!r}: expected KEY=VALUE")
        if not eq:  # docker: --build-arg NAME takes the value from the environment
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    params = {"context": os.path.abspath(context), "tags": list(tags),
              "file": os.path.abspath(file) if file else None, "build_args": args,
              "target": target, "no_cache": no_cache, "network": network,
              "tls_verify": tls_verify}
    if creds is not None:
        user, sep, password = creds.partition(":")
        if not sep:
            raise click.UsageError("--creds: expected USERNAME:PASSWORD")
        params["creds"] = {"username": user, "password": password}
    client = _client(paths)
    for item in client.stream("image.build", params):
        if quiet:
            continue
        if "output" in item:
            click.echo(item["output"])
        elif "text" in item:
            click.echo(item["text"])
    if quiet:
        click.echo(client.stream_result["id"])
    return 0


# --- registries: pull, push, login, logout ------------------------------------------------

def _auth_file(paths: Any) -> str:
    """podman's auth file: REGISTRY_AUTH_FILE, else ``auth.json`` in the run dir."""
    return os.environ.get("REGISTRY_AUTH_FILE") or os.path.join(paths.run, "auth.json")


def _read_auths(paths: Any) -> dict[str, Any]:
    try:
        with open(_auth_file(paths)) as f:
            doc = json.load(f)
    except (FileNotFoundError, ValueError):
        return {"auths": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("auths"), dict) else {"auths": {}}


def _creds(paths: Any, creds: str | None, ref: str) -> dict[str, str] | None:
    from runtime.images import distribution, reference

    if creds is not None:
        user, sep, password = creds.partition(":")
        if not sep or not user:
            raise click.UsageError("--creds: expected USERNAME:PASSWORD")
        return {"username": user, "password": password}
    found = distribution.auth_entry(_read_auths(paths), reference.parse(ref).registry)
    return {"username": found[0], "password": found[1]} if found else None


def _progress(items: Any, quiet: bool) -> Any:
    """Show pull/push progress on stderr (a line per blob, redrawn on a TTY); the
    stream's final answer is then ``client.stream_result``."""
    tty = sys.stderr.isatty() and not quiet
    rows: dict[str, str] = {}
    shown = 0
    for item in items:
        if quiet or "digest" not in item or item.get("status") == "resolved":
            continue
        short = item["digest"].split(":", 1)[-1][:12]
        status, done, total = item["status"], item.get("current", 0), item.get("total", 0)
        text = {"exists": "already exists", "done": "done"}.get(
            status, f"{status} {_size(done)} / {_size(total)}")
        if tty:
            rows[short] = f"Copying blob {short} {text}"
            sys.stderr.write(f"\x1b[{shown}F" if shown else "")
            sys.stderr.write("".join(f"\x1b[2K{row}\n" for row in rows.values()))
            shown = len(rows)
            sys.stderr.flush()
        elif status in ("exists", "done"):
            click.echo(f"Copying blob {short} {text}", err=True)


_REGISTRY_OPTIONS = (
    click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
                 help="Require HTTPS and verify certificates (false: also plain HTTP)."),
    click.option("--creds", metavar="USER:PASS", help="Registry credentials."),
    click.option("-q", "--quiet", is_flag=True, help="No progress output."),
)


def _registry_options(f: Any) -> Any:
    for option in reversed(_REGISTRY_OPTIONS):
        f = option(f)
    return f


@cli.command()
@_registry_options
@click.argument("ref")
@click.pass_obj
async def pull(paths: Any, tls_verify: bool, creds: str | None, quiet: bool, ref: str) -> int:
    """Pull image REF from a registry (linux/amd64 of a multi-platform image)."""
    client = _client(paths)
    params = {"ref": ref, "tls_verify": tls_verify, "creds": _creds(paths, creds, ref)}
    _progress(client.stream("image.pull", params), quiet)
    click.echo(client.stream_result["id"])
    return 0


@cli.command()
@_registry_options
@click.argument("source")
@click.argument("dest", required=False)
@click.pass_obj
async def push(paths: Any, tls_verify: bool, creds: str | None, quiet: bool, source: str,
               dest: str | None) -> int:
    """Push image SOURCE to a registry, as DEST when given."""
    client = _client(paths)
    params = {"ref": source, "dest": dest, "tls_verify": tls_verify,
              "creds": _creds(paths, creds, dest or source)}
    _progress(client.stream("image.push", params), quiet)
    result = client.stream_result
    if not quiet:
        click.echo(f"Writing manifest {result['digest']} to {result['reference']}", err=True)
    return 0


image.add_command(pull, "pull")
image.add_command(push, "push")


@cli.command()
@click.option("-u", "--username", help="Username (prompted when absent).")
@click.option("-p", "--password", help="Password (prompted when absent).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.argument("registry")
@click.pass_obj
async def login(paths: Any, username: str | None, password: str | None, password_stdin: bool,
                registry: str) -> int:
    """Store credentials for REGISTRY in the auth file (mode 0600)."""
    import base64

    from runtime.containerdir import atomic_write

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    username = username or click.prompt("Username")
    password = password if password is not None else click.prompt("Password", hide_input=True)
    doc = _read_auths(paths)
    doc["auths"][registry] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    os.makedirs(os.path.dirname(_auth_file(paths)), mode=0o700, exist_ok=True)
    atomic_write(_auth_file(paths), json.dumps(doc, indent=2).encode(), mode=0o600)
    click.echo("Login Succeeded!")
    return 0


@cli.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Remove every registry's credentials.")
@click.argument("registry", required=False)
@click.pass_obj
async def logout(paths: Any, all_: bool, registry: str | None) -> int:
    """Remove the credentials of REGISTRY (or all) from the auth file."""
    from runtime.containerdir import atomic_write

    doc = _read_auths(paths)
    if all_:
        doc["auths"] = {}
    elif registry is None:
        raise click.UsageError("logout: name a REGISTRY or use --all")
    elif doc["auths"].pop(registry, None) is None:
        raise click.UsageError(f"logout: not logged in to {registry}")
    if os.path.exists(_auth_file(paths)):
        atomic_write(_auth_file(paths), json.dumps(doc, indent=2).encode(), mode=0o600)
    click.echo(f"Removed login credentials for {registry or 'all registries'}")
    return 0


@image.command("save")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to FILE (default: stdout, unless it is a terminal).")
@click.option("--format", "fmt", type=click.Choice(["docker-archive", "oci-archive"]),
              default="docker-archive", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing (podman's flag).")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
async def image_save(paths: Any, output: str | None, fmt: str, quiet: bool,
                     refs: tuple[str, ...]) -> int:
    """Save images to an archive (podman save); FILE appears only when complete."""
    params = {"refs": list(refs), "format": fmt}
    if output is None:
        if sys.stdout.isatty():
            raise click.UsageError("refusing to write an archive to a terminal: use -o FILE")
        sys.stdout.flush()
        _client(paths).call("image.save", params, fds=[sys.stdout.fileno()])
        return 0
    target = os.path.abspath(output)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _client(paths).call("image.save", params, fds=[fd])
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return 0


@image.command("load")
@click.option("-i", "--input", "input_", type=click.Path(exists=True, dir_okay=False),
              help="Read from FILE (default: stdin).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing.")
@click.pass_obj
async def image_load(paths: Any, input_: str | None, quiet: bool) -> int:
    """Load images from a docker-archive or oci-archive, plain or gzip (podman load)."""
    if input_ is None and sys.stdin.isatty():
        raise click.UsageError("no archive: give -i FILE or pipe one to stdin")
    fd = 0 if input_ is None else os.open(input_, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = _client(paths).call("image.load", {}, fds=[fd])
    finally:
        if fd:
            os.close(fd)
    for loaded in [] if quiet else result["images"]:
        for name in loaded["names"] or [loaded["id"]]:
            click.echo(f"Loaded image: {name}")
    return 0


cli.add_command(image_save, "save")  # podman's and docker's spelling
cli.add_command(image_load, "load")


@cli.command()
@click.argument("container")
@click.argument("private_port", required=False)
@click.pass_obj
async def port(paths: Any, container: str, private_port: str | None) -> int:
    """List a container's published ports (or the host side of one)."""
    doc = _client(paths).call("container.inspect", {"id": container})
    ports = (doc.get("network") or {}).get("ports") or []
    for p in ports:
        key = f"{p['container_port']}/{p['protocol']}"
        if private_port and private_port not in (key, str(p["container_port"])):
            continue
        host = f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}"
        click.echo(host if private_port else f"{key} -> {host}")
    return 0


@cli.group()
async def network() -> None:
    """Networks: create, ls, inspect, rm, connect, disconnect."""


@network.command("create")
@click.option("--subnet", help="CIDR, e.g. 10.90.0.0/24 (default: a free 10.89.N.0/24).")
@click.option("--gateway", help="The bridge's address (default: the first of the subnet).")
@click.argument("name")
@click.pass_obj
async def network_create(paths: Any, subnet: str | None, gateway: str | None,
                         name: str) -> int:
    """Create a bridge network NAME."""
    doc = _client(paths).call("network.create", {"name": name, "subnet": subnet,
                                                 "gateway": gateway})
    click.echo(doc["name"])
    return 0


@network.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
@click.pass_obj
async def network_ls(paths: Any, fmt: str, quiet: bool) -> int:
    """List networks."""
    rows = _client(paths).call("network.list", {})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif quiet:
        for row in rows:
            click.echo(row["name"])
    else:
        click.echo(f"{'NAME':<20}{'DRIVER':<10}{'SUBNET':<20}{'GATEWAY':<16}BRIDGE")
        for row in rows:
            click.echo(f"{row['name']:<20}{row['driver']:<10}{row['subnet']:<20}"
                       f"{row['gateway']:<16}{row['bridge']}")
    return 0


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
async def network_inspect(paths: Any, names: tuple[str, ...]) -> int:
    """Show networks' details as JSON."""
    return _inspect(paths, "network.inspect", "name", names)


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
async def network_rm(paths: Any, names: tuple[str, ...]) -> int:
    """Remove networks (no container may use them)."""
    client = _client(paths)
    for name in names:
        client.call("network.remove", {"name": name})
        click.echo(name)
    return 0


@network.command("connect")
@click.option("--alias", "aliases", multiple=True, help="Another name on the network.")
@click.argument("name")
@click.argument("container")
@click.pass_obj
async def network_connect(paths: Any, aliases: tuple[str, ...], name: str,
                          container: str) -> int:
    """Put a (stopped) container on network NAME, from its next start."""
    _client(paths).call("network.connect", {"name": name, "id": container,
                                            "aliases": list(aliases)})
    return 0


@network.command("disconnect")
@click.argument("name")
@click.argument("container")
@click.pass_obj
async def network_disconnect(paths: Any, name: str, container: str) -> int:
    """Take a (stopped) container off network NAME (it then has --network none)."""
    _client(paths).call("network.disconnect", {"name": name, "id": container})
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


def _inspect(paths: Any, method: str, key: str, refs: tuple[str, ...]) -> int:
    """``inspect`` of containers, images or networks: a JSON list, one per ref."""
    client = _client(paths)
    click.echo(json.dumps([client.call(method, {key: ref}) for ref in refs], indent=2))
    return 0


def _drive(coro: Any) -> Any:
    """Run a coroutine that never awaits an event loop, without starting one."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a CLI command awaited an event loop; commands use blocking I/O")


def _invoke(args: list[str]) -> int:
    from runtime.errors import ContainerError

    try:
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
    if _supervised:  # the supervisor's own exit stays the ordinary one
        sys.exit(code)
    quick.exit_now(code)


def parse_for_quick(argv: list[str]) -> dict[str, Any]:
    """The supervisor's side of the quick path (method ``cli.parse``): parse a quick
    verb's ``argv`` with its click command, for the client to run the verb's body on.

    The result: ``{"verb", "params"}``; or ``{"output", "exit_code"}`` for ``--help``.
    A usage error raises SpecError with click's message (the client prints it as
    ``myctr: ...`` and exits 125, as the full CLI does).
    """
    import contextlib
    import io

    from runtime.errors import SpecError

    if not argv or argv[0] not in quick.VERBS:
        raise SpecError(f"not a quick verb: {argv[:1]}")
    verb = argv[0]
    command = cli.commands[verb]
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):  # --help prints (and the loop is ours)
            ctx = _drive(command.make_context(
                verb, list(argv[1:]), parent=click.Context(cli, info_name="myctr")))
    except click.exceptions.Exit as done:
        return {"output": output.getvalue(), "exit_code": done.exit_code}
    except click.UsageError as exc:
        raise SpecError(exc.format_message()) from None
    return {"verb": verb, "params": ctx.params}
