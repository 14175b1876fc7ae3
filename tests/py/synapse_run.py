#!/usr/bin/env python3
"""Run Synapse in this process and end it when stdin reaches end-of-file.

    synapse_run.py -c homeserver.yaml [other synapse.app.homeserver arguments]

The test harness keeps the write end of this process's stdin open for as long as it wants the
server. When the harness drops it, or the test process dies in any way (panic, abort, SIGKILL),
the pipe closes and this server exits at once, so no homeserver outlives its test.
"""
import os
import runpy
import sys
import threading


def watch_stdin():
    try:
        while sys.stdin.buffer.read(1024):
            pass
    except Exception:
        pass
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=watch_stdin, name="stdin-watchdog", daemon=True).start()
    sys.argv = ["synapse.app.homeserver"] + sys.argv[1:]
    runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
