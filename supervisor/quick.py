"""The ``myctr`` entry point, and its quick path for the hot verbs.

A cold ``myctr run`` spent ~35 ms importing asyncclick and the stdlib modules it pulls
in, more than the container's whole start. When a supervisor answers, the verbs in
:data:`VERBS` skip all of that: the supervisor, which has the click commands loaded
anyway, parses the arguments (method ``cli.parse``, with the very command definitions
of :mod:`supervisor.cli`, so flags, defaults, help and usage errors are the same), and
the verb's body here runs on the answer with the lean client. Everything else (other
verbs, no supervisor yet, global flags other than ``--root``, a supervisor without
``cli.parse``) goes to :mod:`supervisor.cli` as before.

This module, the client, the attach loop and the state paths import C modules and
each other only: a test holds them to it.
"""

from __future__ import annotations

import os
import sys

from runtime.errors import ContainerError, SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from supervisor.client import Client

EXIT_MYCTR_ERROR = 125
STATUS_WIDTH = 36
GLOBAL_VALUE_FLAGS = ("--root", "--log-level", "--log-format")


# --- the verbs' bodies (the click commands in supervisor.cli call them too) ------------


def create_params(opts: dict[str, Any], cwd: str | None = None,
                  environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``run``/``create`` flags to create params; what is the client's (its environment,
    its files, its working directory) is resolved here, the rest by the supervisor.
    ``cwd`` and ``environ``: the client's, when the supervisor does this for it
    (``cli.run``); ours by default."""
    params: dict[str, Any] = {
        "command": list(opts["command"]),
        "env": _env(opts["env_file"], opts["env"], cwd, environ),
        "read_only": opts["read_only"],
        "tty": opts["tty"], "interactive": opts["interactive"],
        "init": opts["use_init"], "auto_remove": opts["auto_remove"],
        "restart": opts["restart"], "restart_delay": opts["restart_delay"],
        "restart_max_delay": opts["restart_max_delay"],
    }
    if opts["cgroups"] != "enabled":
        params["cgroups"] = opts["cgroups"]
    resources = take_resources(opts)
    if resources:
        params["resources"] = resources
    if opts["rootfs"]:
        params["rootfs"] = os.path.abspath(os.path.join(cwd or os.getcwd(), opts["rootfs"]))
    elif params["command"]:  # run [OPTIONS] IMAGE [COMMAND [ARG...]]
        params["image"] = params["command"].pop(0)
    else:
        raise SpecError("give an IMAGE (or --rootfs DIR) and a command")
    if opts["workdir"] is not None:
        params["workdir"] = opts["workdir"]
    if opts["stop_signal"]:
        params["stop_signal"] = opts["stop_signal"]
    if opts["network"]:
        params["network"] = opts["network"]
    for key, name in (("publish", "publish"), ("dns", "dns"), ("dns_search", "dns_search"),
                      ("add_host", "add_hosts"), ("network_alias", "network_aliases")):
        if opts[key]:
            params[name] = list(opts[key])
    if opts["publish_all"]:
        params["publish_all"] = True
    if opts["entrypoint"] is not None:  # docker: one word; "" clears the image's
        params["entrypoint"] = [opts["entrypoint"]] if opts["entrypoint"] else []
    for key, flag in (("name", "name"), ("hostname", "hostname"), ("user", "user"),
                      ("init_path", "init_path")):
        if opts[flag] is not None:
            params[key] = opts[flag]
    for key, flag in (("cap_add", "cap_add"), ("cap_drop", "cap_drop"), ("volumes", "volume"),
                      ("tmpfs", "tmpfs"), ("ulimits", "ulimit"),
                      ("security_opt", "security_opt"), ("uidmap", "uidmap"),
                      ("gidmap", "gidmap"), ("group_add", "group_add"),
                      ("log_opts", "log_opt")):
        if opts[flag]:
            params[key] = list(opts[flag])
    return params


# Resource flags as docker spells them (the click options of run, create and update
# are made from these); values go to the supervisor as typed.
RESOURCE_FLAGS = (
    ("memory", ("-m", "--memory"), "Memory limit (e.g. 64m, 1g)."),
    ("memory_swap", ("--memory-swap",), "Memory plus swap limit; -1: unlimited swap."),
    ("memory_reservation", ("--memory-reservation",), "Memory soft limit."),
    ("cpus", ("--cpus",), "Number of CPUs (e.g. 0.5, 1.5)."),
    ("cpu_period", ("--cpu-period",), "CPU CFS period in µs."),
    ("cpu_quota", ("--cpu-quota",), "CPU CFS quota in µs."),
    ("cpu_shares", ("-c", "--cpu-shares"), "CPU shares (relative weight)."),
    ("cpuset_cpus", ("--cpuset-cpus",), "CPUs to run on (e.g. 0-1,3)."),
    ("cpuset_mems", ("--cpuset-mems",), "Memory nodes to use."),
    ("pids_limit", ("--pids-limit",), "Process limit; -1: unlimited."),
    ("blkio_weight", ("--blkio-weight",), "Block IO weight, 10-1000."),
)
DEVICE_THROTTLES = (
    ("device_read_bps", "--device-read-bps", "Read rate limit, DEVICE:RATE (e.g. /dev/sda:1mb)."),
    ("device_write_bps", "--device-write-bps", "Write rate limit, DEVICE:RATE."),
    ("device_read_iops", "--device-read-iops", "Read IO/s limit, DEVICE:N."),
    ("device_write_iops", "--device-write-iops", "Write IO/s limit, DEVICE:N."),
)


def take_resources(opts: dict[str, Any]) -> dict[str, Any]:
    """The resource flags that were given, taken out of ``opts``."""
    found: dict[str, Any] = {key: opts.pop(key) for key, _, _ in RESOURCE_FLAGS
                             if opts.get(key) is not None}
    for key, _, _ in DEVICE_THROTTLES:
        values = opts.pop(key, ())
        if values:
            found[key] = list(values)
    return found


def _env(env_files: list[str] | tuple[str, ...], values: list[str] | tuple[str, ...],
         cwd: str | None, environ: dict[str, str] | None) -> list[str]:
    """``--env-file`` then ``-e``, merged (runtime.options, ~2 ms of imports, only when
    there are some)."""
    if not env_files and not values:
        return []
    from runtime import options

    from_files = [e for path in env_files
                  for e in options.read_env_file(os.path.join(cwd or "", path), environ)]
    env = [e for e in (options.parse_env(v, environ) for v in values) if e is not None]
    return list(options.merge_env(from_files, env))


def run(client: Client, params: dict[str, Any], detach: bool) -> int:
    """``myctr run`` of ``create_params``: detached, print the id; else attached, the
    container's status."""
    if detach:
        _echo(client.call("container.run", params)["id"])
        return 0
    from supervisor.attach import run_attached

    return run_attached(client, params, params["interactive"], params["tty"])


