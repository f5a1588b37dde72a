"""Blocking calls release the GIL and let Ctrl-C through."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import SUBJECT_ROOT


def test_a_blocked_wait_releases_the_gil(db):
    client = db.client()
    sub = client.subscribe("public.ops", start="new")
    count = 0
    stop = threading.Event()

    def spin():
        nonlocal count
        while not stop.is_set():
            count += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.1)
    before = count
    assert sub.next(timeout=1.0) is None
    during = count - before
    stop.set()
    thread.join()
    sub.close()
    # The other thread ran all along (with the GIL held it would have been stuck).
    assert during > 10_000, during


def test_ctrl_c_interrupts_a_blocked_iteration(db):
    # The child handles SIGINT as an interactive Python program does: a process started in
    # the background by a non-interactive shell inherits SIGINT *ignored*, and Python then
    # keeps it ignored (that is how CI's runs hung here).
    script = f"""
import signal, sys, walbrook
signal.signal(signal.SIGINT, signal.default_int_handler)
client = walbrook.Client.connect({db.servers.nats_url!r}, {db.name!r}, root={SUBJECT_ROOT!r})
sub = client.subscribe("public.ops", start="new")
print("ready", flush=True)
try:
    for event in sub:
        print("unexpected", event, flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Say where the process stood instead of a bare timeout.
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no exit within 10 s of SIGINT; stdout {out!r}, stderr {err!r}")
        assert proc.returncode == 3, (out, err)
        assert out.strip() == "interrupted"
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
