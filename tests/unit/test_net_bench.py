"""The network bench's pure parts: iperf3's JSON, the rows, the ratios and 5% targets,
/proc/PID/stat CPU time, ``ip -o link`` MTUs, the slirp4netns API messages, the state
root's length check, argument parsing."""

from __future__ import annotations

import json
import os

import pytest

from bench.net_bench import (
    FULL,
    QUICK,
    IperfResult,
    api_socket_fits,
    check_api_reply,
    comparisons_and_targets,
    container_address,
    cpu_seconds,
    hostfwd_request,
    latency_rows,
    mtus,
    parse_args,
    parse_iperf3,
    slirp_pid,
    throughput_row,
)
from bench.start_latency import BenchError
from bench.supervisor_bench import Row

IPERF_OK = {
    "start": {"connected": [{"socket": 5}]},
    "intervals": [],
    "end": {
        "sum_sent": {"seconds": 3.0, "bytes": 5_000_000_000, "bits_per_second": 13.4e9,
                     "retransmits": 12},
        "sum_received": {"seconds": 3.0004, "bytes": 4_999_000_000,
                         "bits_per_second": 13.3e9},
        "cpu_utilization_percent": {"host_total": 88.5, "remote_total": 41.2},
    },
}


def test_parse_iperf3_takes_the_received_sum() -> None:
    result = parse_iperf3(json.dumps(IPERF_OK))
    assert result == IperfResult(13.3e9, 12, 88.5, 41.2, 3.0004)


def test_parse_iperf3_without_cpu_or_retransmits() -> None:
    doc = {"end": {"sum_received": {"bits_per_second": 5e9, "seconds": 1}}}
    assert parse_iperf3(json.dumps(doc)) == IperfResult(5e9, None, None, None, 1.0)


