"""Real Linux network namespaces for tests: hosts on a private bridge, each with its own
address, so that what crosses "the network" really does. Needs root and iproute2."""
import os
import shutil
import subprocess


def available():
    """None if namespaces can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (the `ip` command) is not installed"
    probe = f"ftvmprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns add failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


class Net:
    """A bridge in the root namespace (the observer's side, .254) and one namespace per
    host, 10.<a>.<b>.<i>/24."""

    def __init__(self, hosts, tag=None):
        self.tag = tag or f"{os.getpid() % 10000}"
        n = int(self.tag) % 250
        self.prefix = f"10.{201 + n // 250}.{n}"
        self.bridge = f"ftbr{self.tag}"
        self.hosts = {}
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, h in enumerate(hosts, start=1):
            ns = f"ft{h}{self.tag}"
            veth, peer = f"fv{h}{self.tag}", f"fp{h}{self.tag}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.prefix}.{i}/24", "dev", peer)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.hosts[h] = (ns, f"{self.prefix}.{i}", veth)
        self.observer_ip = f"{self.prefix}.254"

    def addr(self, host):
        return self.hosts[host][1]

    def exec_prefix(self, host):
        return ["ip", "netns", "exec", self.hosts[host][0]]

    def cut(self, host):
        """Unplug a host's cable (its end of the veth goes down)."""
        sh("ip", "link", "set", self.hosts[host][2], "down")

    def heal(self, host):
        sh("ip", "link", "set", self.hosts[host][2], "up")

    def add_root_ip(self, last):
        """Another address of the root namespace on the bridge (.LAST), e.g. for a
        service that a host is to be cut off from while it still reaches the observer."""
        ip = f"{self.prefix}.{last}"
        sh("ip", "addr", "add", f"{ip}/24", "dev", self.bridge)
        return ip

    def block(self, host, ip):
        """Drop everything ``host`` sends to ``ip`` (a blackhole route in its namespace):
        with TCP, no connection between them gets anywhere."""
        sh(*self.exec_prefix(host), "ip", "route", "add", "blackhole", f"{ip}/32")

    def unblock(self, host, ip):
        sh(*self.exec_prefix(host), "ip", "route", "del", "blackhole", f"{ip}/32")

    def close(self):
        for ns, _, veth in self.hosts.values():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
