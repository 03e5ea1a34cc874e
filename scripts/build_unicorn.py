"""Build Unicorn with ftvm's inline block counter and install it into the virtualenv.

Run by `make setup` with the virtualenv's Python. Steps, each cached under
build/unicorn/ (kept by `make clean`, which only removes .venv):

1. download the pinned Unicorn source distribution from PyPI;
2. unpack it, apply unicorn-patch/inline-block-counter.patch, build libunicorn for
   x86 only (cmake with ninja, or make);
3. wrap it in a wheel with the sdist's own setup.py (its prebuilt/ route) and
   install that wheel into the virtualenv, replacing the stock one;
4. keep the stock wheel's libunicorn too, so `ftvm bench` can time plain Unicorn.

The cache key is the patch file's SHA-256 (and the Unicorn version): a second run
with the same patch installs from the cache, or does nothing when the virtualenv
has it already. If the build fails, the stock wheel stays and ftvm counts blocks
with its C block hook; this prints one line saying so, and setup goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

UNICORN_VERSION = "2.1.4"
ROOT = pathlib.Path(__file__).resolve().parents[1]
PATCH = ROOT / "unicorn-patch" / "inline-block-counter.patch"
CACHE = ROOT / "build" / "unicorn"
INFO = pathlib.Path(sys.prefix) / "ftvm-unicorn.json"   # read by hypervisor/counter.py
# What the block hook costs on a CPU-bound guest (issue 14's figures on this machine
# image), against about 1.0 of plain Unicorn with the inline counter.
HOOK_SLOWDOWN = "recording runs at about 0.90 of plain Unicorn and `ftvm run` at about 0.82"


def say(msg):
    print(f"unicorn: {msg}", flush=True)


def run(cmd, cwd=None, log=None):
    """Run a build step; its output goes to the log, and its tail into the error."""
    t = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n".encode())
        f.flush()
        p = subprocess.run(list(map(str, cmd)), cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        f.write(f"# {time.monotonic() - t:.1f} s, exit status {p.returncode}\n".encode())
    if p.returncode != 0:
        out = [line for line in pathlib.Path(log).read_text(errors="replace").strip().splitlines()
               if line.strip() and not line.startswith(("$ ", "# "))]
        last = out[-1].strip()[:160] if out else f"exit status {p.returncode}"
        raise RuntimeError(f"{pathlib.Path(str(cmd[0])).name} failed: {last}; log: {log}")


def pip(*args, log):
    run([sys.executable, "-m", "pip", *args], log=log)


def download(kind, log):
    """The sdist ('source') or the stock wheel ('wheel') from PyPI, cached."""
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    pattern = f"unicorn-{UNICORN_VERSION}.tar.gz" if kind == "source" else f"unicorn-{UNICORN_VERSION}-*.whl"
    found = sorted(dl.glob(pattern))
    if not found:
        # --no-binary for unicorn only: its build requirements (setuptools, ...) come as
        # wheels (":all:" would build each of them from source, about a minute).
        only = ["--no-binary", "unicorn"] if kind == "source" else ["--only-binary", ":all:"]
        pip("download", "-q", "--no-deps", *only, "-d", dl, f"unicorn=={UNICORN_VERSION}", log=log)
        found = sorted(dl.glob(pattern))
    if not found:
        raise RuntimeError(f"pip download left no {pattern} in {dl}")
    return found[0]


def stock_lib(log):
    """libunicorn.so.2 of the stock wheel, for plain-Unicorn timings."""
    out = CACHE / f"stock-{UNICORN_VERSION}" / "libunicorn.so.2"
    if not out.is_file():
        whl = download("wheel", log)
        with zipfile.ZipFile(whl) as z:
            name = next(n for n in z.namelist() if n.endswith("lib/libunicorn.so.2"))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(z.read(name))
            tmp.rename(out)
    return out


def build_wheel(key, out, log):
    """Patch, build, wrap into a wheel in `out`. Returns the wheel's path."""
    sdist = download("source", log)
    work = CACHE / f"work-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(sdist) as t:
        t.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(work)
    top = work / f"unicorn-{UNICORN_VERSION}"
    run(["patch", "-p1", "--forward", "--batch", "-i", PATCH], cwd=top, log=log)
    src = top / "src"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    if not shutil.which("cmake"):
        raise RuntimeError("cmake not found (Debian: apt-get install cmake)")
    run(["cmake", "-S", src, "-B", src / "build", *gen, "-DCMAKE_BUILD_TYPE=Release", "-DUNICORN_ARCH=x86",
         "-DUNICORN_BUILD_TESTS=off", "-DUNICORN_INSTALL=off"], log=log)
    run(["cmake", "--build", src / "build", "--target", "unicorn", "-j", str(os.cpu_count() or 2)], log=log)
    # The sdist's setup.py takes a library from prebuilt/ instead of building one.
    (top / "prebuilt").mkdir(exist_ok=True)
    shutil.copy2(src / "build" / "libunicorn.so.2", top / "prebuilt" / "libunicorn.so.2")
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    pip("wheel", "-q", "--no-deps", "-w", tmp_out, top, log=log)
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return wheel_in(out)


