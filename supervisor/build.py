"""``myctr build``: a Containerfile built into an image, step by step, with a cache.

Each stage starts from its FROM (an image in the store, an earlier stage, or
``scratch``). Metadata instructions (ENV, CMD, LABEL...) change the image config and
add a history entry without a layer. RUN runs in a real container of the runtime (a
hidden one, removed after the step) whose overlay upper dir becomes the layer; COPY
and ADD write their layer straight from the context or a stage. Layer tarballs are
made by the zygote (rootless: in a user namespace with the user's map, so files keep
the container's ids) and unpacked into the store like any other layer.

The cache: every instruction extends a chain key — ``sha256(previous key, the
instruction as expanded, the build args in effect, and for COPY/ADD the content of
the sources)``, starting from the base image's id. A layer step whose key is in the
store's ``build_cache`` table reuses that intermediate image; the final image is
cached the same way, so an unchanged rebuild gives the same image id, and a change
misses from the changed step onward. Mtime-only changes and ignored files do not
change a source digest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from runtime.build.containerfile import (
    Instruction,
    Stage,
    expand,
    key_values,
    parse,
    split_words,
)
from runtime.build.ignore import Ignore
from runtime.containerdir import ContainerDir
from runtime.errors import BuildFailed as BuildError
from runtime.errors import ContainerError, NotFound, SpecError
from runtime.images.store import Image, normalize_name, rfc3339
from supervisor import prepare as preparing

if TYPE_CHECKING:
    from supervisor.engine import Supervisor

Emit = Callable[[dict[str, Any]], Awaitable[None]]
DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# docker's predefined args: usable without an ARG line, kept out of the cache key
PREDEFINED_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                             "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy",
                             "ALL_PROXY", "all_proxy"})
DURATION_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                  "m": 60_000_000_000, "h": 3_600_000_000_000}


class _State:
    """A stage while it is built."""

    def __init__(self, config: dict[str, Any], layers: list[dict[str, Any]],
                 history: list[dict[str, Any]], key: str, image_id: str | None) -> None:
        self.config = config
        self.layers = layers
        self.history = history
        self.key = key  # the cache chain
        # an image with exactly these layers (None: scratch): every layer step commits
        # one, and metadata steps keep it (they change no layer)
        self.image_id = image_id
        self.args: dict[str, str] = {}  # declared ARGs of this stage, with values
        self.cmd_set = False

    def env(self) -> dict[str, str]:
        env = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def expansion_env(self) -> dict[str, str]:
        return {**self.args, **self.env()}  # ENV wins over ARG, as docker

    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


class Builder:
    def __init__(self, sup: Supervisor, emit: Emit) -> None:
        self.sup = sup
        self.images = sup.images
        self.store = sup.images.store
        self.emit = emit

    async def say(self, text: str, **extra: Any) -> None:
        await self.emit({"text": text, **extra})

    async def build(self, params: dict[str, Any]) -> dict[str, Any]:
        context = params.get("context")
        if not isinstance(context, str) or not os.path.isabs(context) \
                or not os.path.isdir(context):
            raise SpecError(f"build: context {context!r} is not a directory")
        file = params.get("file") or _default_file(context)
        if not os.path.isabs(file):
            file = os.path.join(context, file)
        try:
            with open(file) as f:
                text = f.read()
        except OSError as exc:
            raise SpecError(f"build: {file}: {exc.strerror}") from None
        shown = os.path.relpath(file, context) if file.startswith(context + "/") else file
        cf = parse(text, shown)
        tags = [normalize_name(t) for t in params.get("tags") or []]
        build_args = dict(params.get("build_args") or {})
        if not all(isinstance(v, str) for v in build_args.values()):
            raise SpecError("invalid params: 'build_args' values must be strings")
        self.no_cache = bool(params.get("no_cache"))
        self.network = params.get("network") or "host"
        self.tls_verify = params.get("tls_verify", True) is not False
        self.creds = params.get("creds")
        self.context = os.path.realpath(context)
        self.ignore = Ignore.for_context(context, file)
        self.cf = cf
        self.build_args = build_args
        self.used_args: set[str] = set()
        self.temps: set[str] = set()  # this build's temp files, kept from prune
        self.intermediates: set[str] = set()  # its images so far, kept from prune

        stages = list(cf.stages)
        target = params.get("target")
        if target:
            found = cf.stage(target)
            if found is None:
                raise SpecError(f"build: no stage named {target!r} in {shown}")
            stages = stages[:found.number + 1]
        global_env = self._global_args()
        self.total = sum(1 + len(s.instructions) for s in stages)
        self.step = 0
        self.results: dict[int, _State] = {}
        started = time.monotonic()
        state: _State | None = None
        try:
            for stage in stages:
                state = await self._stage(stage, global_env)
                self.results[stage.number] = state
            assert state is not None
            image = await self._commit_final(state, tags)
        finally:  # prune may take them now
            self.images.busy_paths.difference_update(self.temps)
            self.images.busy_images.difference_update(self.intermediates)
        unused = set(build_args) - self.used_args - PREDEFINED_ARGS
        if unused:
            await self.say("[Warning] one or more build args were not consumed: "
                           + ", ".join(sorted(unused)))
        for tag in tags:
            await self.say(f"Successfully tagged {tag}")
        await self.say(image.id.split(":", 1)[1])
        return {"id": image.id, "tags": tags, "seconds": round(time.monotonic() - started, 3)}

    def _global_args(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.cf.global_args:
            for name, default in _arg_pairs(ins, env, self.cf.escape):
                if name in self.build_args:
                    self.used_args.add(name)
                    env[name] = self.build_args[name]
                elif default is not None:
                    env[name] = default
        return env

    # --- stages -------------------------------------------------------------------

    async def _stage(self, stage: Stage, global_env: dict[str, str]) -> _State:
        base = expand(stage.base, global_env, self.cf.escape)
        await self._step(f"FROM {base}" + (f" AS {stage.name}" if stage.name else ""))
        state = await self._from(base, stage)
        self.global_env = global_env
        for ins in stage.instructions:
            try:
                await self._instruction(state, ins)
            except BuildError:
                raise
            except ContainerError as exc:
                raise BuildError(f"{self.cf.path}:{ins.line}: {ins.keyword}: {exc}") from None
        return state

    async def _from(self, base: str, stage: Stage) -> _State:
        earlier = self.cf.stage(base)
        if earlier is not None and earlier.number < stage.number:
            done = self.results[earlier.number]
            state = _State(json.loads(json.dumps(done.config)), list(done.layers),
                           list(done.history), done.key, done.image_id)
            return state
        if base == "scratch":
            return _State({"Env": [DEFAULT_PATH]}, [], [], _key("scratch"), None)
        try:
            image = self.store.resolve(base)
        except NotFound:
            image = await self._pull(base, stage)
        config = dict(image.config.get("config") or {})
        return _State(config, list(image.layers), list(image.config.get("history") or []),
                      image.id, image.id)

    async def _pull(self, base: str, stage: Stage) -> Image:
        """FROM an image not in the store: pulled, as docker and podman do."""
        from supervisor import registry

        async def report(item: dict[str, Any]) -> None:
            if item.get("status") in ("done", "exists"):
                await self.say(f"Copying blob {item['digest'][7:19]} {item['status']}")

        await self.say(f"Trying to pull {base}...")
        try:
            return await registry.pull(self.images, base, self.tls_verify, self.creds, report)
        except ContainerError as exc:
            raise BuildError(f"{self.cf.path}:{stage.line}: FROM {base}: no such image here, "
                             f"and pulling it failed: {exc}") from None

    async def _step(self, text: str) -> None:
        self.step += 1
        await self.say(f"STEP {self.step}/{self.total}: {text}", step=self.step)

    async def _instruction(self, state: _State, ins: Instruction) -> None:
        env = state.expansion_env()
        esc = self.cf.escape
        keyword = ins.keyword
        shown = ins.text if keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL") else \
            expand(ins.text, env, esc)
        await self._step(shown)
        if keyword == "ARG":
            for name, default in _arg_pairs(ins, env, esc):
                if name in self.build_args:
                    self.used_args.add(name)
                    value: str | None = self.build_args[name]
                elif default is not None:
                    value = default
                else:
                    value = self.global_env.get(name)
                if value is not None:
                    state.args[name] = value
                state.key = _key(state.key, "ARG", name, value)
            return
        if keyword in ("RUN", "COPY", "ADD"):
            await self._layer_step(state, ins)
            return
        self._metadata(state, ins, env)
        state.key = _key(state.key, keyword, json.dumps(state.config, sort_keys=True))
        state.history.append({"created": rfc3339(time.time()),
                              "created_by": f"/bin/sh -c #(nop) {shown}",
                              "empty_layer": True})

    def _metadata(self, state: _State, ins: Instruction, env: dict[str, str]) -> None:
        config, esc = state.config, self.cf.escape
        keyword = ins.keyword
        if keyword == "ENV":
            current = state.env()
            for key, value in key_values(ins, env, esc):
                current[key] = value
            config["Env"] = [f"{k}={v}" for k, v in current.items()]
        elif keyword == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(key_values(ins, env, esc))
            config["Labels"] = labels
        elif keyword == "WORKDIR":
            path = expand(ins.args, env, esc)
            config["WorkingDir"] = os.path.normpath(
                os.path.join(config.get("WorkingDir") or "/", path))
        elif keyword == "USER":
            config["User"] = expand(ins.args, env, esc)
        elif keyword == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for word in split_words(expand(ins.args, env, esc), esc):
                port, _, proto = word.partition("/")
                if not port.isdigit() and not _port_range(port):
                    raise SpecError(f"EXPOSE {word}: not a port")
                ports[f"{port}/{(proto or 'tcp').lower()}"] = {}
            config["ExposedPorts"] = ports
        elif keyword == "VOLUME":
            volumes = dict(config.get("Volumes") or {})
            words = list(ins.json) if ins.json is not None else \
                split_words(expand(ins.args, env, esc), esc)
            for word in words:
                volumes[word] = {}
            config["Volumes"] = volumes
        elif keyword == "STOPSIGNAL":
            config["StopSignal"] = expand(ins.args, env, esc)
        elif keyword == "SHELL":
            assert ins.json is not None
            config["Shell"] = list(ins.json)
        elif keyword == "CMD":
            config["Cmd"] = _command(ins, state)
            state.cmd_set = True
        elif keyword == "ENTRYPOINT":
            config["Entrypoint"] = _command(ins, state) if ins.args else None
            if not state.cmd_set:  # docker: ENTRYPOINT resets a Cmd from the base
                config["Cmd"] = None
        elif keyword == "HEALTHCHECK":
            config["Healthcheck"] = _healthcheck(ins, state)
        elif keyword == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), ins.args]
        elif keyword == "MAINTAINER":
            config.setdefault("Labels", {})
            state.config["Labels"]["maintainer"] = ins.args

    # --- layer steps --------------------------------------------------------------

    async def _layer_step(self, state: _State, ins: Instruction) -> None:
        env = state.expansion_env()
        esc = self.cf.escape
        args_in_effect = sorted((k, v) for k, v in state.args.items())
        if ins.keyword == "RUN":
            for name, _ in ins.flags:
                raise SpecError(f"RUN --{name} is not supported")
            command = list(ins.json) if ins.json is not None else [*state.shell(), ins.args]
            key = _key(state.key, "RUN", json.dumps(command), json.dumps(args_in_effect),
                       json.dumps(state.config, sort_keys=True))
            created_by = (" ".join(command) if ins.json is None else ins.text)
            make: Callable[[], Awaitable[tuple[str, str]]] = functools.partial(
                self._run, state, ins, command)
        else:
            job, source_key = await self._copy_job(state, ins, env)
            key = _key(state.key, ins.keyword, json.dumps(job["copy"], sort_keys=True),
                       source_key, json.dumps(state.config, sort_keys=True))
            created_by = "/bin/sh -c #(nop) " + expand(ins.text, env, esc)[:1000]
            make = functools.partial(self._copy, job)
        cached = None if self.no_cache else self.store.cached(key)
        if cached is not None and len(cached.layers) == len(state.layers) + 1:
            await self.say(f"--> Using cache {cached.id.split(':', 1)[1]}", cached=True)
            state.layers = list(cached.layers)
            state.history = list(cached.config.get("history") or [])
            state.config = dict(cached.config.get("config") or {})
            state.key, state.image_id = key, cached.id
            self._keep(cached.id)
            return
        tar, digest = await make()
        state.history.append({"created": rfc3339(time.time()), "created_by": created_by})
        async with self.images.lock:
            layer = await self._adopt(tar, digest)
            state.layers.append(layer)
            state.key = key
            image = await trio.to_thread.run_sync(
                self.store.commit, state.layers, state.config, [], state.history)
            state.image_id = image.id
            self.store.remember(key, image.id)
            self._keep(image.id)
        await self.say(f"--> {state.image_id.split(':', 1)[1][:12]}", cached=False)

    def _keep(self, image_id: str) -> None:
        """An image this build stands on: image prune leaves it until the build ends."""
        self.intermediates.add(image_id)
        self.images.busy_images.add(image_id)

    async def _commit_final(self, state: _State, tags: list[str]) -> Image:
        key = _key(state.key, "COMMIT")
        await self.say("COMMIT " + (tags[0] if tags else ""))
        async with self.images.lock:
            cached = None if self.no_cache else self.store.cached(key)
            if cached is not None:
                for tag in tags:
                    self.store.tag(cached.id, tag)
                return self.store.get(cached.id)
            image = await trio.to_thread.run_sync(
                self.store.commit, state.layers, state.config, tags, state.history)
            self.store.remember(key, image.id)
            return image

    async def _adopt(self, tar: str, digest: str) -> dict[str, Any]:
        """A layer tarball written (and hashed) by the zygote: renamed into the blob
        store and unpacked. Callers hold the image lock."""
        try:
            size = os.path.getsize(tar)
            os.replace(tar, self.store.blob_path(digest))
            return await self.images.ensure_layer(digest, size, digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar)

    def _tmp(self, directory: bool = False) -> str:
        """A temp path that ``image prune`` removes if a crash leaves it: a file in
        the blob dir, a directory in the layer dir."""
        where = self.store.layers_dir if directory else self.store.blobs
        path = os.path.join(where, f".tmp-build-{secrets.token_hex(8)}")
        self.temps.add(path)
        self.images.busy_paths.add(path)
        return path

    async def _run(self, state: _State, ins: Instruction,
                   command: list[str]) -> tuple[str, str]:
        """RUN: the command in a container of the current image; its upper dir's diff."""
        if state.image_id is None:
            raise BuildError(f"{self.cf.path}:{ins.line}: RUN in an empty image (FROM "
                             "scratch without files): there is nothing to run")
        image_env = state.env()
        proxies = {k: v for k, v in self.build_args.items() if k in PREDEFINED_ARGS}
        extra = [f"{k}={v}" for k, v in {**proxies, **state.args}.items()
                 if k not in image_env]
        params = {
            "image_id": state.image_id, "command": command, "entrypoint": [],
            "env": [*state.config.get("Env", []), *extra],
            "workdir": state.config.get("WorkingDir") or "/",
            "user": state.config.get("User") or "0", "network": self.network,
            "build": True,
        }
        c = await self.sup.create(params)
        try:
            code = await self._attached(c)
            if code != 0:
                raise BuildError(
                    f"{self.cf.path}:{ins.line}: building at STEP \"{ins.text[:200]}\": "
                    f"exit status {code}")
            plan = preparing.id_map_plan(c.options.uid_mappings, c.options.gid_mappings)
            out = self._tmp()
            job = {"kind": "diff", "upper": ContainerDir(self.sup.paths, c.id).upper,
                   "out": out}
            try:
                return out, await self.images.spawner.pack_layer(job, plan)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out)
                raise
        finally:
            with trio.CancelScope(shield=True):
                if c.id in self.sup.containers:
                    await self.sup.remove(c, force=True)

    async def _attached(self, c: Any) -> int:
        """Start the step's container with its output streamed to the client."""
        from supervisor.engine import Attach

        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:  # the Attach owns (and closes) both write ends
            await self.sup.start(c, Attach(None, write_end, os.dup(write_end)))
        except BaseException:
            os.close(read_end)
            raise
        stream = trio.lowlevel.FdStream(read_end)
        async with stream:
            pending = b""
            while chunk := await stream.receive_some(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    await self.emit({"output": line.decode(errors="replace")})
            if pending:
                await self.emit({"output": pending.decode(errors="replace")})
        return await self.sup.wait(c)

    async def _copy_job(self, state: _State, ins: Instruction,
                        env: dict[str, str]) -> tuple[dict[str, Any], str]:
        esc = self.cf.escape
        flags = dict(ins.flags)
        for name in flags:
            if name not in ("from", "chown", "chmod", "link"):
                raise SpecError(f"{ins.keyword} --{name} is not supported")
        if ins.keyword == "ADD" and "from" in flags:
            raise SpecError("ADD does not take --from (use COPY)")
        words = [expand(w, env, esc) for w in ins.json] if ins.json is not None else \
            split_words(expand(ins.args, env, esc), esc)
        if len(words) < 2:
            raise SpecError(f"{ins.keyword} needs a source and a destination")
        *sources, dest = words
        if ins.keyword == "ADD" and any("://" in s for s in sources):
            raise SpecError("ADD from a URL is not supported (download it in a RUN step "
                            "or into the context)")
        chown = expand(flags["chown"], env, esc) if "chown" in flags else None
        chmod = expand(flags["chmod"], env, esc) if "chmod" in flags else None
        if chmod is not None and not (chmod.isdigit() and all(c in "01234567" for c in chmod)):
            raise SpecError(f"--chmod={chmod}: only octal modes are supported")
        copy = {"sources": sources, "dest": dest,
                "workdir": state.config.get("WorkingDir") or "/", "chown": chown,
                "chmod": chmod, "add": ins.keyword == "ADD", "keep_owner": "from" in flags}
        image_lowers = self._lowers(state.image_id)
        job: dict[str, Any] = {"kind": "copy", "copy": copy, "image_lowers": image_lowers}
        if "from" in flags:
            ref = expand(flags["from"], env, esc)
            source = self.cf.stage(ref)
            if source is not None and source.number in self.results:
                done = self.results[source.number]
                job["source_lowers"] = self._lowers(done.image_id)
                source_key = done.key
            elif source is not None:
                raise SpecError(f"--from={ref}: stage {ref!r} is not built before this one")
            else:
                try:
                    image = self.store.resolve(ref)
                except NotFound:
                    raise SpecError(f"--from={ref}: no such stage or image") from None
                job["source_lowers"] = list(self.store.lower_dirs(image))
                source_key = image.id
        else:
            from runtime.images.pack import source_digest

            job["context"] = self.context
            job["ignore"] = self.ignore.lines
            source_key = await trio.to_thread.run_sync(
                source_digest, tuple(sources), self.context, self.ignore)
        return job, source_key

    def _lowers(self, image_id: str | None) -> list[str]:
        return list(self.store.lower_dirs(self.store.get(image_id))) if image_id else []

    async def _copy(self, job: dict[str, Any]) -> tuple[str, str]:
        scratch = self._tmp(directory=True)
        os.mkdir(scratch, 0o700)
        out = self._tmp()
        try:
            return out, await self.images.spawner.pack_layer(
                {**job, "scratch": scratch, "out": out}, self.images.plan)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            raise
        finally:
            with contextlib.suppress(OSError):
                for name in os.listdir(scratch):
                    os.rmdir(os.path.join(scratch, name))
                os.rmdir(scratch)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()


def _default_file(context: str) -> str:
    for name in ("Containerfile", "Dockerfile"):
        path = os.path.join(context, name)
        if os.path.exists(path):
            return path
    raise SpecError(f"build: no Containerfile or Dockerfile in {context} (use -f)")


def _arg_pairs(ins: Instruction, env: dict[str, str],
               escape: str) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for word in split_words(ins.args, escape):
        name, eq, value = word.partition("=")
        if not name.replace("_", "a").isalnum():
            raise SpecError(f"ARG {word}: invalid name")
        pairs.append((name, expand(value, env, escape) if eq else None))
    return pairs


def _command(ins: Instruction, state: _State) -> list[str]:
    if ins.json is not None:
        return list(ins.json)
    return [*state.shell(), ins.args]


def _port_range(text: str) -> bool:
    low, sep, high = text.partition("-")
    return bool(sep) and low.isdigit() and high.isdigit()


def _healthcheck(ins: Instruction, state: _State) -> dict[str, Any]:
    rest = ins.args
    if rest.strip().upper() == "NONE":
        return {"Test": ["NONE"]}
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise SpecError("HEALTHCHECK takes [OPTIONS] CMD command, or NONE")
    command = command.strip()
    try:
        parsed = json.loads(command) if command.startswith("[") else None
    except ValueError:
        parsed = None
    test = ["CMD", *parsed] if isinstance(parsed, list) else ["CMD-SHELL", command]
    check: dict[str, Any] = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
             "start-interval": "StartInterval"}
    for flag, value in ins.flags:
        if flag in names:
            check[names[flag]] = _duration(value)
        elif flag == "retries":
            if not value.isdigit():
                raise SpecError(f"HEALTHCHECK --retries={value}: not a number")
            check["Retries"] = int(value)
        else:
            raise SpecError(f"HEALTHCHECK: unknown flag --{flag}")
    return check


def _duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in nanoseconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise SpecError(f"invalid duration {text!r}")
    return int(sum(float(n) * DURATION_UNITS[u] for n, u in parts))
