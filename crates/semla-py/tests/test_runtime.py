"""A good native citizen: the GIL is released while Rust computes, Ctrl-C
interrupts a long call, and the package works in a forked child (PyTorch
DataLoader workers fork)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np

import semla


def big_images(fixtures, count, size=(480, 640)):
    photo = semla.read_image(fixtures / "images" / "fog.png")
    tiled = np.tile(photo, (size[0] // photo.shape[0] + 1, size[1] // photo.shape[1] + 1, 1))
    return [np.ascontiguousarray(tiled[: size[0], : size[1]]) for _ in range(count)]


def test_a_python_thread_runs_while_segment_computes(fixtures):
    sl = semla.SemLA(fixtures / "model", fixtures / "library", top_k=2)
    # An image large enough for one call to last a while on this machine.
    size = (480, 640)
    for _ in range(4):
        image = big_images(fixtures, 1, size=size)[0]
        start = time.perf_counter()
        sl.segment(image)
        if time.perf_counter() - start > 0.2:
            break
        size = (size[0] * 2, size[1] * 2)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        start = time.perf_counter()
        sl.segment(image)
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    duration = end - start
    assert duration > 0.05, "the call is too short to tell"
    inside = [t for t in ticks if start + 0.1 * duration < t < end - 0.1 * duration]
    # Holding the GIL for the whole call would leave no tick inside it.
    assert len(inside) >= 5, (len(inside), duration)


def test_ctrl_c_interrupts_a_long_call(fixtures):
    script = textwrap.dedent(
        f"""
        import signal, threading, time, numpy as np, semla, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_runtime import big_images
        from pathlib import Path
        fixtures = Path({str(fixtures)!r})
        sl = semla.SemLA(fixtures / "model", fixtures / "library", top_k=2)
        images = big_images(fixtures, 96)
        start = time.perf_counter()
        sl.segment_batch(images[:4])
        per_four = time.perf_counter() - start
        # A shell's background job starts with SIGINT ignored, and Python then
        # installs no handler: install Ctrl-C's own, whatever started this.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGINT)).start()
        start = time.perf_counter()
        try:
            sl.segment_batch(images)
            print("finished", per_four * 24, time.perf_counter() - start)
        except KeyboardInterrupt:
            print("interrupted", per_four * 24, time.perf_counter() - start)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    word, expected_s, took_s = done.stdout.split()
    assert word == "interrupted", done.stdout
    # It stopped soon after the signal, long before the call would have ended.
    assert float(took_s) < 0.3 + 1.0 and float(took_s) < float(expected_s) / 2, done.stdout


def test_works_after_fork(fixtures):
    sl = semla.SemLA(fixtures / "model", fixtures / "library", top_k=2)
    image = big_images(fixtures, 1, size=(240, 320))[0]
    parent = sl.segment(image).labels
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns about forking a process that has threads: that
        # is the very case tested here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            child = sl.segment(image).labels
            os.write(write, b"same" if np.array_equal(child, parent) else b"diff")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung in segment")
    answer = os.read(read, 16)
    os.close(read)
    assert answer == b"same"