def wheel_in(d):
    found = sorted(d.glob("unicorn-*.whl")) if d.is_dir() else []
    return found[0] if found else None


def installed_lib():
    import importlib.util
    spec = importlib.util.find_spec("unicorn")
    if spec is None or spec.origin is None:
        return None
    lib = pathlib.Path(spec.origin).parent / "lib" / "libunicorn.so.2"
    return lib if lib.is_file() else None


def _back_to_stock(log):
    """After a failed build, make sure the stock wheel is what is installed."""
    try:
        pip("install", "-q", "--no-deps", "--force-reinstall", download("wheel", log), log=log)
    except Exception:
        pass        # the stock wheel from `pip install -e .` is still there


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def main():
    key = hashlib.sha256(PATCH.read_bytes() + UNICORN_VERSION.encode()).hexdigest()[:16]
    out = CACHE / f"{UNICORN_VERSION}-{key}"
    log = CACHE / f"build-{key}.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        info = json.loads(INFO.read_text())
    except (OSError, ValueError):
        info = {}
    lib = installed_lib()
    if info.get("key") == key and info.get("inline") and lib and sha256(lib) == info.get("lib_sha256"):
        return 0        # this virtualenv has it
    info = {"key": key, "version": UNICORN_VERSION, "patch": str(PATCH.relative_to(ROOT))}
    t0 = time.monotonic()   # what the build adds to a fresh machine's setup: downloads to install
    try:
        info["stock_lib"] = str(stock_lib(log))
    except Exception as e:  # only `ftvm bench` needs it (plain Unicorn timings)
        info["stock_lib"] = None
        say(f"no stock libunicorn for `ftvm bench` to compare with ({e})")
    if (out / "FAILED").is_file():
        reason = (out / "FAILED").read_text().strip()
        info.update(inline=False, reason=reason)
        INFO.write_text(json.dumps(info, indent=2) + "\n")
        say(f"using the stock wheel and the C block hook ({HOOK_SLOWDOWN}): the patched build failed "
            f"({reason}); remove {out} to try again")
        return 0
    try:
        whl = wheel_in(out)
        built = whl is None
        if built:
            say(f"building libunicorn {UNICORN_VERSION} (x86 only) with {PATCH.name}; log in {log}")
            whl = build_wheel(key, out, log)
        pip("install", "-q", "--no-deps", "--force-reinstall", whl, log=log)
        if built:
            build_s = time.monotonic() - t0
            (out / "build.json").write_text(json.dumps({"build_s": round(build_s, 1)}))
            say(f"built and installed in {build_s:.0f} s")
        lib = installed_lib()
        try:
            build_s = json.loads((out / "build.json").read_text())["build_s"]
        except (OSError, ValueError, KeyError):
            build_s = None
        info.update(inline=True, wheel=str(whl), lib_sha256=sha256(lib), build_s=build_s)
    except Exception as e:  # any failure: stay on the stock wheel, say so once
        reason = str(e) or type(e).__name__
        out.mkdir(parents=True, exist_ok=True)
        (out / "FAILED").write_text(reason + "\n")
        info.update(inline=False, reason=reason)
        _back_to_stock(log)
        say(f"could not build the patched Unicorn ({reason}); using the stock wheel and the C block hook "
            f"({HOOK_SLOWDOWN})")
    INFO.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
