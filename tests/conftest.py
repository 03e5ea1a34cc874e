import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUESTS = ROOT / "guest_programs" / "build"
FTVM = Path(sys.executable).parent / "ftvm"
sys.path.insert(0, str(ROOT))

try:
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    # No wall-clock limits on property tests: they check results, and on a loaded machine
    # one example took 507 ms against the default 200 ms deadline (a failure that says
    # nothing about the code). Tests that set their own settings inherit these.
    settings.register_profile("ftvm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ftvm")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run long soak and fault campaigns")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long soak or fault campaigns (--run-slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow campaign: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guests():
    subprocess.run(["make", "-s", "-C", str(ROOT / "guest_programs")], check=True)
    return GUESTS


def stop_processes(procs, grace=10):
    """SIGTERM to each, then SIGKILL to any still there after ``grace`` seconds."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()


def run_ftvm(*args, input=b"", timeout=180, cwd=None):
    """Run the installed ftvm console script. stdout stays bytes; stderr is text."""
    p = subprocess.run([str(FTVM), *map(str, args)], input=input, capture_output=True, timeout=timeout, cwd=cwd)
    p.stderr = p.stderr.decode("utf-8", "replace")
    return p


@pytest.fixture
def ftvm():
    return run_ftvm


# --- in-process helpers: record/replay with scripted input, chaos and fake entropy -----

def record_inproc(tmp_path, guest, name="run", script=None, chaos=None, seed=0, synthetic_ns=7,
                  digest_every_events=0):
    from hypervisor import elf_loader
    from hypervisor.console import Console
    from hypervisor.machine import Config
    from hypervisor.record import Recorder
    from logging_channel.logfile import LogWriter

    data, image = elf_loader.load_file(GUESTS / guest)
    out = bytearray()
    path = tmp_path / f"{name}.ftlog"
    writer = LogWriter(path)
    rnd = random.Random(seed)
    cfg = Config(digest_interval_ms=0, digest_every_events=digest_every_events, tsc_synthetic_ns_per_block=synthetic_ns)
    rec = Recorder.new(data, image, guest, writer, cfg, Console(out.extend), script=script, chaos=chaos,
                       entropy=lambda n: rnd.randbytes(n))
    end = rec.run()
    writer.close()
    return path, bytes(out), end


def replay_inproc(path, chaos=None, **kw):
    from hypervisor.console import Console
    from hypervisor.replay import Replayer

    out = bytearray()
    rp = Replayer(path, Console(out.extend), chaos=chaos, **kw)
    res = rp.run()
    return bytes(out), res


def log_records(path):
    from logging_channel.logfile import LogReader
    with LogReader(path) as r:
        return [rec for _, _, rec in r]


def imported_modules(path):
    """The top-level modules a Python file imports (for the checks that keep I/O,
    clocks, threads and randomness out of the pure cores)."""
    import ast
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names
