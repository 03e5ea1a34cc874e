"""The view service process over ZeroMQ: real process, real sockets, pings from clients."""
import subprocess
import time

import zmq

from conftest import FTVM
from hypervisor.ft.transport import free_tcp_port
from hypervisor.ft.viewservice import ViewClient


def test_viewservice_process(tmp_path):
    addr = f"tcp://127.0.0.1:{free_tcp_port()}"
    p = subprocess.Popen([str(FTVM), "viewservice", "--listen", addr, "--ping-interval-ms", "20", "--dead-pings", "3"],
                         stderr=subprocess.PIPE)
    try:
        a, b = ViewClient(addr), ViewClient(addr)
        deadline = time.monotonic() + 10
        rep = None
        while rep is None and time.monotonic() < deadline:
            rep = a.ping("A", 0, False, "tcp://a")
        assert rep[:3] == [1, "A", None] or tuple(rep[:3]) == (1, "A", None)
        assert tuple(b.ping("B", 0, True, "tcp://b")[:3]) == (1, "A", None)
        assert tuple(a.ping("A", 1, False, "tcp://a")[:3]) == (2, "A", "B")
        num, primary, backup, addrs = b.ping("B", 2, True, "tcp://b")
        assert addrs == {"A": "tcp://a", "B": "tcp://b"}
        a.ping("A", 2, False, "tcp://a")            # the primary acknowledges view 2
        # A stops pinging: after 3 intervals B (ready) is promoted.
        t = time.monotonic()
        while time.monotonic() - t < 2:
            rep = b.ping("B", 2, True, "tcp://b")
            if rep[1] == "B":
                break
            time.sleep(0.01)
        assert tuple(rep[:3]) == (3, "B", None)
        # Garbage does not hurt it.
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 1000)
        s.connect(addr)
        s.send(b"\\xc1 not msgpack")
        assert b"error" in s.recv()
        s.close()
        assert b.ping("B", 3, True, "tcp://b")[1] == "B"
    finally:
        p.terminate()
        p.wait(timeout=10)