@pytest.mark.parametrize("text, message", [
    (json.dumps({"start": {}, "intervals": [], "end": {},
                 "error": "unable to connect to server: Connection refused"}),
     "iperf3: unable to connect to server: Connection refused"),
    (json.dumps({"end": {"sum_received": {}}}), "no end.sum_received.bits_per_second"),
    (json.dumps({"end": {}}), "no end.sum_received"),
    ("", "printed no JSON"),
    ("[1]", "not an object"),
])
def test_parse_iperf3_errors(text: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_iperf3(text)


def result(gbit: float, retr: int | None = 0, cpu: tuple[float, float] | None = (50, 20),
           ) -> IperfResult:
    return IperfResult(gbit * 1e9, retr, *(cpu or (None, None)), 3.0)


def test_throughput_row_median_in_gbit() -> None:
    row = throughput_row("br-ip", [result(10), result(14, 4), result(12, 2, (60, 30))],
                         forwarder_cpu=[70.0, 80.0])
    assert row.tool == "br-ip" and row.unit == "Gbit/s"
    assert row.value == pytest.approx(12.0)
    assert row.samples == pytest.approx((10.0, 14.0, 12.0))
    assert "n=3" in row.detail and "retr 2" in row.detail
    assert "cpu client 50% server 20%" in row.detail
    assert "slirp4netns 75%" in row.detail


def test_throughput_row_without_runs() -> None:
    row = throughput_row("slirp", [])
    assert row.value is None and row.detail == "no runs"


def test_latency_rows_in_ms() -> None:
    (row,) = latency_rows("br-pub", [(0.0001, 0.0008), (0.0002, 0.0010), (0.0001, 0.0006)])
    assert row.unit == "ms" and row.value == pytest.approx(0.8)
    assert "connect() alone 0.100 ms" in row.detail and "n=3" in row.detail
    assert latency_rows("x", [])[0].value is None


def rows(**values: float | None) -> list[Row]:
    return [Row(name.replace("_", "-"), "m", value, "Gbit/s") for name, value in values.items()]


def test_throughput_targets_within_five_percent() -> None:
    comparisons, targets = comparisons_and_targets(
        rows(br_pub=9.6, br_ip=9.4, raw_veth=10.0, slirp=None, raw_slirp=5.0),
        [("br-pub", "raw-veth"), ("br-ip", "raw-veth"), ("slirp", "raw-slirp"),
         ("host", "raw-lo")])
    found = dict(comparisons)
    assert found["br-pub/raw-veth"] == pytest.approx(0.96)
    assert found["br-ip/raw-veth"] == pytest.approx(0.94)
    assert found["slirp/raw-slirp"] is None
    assert [name for name, _ in comparisons] == ["br-pub/raw-veth", "br-ip/raw-veth",
                                                 "slirp/raw-slirp"]  # no host row: left out
    assert targets == (("br-pub >= 0.95x raw-veth", True), ("br-ip >= 0.95x raw-veth", False),
                       ("slirp >= 0.95x raw-slirp", None))


def test_exactly_at_the_bound_is_met() -> None:
    _, targets = comparisons_and_targets(rows(a=9.5, b=10.0), [("a", "b")])
    assert targets == (("a >= 0.95x b", True),)


def test_latency_comparisons_lower_is_better() -> None:
    comparisons, targets = comparisons_and_targets(rows(pub=1.2, ip=1.0), [("pub", "ip")],
                                                   factor=1.1, higher=False)
    assert comparisons == (("pub/ip", pytest.approx(1.2)),)
    assert targets == (("pub <= 1.10x ip", False),)


def test_cpu_seconds_from_proc_stat() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    line = (f"1234 (slirp4 (net)s) S 1 1234 1234 0 -1 4194560 100 0 0 0 {3 * ticks} "
            f"{ticks} 0 0 20 0 1 0 12345 1000000 200 18446744073709551615\n")
    assert cpu_seconds(line) == pytest.approx(4.0)


def test_cpu_seconds_of_this_process() -> None:
    with open("/proc/self/stat") as f:
        assert cpu_seconds(f.read()) >= 0


def test_mtus_from_ip_link() -> None:
    out = (
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT "
        "group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
        "2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n"
        "3: tap0: <BROADCAST,UP,LOWER_UP> mtu 65520 qdisc fq_codel state UNKNOWN\n")
    assert mtus(out) == {"lo": 65536, "eth0": 1500, "tap0": 65520}


def test_hostfwd_request_and_replies() -> None:
    doc = json.loads(hostfwd_request(15203, 5201))
    assert doc == {"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 15203,
        "guest_addr": "10.0.2.100", "guest_port": 5201}}
    check_api_reply(b'{"return":{"id":1}}')
    with pytest.raises(BenchError, match="bind"):
        check_api_reply(b'{"error":{"desc":"bad request: add_hostfwd: bind"}}')
    with pytest.raises(BenchError, match="unreadable"):
        check_api_reply(b"")


def test_api_socket_fits_only_short_roots() -> None:
    # 17 (/data/containers/) + 64 + 17 (/slirp4netns.sock) + NUL: 9 characters are left
    assert api_socket_fits("/tmp/abcd")
    assert not api_socket_fits("/tmp/abcde")
    assert not api_socket_fits("/tmp/myctr-nbench-1234-abcdefgh/myctr")


def test_inspect_fields() -> None:
    doc = {"id": "x", "network": {"mode": "bridge", "interfaces": [
        {"name": "eth0", "address": "10.88.0.7", "prefix": 16, "gateway": "10.88.0.1"}],
        "ports": [], "nameservers": ["10.0.2.3"], "slirp4netns_pid": 4321}}
    assert container_address(doc) == "10.88.0.7"
    assert slirp_pid(doc) == 4321
    assert slirp_pid({"network": {}}) is None
    with pytest.raises(BenchError):
        container_address({"network": {"interfaces": []}})


def test_parse_args() -> None:
    assert parse_args([]).sizes == FULL
    assert parse_args(["--quick"]).sizes == QUICK
    args = parse_args(["--quick", "--runs", "4", "--only", "latency", "--connects", "9"])
    assert args.sizes == QUICK._replace(runs=4, connects=9) and args.only == ["latency"]
    with pytest.raises(SystemExit):
        parse_args(["--seconds", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])
