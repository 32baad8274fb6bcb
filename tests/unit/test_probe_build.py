"""Build the container probe and run it on the host to check its JSON output."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import signal
import socket
import struct
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BUILD_PY = Path(__file__).resolve().parents[1] / "probe" / "build.py"
PT_INTERP = 3


def _load_build_module() -> ModuleType:
    # Loaded by path so the test works whatever is (or is not) on sys.path.
    spec = importlib.util.spec_from_file_location("probe_build", BUILD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built: Path = build.build_probe(tmp_path_factory.mktemp("probe") / "probe")
    return built


def run(probe: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [str(probe), *args], capture_output=True, text=True, timeout=30, check=False, **kwargs
    )


def run_json(probe: Path, *args: str, **kwargs: Any) -> dict[str, Any]:
    proc = run(probe, *args, **kwargs)
    assert proc.returncode == 0, proc
    assert proc.stdout.count("\n") == 1 and proc.stdout.endswith("\n"), proc.stdout
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def has_interpreter(path: Path) -> bool:
    """Whether the ELF file at path has a PT_INTERP header (i.e. is dynamically linked)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum)
    )


def test_build_produces_static_executable(probe: Path) -> None:
    """The built probe is a mode-0755 statically linked ELF with its source hash stamped."""
    assert probe.stat().st_mode & 0o777 == 0o755
    assert not has_interpreter(probe)
    stamp = probe.with_name(probe.name + ".sha256").read_text().strip()
    assert len(stamp) == 64


def test_build_is_cached_by_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second build with an unchanged source does not run gcc, a stale stamp does."""
    dest = build.build_probe(tmp_path / "probe")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # gcc can no longer be found
    assert build.build_probe(dest) == dest
    dest.with_name("probe.sha256").write_text("stale\n")
    with pytest.raises(RuntimeError, match="gcc and libc6-dev"):
        build.build_probe(dest)


def test_build_failure_reports_gcc_stderr(tmp_path: Path) -> None:
    """A source that does not compile raises RuntimeError carrying gcc's error message."""
    bad = tmp_path / "bad.c"
    bad.write_text("int main(void) { return undeclared_name; }\n")
    with pytest.raises(RuntimeError, match="undeclared_name"):
        build.build_probe(tmp_path / "bad", source=bad)
    assert not (tmp_path / "bad").exists()


def test_info_reports_host_process_view(probe: Path, tmp_path: Path) -> None:
    """`info` reports the ids, cwd, environment, limits and /proc view of the probe process."""
    env = {"PROBE_MARKER": 'a "quoted" value\\'}
    proc = subprocess.Popen(
        [str(probe), "info"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    info = json.loads(out)

    assert info["pid"] == proc.pid and info["ppid"] == os.getpid()
    assert (info["uid"], info["euid"]) == (os.getuid(), os.geteuid())
    assert (info["gid"], info["egid"]) == (os.getgid(), os.getegid())
    assert sorted(info["groups"]) == sorted(os.getgroups())
    assert info["hostname"] == socket.gethostname()
    assert info["cwd"] == str(tmp_path)
    assert set(info["caps"]) == {"inh", "prm", "eff", "bnd", "amb"}
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in info["caps"].values())
    assert info["no_new_privs"] in (0, 1) and info["seccomp"] in (0, 1, 2)
    assert info["uid_map"].split() and info["gid_map"].split()
    assert proc.pid in info["pids"] and info["pids"] == sorted(info["pids"])
    assert any(m["target"] == "/" for m in info["mounts"])
    assert {"target", "fstype", "options", "super_options"} <= set(info["mounts"][0])
    assert info["tty"] is None and info["isatty"] == [False, False, False]
    assert info["env"] == ['PROBE_MARKER=a "quoted" value\\']
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert info["rlimit_nofile"] == [soft, hard]


def test_syscall_keyctl_reports_result(probe: Path) -> None:
    """`syscall keyctl` reports the call name, its return value and a symbolic errno or null."""
    result = run_json(probe, "syscall", "keyctl")
    assert result["call"] == "keyctl"
    assert isinstance(result["ret"], int)
    if result["ret"] < 0:
        assert isinstance(result["errno"], str) and result["errno"].startswith("E")
    else:
        assert result["errno"] is None


def test_exit_uses_requested_status(probe: Path) -> None:
    """`exit 7` prints its status as JSON and exits with status 7."""
    proc = run(probe, "exit", "7")
    assert proc.returncode == 7
    assert json.loads(proc.stdout) == {"exit": 7}


def test_read_proc_status(probe: Path) -> None:
    """`read /proc/self/status` returns the probe's own status text."""
    result = run_json(probe, "read", "/proc/self/status")
    assert result["ok"] is True and result["errno"] is None
    assert f"Name:\t{probe.name}\n" in result["data"]
    assert "\nCapEff:\t" in result["data"]


def test_read_missing_file_reports_errno(probe: Path, tmp_path: Path) -> None:
    """Reading a missing file reports ok false with errno ENOENT and null data."""
    result = run_json(probe, "read", str(tmp_path / "missing"))
    assert (result["ok"], result["errno"], result["data"]) == (False, "ENOENT", None)


def test_write_then_read_round_trips_special_characters(probe: Path, tmp_path: Path) -> None:
    """Text with quotes, backslashes, control characters and UTF-8 survives write and read."""
    path = str(tmp_path / "file")
    text = 'q"b\\s\nn\tt\x01c\x1f\x7f é ✓'
    assert run_json(probe, "write", path, text) == {"path": path, "ok": True, "errno": None}
    assert Path(path).read_text() == text
    assert run_json(probe, "read", path)["data"] == text


def test_signals_lists_ignored_signals(probe: Path) -> None:
    """`signals` lists a signal ignored by the parent among the ignored ones."""
    result = run_json(
        probe, "signals", preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    )
    assert signal.SIGUSR1.value in result["ignored"]
    assert result["caught"] == [] and result["blocked"] == []


def test_kill_self_dies_by_signal(probe: Path) -> None:
    """`kill-self TERM` terminates the probe with SIGTERM."""
    proc = run(probe, "kill-self", "TERM")
    assert proc.returncode == -signal.SIGTERM
    assert json.loads(proc.stdout) == {"signal": signal.SIGTERM.value}


def test_sleep_spin_and_alloc_report_amounts(probe: Path) -> None:
    """`sleep`, `spin` and `alloc` report the amount of time or memory they used."""
    assert run_json(probe, "sleep", "0.05") == {"slept": 0.05}
    assert run_json(probe, "spin", "0.05")["spun"] == 0.05
    assert run_json(probe, "alloc", "8") == {"allocated_mb": 8, "errno": None}


def test_fork_children_do_not_hold_stdout(probe: Path) -> None:
    """`fork 2` reports two children and its output ends while the children still sleep."""
    proc = subprocess.Popen(
        [str(probe), "fork", "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert json.loads(out) == {"forked": 2, "errno": None}
    finally:
        with contextlib.suppress(ProcessLookupError):  # children share the probe's group
            os.killpg(proc.pid, signal.SIGKILL)


def test_unknown_command_exits_2(probe: Path) -> None:
    """An unknown command prints a JSON error and exits with status 2."""
    proc = run(probe, "bogus")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"error": "unknown command bogus"}
