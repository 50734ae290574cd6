"""Run a stage script, SIGKILLing its whole process group just before its N-th rename (a fault injected on purpose).

    python killpoint.py N COUNT_FILE SCRIPT [ARGS...]

A rename is the instant a finished temp file becomes an output: the riskiest point for atomicity (a torn file) and
for ordering (an index renamed before the tars it lists). N = 0 never kills; the run then writes how many renames
it made to COUNT_FILE, so a test can draw a seeded kill point among them. The kill takes the process group, so a
stage's pool workers die with it, as on a machine that loses power.
"""
import os
import runpy
import signal
import sys


def main() -> None:
    kill_at, count_file, script, *args = sys.argv[1:]
    kill_at, renames = int(kill_at), 0

    def counted(rename):
        def wrapper(*a, **kw):
            nonlocal renames
            renames += 1
            if renames == kill_at:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            return rename(*a, **kw)
        return wrapper

    # pathlib's rename/replace and shutil.move go through these two.
    os.replace, os.rename = counted(os.replace), counted(os.rename)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` would see it
    runpy.run_path(script, run_name="__main__")
    with open(count_file, "w") as f:
        f.write(str(renames))


if __name__ == "__main__":  # spawned pool workers import this module as __mp_main__: they must not run a stage
    main()
