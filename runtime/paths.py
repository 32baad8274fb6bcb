"""Where one myctr installation keeps its state.

As root: ``/var/lib/myctr`` (containers, images), ``/run/myctr`` (sockets),
``/var/log/myctr`` (logs). Rootless: the XDG equivalents. ``--root DIR`` (or
``MYCTR_ROOT``) puts all three under DIR, so independent installations never collide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    data: Path
    run: Path
    log: Path

    @property
    def containers(self) -> Path:
        return self.data / "containers"

    @property
    def names(self) -> Path:
        return self.data / "names"

    def container_dir(self, container_id: str) -> Path:
        return self.containers / container_id

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> StatePaths:
        base = Path(root).absolute()
        return cls(data=base / "data", run=base / "run", log=base / "log")

    @classmethod
    def default(cls, environ: dict[str, str] | None = None, uid: int | None = None) -> StatePaths:
        env = dict(os.environ) if environ is None else environ
        if env.get("MYCTR_ROOT"):
            return cls.under(env["MYCTR_ROOT"])
        uid = os.geteuid() if uid is None else uid
        if uid == 0:
            return cls(Path("/var/lib/myctr"), Path("/run/myctr"), Path("/var/log/myctr"))
        home = Path(env.get("HOME") or f"/tmp/myctr-{uid}")
        data = Path(env.get("XDG_DATA_HOME") or home / ".local/share") / "myctr"
        state = Path(env.get("XDG_STATE_HOME") or home / ".local/state") / "myctr"
        runtime_dir = env.get("XDG_RUNTIME_DIR")
        run = Path(runtime_dir) / "myctr" if runtime_dir else Path(f"/tmp/myctr-run-{uid}")
        return cls(data=data, run=run, log=state / "logs")

    def ensure(self) -> None:
        for path in (self.data, self.containers, self.names, self.run, self.log):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
