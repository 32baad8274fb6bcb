"""Tiny TCP/UDP servers and clients for the network tests (stdlib only).

``serve tcp|udp ADDR PORT COUNT``: prints "ready", then answers COUNT clients with the
address they came from. ``ask tcp|udp HOST PORT``: prints the server's answer.
"""

from __future__ import annotations

import socket
import sys


def serve(proto: str, addr: str, port: int, count: int) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        if proto == "tcp":
            sock.listen(8)
        print("ready", flush=True)
        for _ in range(count):
            if proto == "tcp":
                conn, peer = sock.accept()
                with conn:
                    conn.sendall(peer[0].encode())
            else:
                _, peer = sock.recvfrom(100)
                sock.sendto(peer[0].encode(), peer)


def ask(proto: str, host: str, port: int) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(3)
        if proto == "tcp":
            sock.connect((host, port))
            print(sock.recv(100).decode())
        else:
            for _ in range(3):  # the first datagram may meet a not-yet-ready path
                sock.sendto(b"?", (host, port))
                try:
                    print(sock.recvfrom(100)[0].decode())
                    return
                except TimeoutError:
                    continue
            raise TimeoutError(f"no answer from {host}:{port}/udp")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        ask(sys.argv[2], sys.argv[3], int(sys.argv[4]))