def ps(client: Client, opts: dict[str, Any]) -> int:
    """``myctr ps``: a table, ids (``-q``) or JSON."""
    rows = client.call("container.list", {"all": opts["show_all"],
                                          "external": opts["external"]})
    if opts["fmt"] == "json":
        import json

        _echo(json.dumps(rows, indent=2))
    elif opts["quiet"]:
        for row in rows:
            _echo(row["id"][:12])
    else:
        _echo(f"{'CONTAINER ID':<14}{'NAME':<24}{'STATUS':<{STATUS_WIDTH}}{'PID':>8}  COMMAND")
        for row in rows:
            _echo(f"{row['id'][:12]:<14}{row['name']:<24}"
                  f"{row['status_text']:<{STATUS_WIDTH}}{row['pid'] or '':>8}  "
                  f"{' '.join(row['command'])}")
    return 0


VERBS = ("run", "ps")
"""The verbs with a quick path: run in one ``cli.run`` request, ps after ``cli.parse``."""


def _echo(text: str) -> None:
    sys.stdout.write(text + "\n")


# --- the entry point -----------------------------------------------------------------


def quick(argv: list[str]) -> int | None:
    """Run ``argv`` on the quick path; None when it is not for the quick path."""
    root = os.environ.get("MYCTR_ROOT") or None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # global flags before the verb
        flag, eq, value = argv[i].partition("=")
        if flag not in GLOBAL_VALUE_FLAGS or (not eq and i + 1 >= len(argv)):
            return None
        if not eq:
            i += 1
            value = argv[i]
        if flag != "--root":
            return None  # logging flags: the full CLI configures and validates them
        root = value
        i += 1
    if i >= len(argv) or argv[i] not in VERBS:
        return None
    from runtime.paths import StatePaths
    from supervisor.client import try_connect

    client = try_connect(StatePaths.under(root) if root else StatePaths.default())
    if client is None:
        return None  # the full CLI starts a supervisor
    if argv[i] == "run":  # one request: parse, run, and (attached) the exit status
        from supervisor.attach import run_from_argv

        return run_from_argv(client, argv[i + 1:])
    parsed = client.result(client.send("cli.parse", {"argv": argv[i:]}),
                           unknown_method_ok=True)
    if parsed is None:  # an older supervisor
        client.close()
        return None
    if "output" in parsed:  # --help
        sys.stdout.write(parsed["output"])
        return int(parsed["exit_code"])
    return ps(client, parsed["params"])


def main() -> None:
    argv = sys.argv[1:]
    try:
        code = quick(argv)
    except ContainerError as exc:
        sys.stderr.write(f"myctr: {exc}\n")
        code = exc.exit_code
    except OSError as exc:
        sys.stderr.write(f"myctr: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
                         + "\n")
        code = EXIT_MYCTR_ERROR
    except KeyboardInterrupt:
        code = 130
    if code is None:
        from supervisor import cli

        cli.main()
        return
    exit_now(code)


def exit_now(code: int) -> None:
    """End a client's process without the interpreter's teardown (module and object
    freeing, ~8 ms); only what stdio still buffers is flushed. A failing flush exits
    120, as the interpreter's own would."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with that fd closed
                stream.flush()
        except OSError:
            code = 120
    os._exit(code)
