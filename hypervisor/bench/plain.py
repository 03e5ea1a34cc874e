"""Child process of `ftvm bench`: one plain run of a guest on whichever libunicorn
this process loaded (the parent points LIBUNICORN_PATH at the stock wheel's). Prints
one JSON object: seconds, console output (hex), exit status, and whether the loaded
engine has the inline block counter (it must not, for a plain figure)."""
import json
import pathlib
import sys


def main(argv):
    from .. import counter, elf_loader
    from . import plain_run
    _, image = elf_loader.load_file(pathlib.Path(argv[0]))
    seconds, out, status = plain_run(image)
    print(json.dumps({"seconds": seconds, "out": out.hex(), "status": status,
                      "inline": counter.inline_available()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
