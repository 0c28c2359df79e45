#!/usr/bin/env python3
"""The power-cut harness for Holdfast (tests/powercut): boots the static gateway in qemu, cuts
the VM's power with SIGKILL, boots it again on the same disk and counts what survived.

run.sh prepares everything (packages, the guest kernel, the musl build, the initramfs, a venv
with paho-mqtt) and then calls this file twice:

    harness.py modules MODDIR STAGEDIR NAME...   copy kernel modules (deps first) into the
                                                initramfs stage and write etc/modules
    harness.py run --work DIR --kernel K --initramfs I --holdfast BIN [options]

`run` does the plumbing checks (the VM boots, the disk mounts, MQTT through the forwarded port,
retained messages across a clean reboot, a reboot after a power cut), then the power-cut rounds:

  1. a fresh ext4 disk image; VM #1 boots with the bridge pointed at a host port where nothing
     listens (uplink down), so every forwarded message stays in the bridge's disk queue;
  2. a device on the host publishes QoS 1 to sensors/dev1 as fast as the gateway acknowledges,
     payload = sequence number, and records every PUBACKed sequence number;
  3. after a random 2-6 s, SIGKILL of qemu: the guest's page cache, the gateway's memory and
     any write the guest had not handed to the virtio disk are gone (a power cut of the guest);
  4. a mosquitto on the host (loopback) with mosquitto_sub on edge/gw-001/#; VM #2 boots on the
     same disk with the bridge pointed at it; wait until the stream stops growing;
  5. every PUBACKed sequence number must have arrived (duplicates are allowed and counted).

Every child process (qemu, mosquitto, mosquitto_sub) dies with this process (PR_SET_PDEATHSIG)
and is killed on any exit path. Network: only 127.0.0.1 on the host; the guest reaches the
host's loopback through qemu's user-mode network at 10.0.2.2.
"""

import argparse
import ctypes
import lzma
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# --------------------------------------------------------------------------------------------
# `modules`: kernel modules for the initramfs
# --------------------------------------------------------------------------------------------

KO_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def _ko_name(path):
    name = path.name
    for suffix in KO_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("-", "_")
    return None


def _ko_bytes(path):
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(
            ["zstd", "-dc", str(path)], check=True, capture_output=True
        ).stdout
    return data


def _ko_depends(data):
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def cmd_modules(args):
    moddir = Path(args.moddir)
    stage = Path(args.stage)
    by_name = {}
    for p in (moddir / "kernel").rglob("*"):
        n = _ko_name(p)
        if n:
            by_name[n] = p
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().split():
            n = _ko_name(Path(line))
            if n:
                builtin.add(n)
    order, seen, blobs = [], set(), {}

    def visit(name, optional):
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in by_name:
            if optional:
                return
            sys.exit(f"error: kernel module {name} is neither in {moddir}/kernel nor built in")
        data = _ko_bytes(by_name[name])
        for dep in _ko_depends(data):
            visit(dep, False)
        blobs[name] = data
        order.append(name)

    for wanted in args.names:
        optional = wanted.startswith("?")
        visit(wanted.lstrip("?").replace("-", "_"), optional)
    (stage / "lib/modules").mkdir(parents=True, exist_ok=True)
    for name in order:
        (stage / "lib/modules" / f"{name}.ko").write_bytes(blobs[name])
    (stage / "etc").mkdir(parents=True, exist_ok=True)
    (stage / "etc/modules").write_text("".join(f"{n}.ko\n" for n in order))
    return 0


# --------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------

CHILDREN = []
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(cmd, **kw):
    """Starts a child that is SIGKILLed when this process dies, and on cleanup()."""
    p = subprocess.Popen(cmd, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL, **kw)
    CHILDREN.append(p)
    return p


def stop_child(p, sig=signal.SIGTERM, timeout=5.0):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def cleanup():
    for p in list(CHILDREN):
        if p.poll() is None:
            p.kill()
            p.wait()
    CHILDREN.clear()


def free_port():
    """A free TCP port on 127.0.0.1 (bound to port 0 and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class HarnessError(Exception):
    pass


ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------
# the VM
# --------------------------------------------------------------------------------------------


def newc_archive(files):
    """An uncompressed cpio (newc) archive of {path: bytes} regular files (mode 0644). The kernel
    unpacks archives appended to the initramfs over the earlier ones."""
    out = bytearray()

    def entry(name, mode, data, ino):
        name_b = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, int(time.time()), len(data), 0, 0, 0, 0, len(name_b), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name_b)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, data) in enumerate(files.items(), start=1):
        entry(name, 0o100644, data, 0x70000 + i)
    entry("TRAILER!!!", 0, b"", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def make_disk(path, size_mb):
    """A fresh sparse ext4 image. The inode tables and journal are written now, so the guest
    kernel does no lazy init writes of its own during the test."""
    if path.exists():
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    subprocess.run(
        [mkfs, "-F", "-q", "-L", "holdfast", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path)],
        check=True,
    )


def start_nbdkit(opts, disk, sock, log, verbose=False):
    """The volatile disk: `disk` behind nbdkit's cache filter in writeback mode, which keeps
    written blocks in a temporary file (deleted, so it dies with nbdkit) and writes them to the
    image only on a FLUSH or a FUA write. Returns once nbdkit serves on the unix socket."""
    if sock.exists():
        sock.unlink()
    env = dict(os.environ, TMPDIR=str(disk.parent))
    proc = spawn(
        [opts.nbdkit, "--foreground", *(["--verbose"] if verbose else []), "--unix", str(sock),
         "--filter=cache", "file", f"file={disk}", "cache=writeback", "cache-min-block-size=4096"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"nbdkit exited: {log.read_text().strip()}")
        if sock.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(sock))
                    if s.recv(8) == b"NBDMAGIC":  # its greeting: it is serving
                        return proc
                except OSError:
                    pass
        time.sleep(0.05)
    stop_child(proc, signal.SIGKILL)
    raise HarnessError(f"nbdkit did not serve {sock}")


def volatile_disk_drops_unflushed_writes(opts, rdir):
    """Checks the volatile disk model itself with qemu-io, a block-layer client: 64 KiB written
    without a flush must be gone after SIGKILL of the client and nbdkit; written and flushed,
    it must be in the image. Returns (unflushed survived, flushed survived)."""
    survived = []
    for flush in (False, True):
        img = rdir / f"volatile-{'flush' if flush else 'noflush'}.img"
        with open(img, "wb") as f:
            f.truncate(1024 * 1024)
        sock, log = img.with_suffix(".sock"), img.with_suffix(".nbdkit.log")
        nbd = start_nbdkit(opts, img, sock, log, verbose=True)
        # -t writeback: plain writes (qemu-io's default cache mode would make each one FUA).
        io = spawn(
            [opts.qemu_io, "-t", "writeback", "-f", "raw", f"nbd+unix:///?socket={sock}",
             "-c", "write -P 0xab 0 64k", *(["-c", "flush"] if flush else []), "-c", "sleep 60000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        want = "cache: flush" if flush else "cache: pwrite"
        deadline = time.monotonic() + 10
        while want not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let a flush finish writing back before the cut
        stop_child(io, signal.SIGKILL)
        stop_child(nbd, signal.SIGKILL)
        with open(img, "rb") as f:
            survived.append(f.read(4) == b"\xab" * 4)
    return tuple(survived)


class VM:
    """One boot of the gateway VM: qemu with the kernel, the initramfs plus a per-boot archive
    holding /etc/holdfast.toml, the disk image on virtio-blk, slirp networking with the MQTT
    port forwarded to 127.0.0.1:self.port, the console in a file and a control serial port.

    The disk, by `disk_model`:
      volatile  the image behind nbdkit's cache filter in writeback mode, over a unix socket:
                a write lands in nbdkit's cache and reaches the image only when the guest sends
                a FLUSH (fdatasync, journal commits, FUA). A power cut kills qemu and nbdkit
                together, so every write the guest did not flush is lost: a disk with a
                volatile write cache, at its worst.
      file      qemu writes the image file itself: every write the guest handed to the virtio
                disk survives the cut, flushed or not (a disk without a volatile cache)."""

    def __init__(self, opts, name, disk, config, disk_model=None, extra_files=None):
        self.opts = opts
        self.name = name
        self.disk = disk
        self.config = config
        self.extra_files = extra_files or {}
        self.disk_model = disk_model or opts.disk
        self.dir = disk.parent
        self.console = self.dir / f"{name}.console.log"
        self.qemu_log = self.dir / f"{name}.qemu.log"
        self.nbd_log = self.dir / f"{name}.nbdkit.log"
        self.nbd_sock = self.dir / f"{name}.nbd.sock"
        self.ctl = self.dir / f"{name}.ctl.sock"
        self.initrd = self.dir / f"{name}.initramfs"
        self.port = None
        self.proc = None
        self.nbd = None
        self.started = None
        self.boot_seconds = None

    def _start_nbdkit(self):
        self.nbd = start_nbdkit(self.opts, self.disk, self.nbd_sock, self.nbd_log)

    def start(self):
        base = Path(self.opts.initramfs).read_bytes()
        # The kernel looks for an uncompressed archive after the gzip one only at a 4-byte
        # aligned offset, and skips the zeros before it.
        base += b"\0" * (-len(base) % 512)
        files = {"etc/holdfast.toml": self.config.encode(), **self.extra_files}
        self.initrd.write_bytes(base + newc_archive(files))
        for f in (self.console, self.qemu_log, self.ctl):
            if f.exists():
                f.unlink()
        self.port = free_port()
        o = self.opts
        if self.disk_model == "volatile":
            self._start_nbdkit()
            drive = f"file=nbd+unix:///?socket={self.nbd_sock},format=raw,if=virtio,cache={o.cache}"
        else:
            drive = f"file={self.disk},format=raw,if=virtio,cache={o.cache}"
        if o.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host", "-smp", str(o.smp)]
        else:
            accel = ["-accel", "tcg", "-cpu", "max", "-smp", str(o.smp)]
        cmd = [
            o.qemu, "-nodefaults", "-no-user-config", "-machine", "pc", *accel, "-m", str(o.mem),
            "-kernel", o.kernel, "-initrd", str(self.initrd),
            "-append", "console=ttyS0 quiet panic=-1 8250.nr_uarts=2",
            "-drive", drive,
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:1883",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-serial", f"file:{self.console}",
            "-serial", f"unix:{self.ctl},server=on,wait=off",
            "-display", "none", "-no-reboot",
        ]
        self.started = time.monotonic()
        self.proc = spawn(cmd, stdout=open(self.qemu_log, "wb"), stderr=subprocess.STDOUT)

    def console_text(self):
        """The console so far, without the colour codes the gateway writes to a terminal."""
        try:
            return ANSI.sub("", self.console.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def tail(self, n=25):
        lines = self.console_text().splitlines()[-n:]
        q = self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() else ""
        out = "\n".join(f"    | {l}" for l in lines)
        if q:
            out += "\n    qemu: " + q
        return out

    def wait_for(self, text, timeout):
        """Waits for `text` on the console; an exited VM or the timeout is a HarnessError."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.console_text():
                return
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name}: the VM exited before {text!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: no {text!r} within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.05)

    def boot(self):
        self.start()
        self.wait_for("holdfast running", self.opts.boot_timeout)
        self.boot_seconds = time.monotonic() - self.started
        if not wait_port(self.port, 10):
            raise HarnessError(f"{self.name}: forwarded port {self.port} does not answer")
        return self.boot_seconds

    def powercut(self):
        """SIGKILL of qemu: the guest's RAM, page cache included, is gone at once; then of
        nbdkit, with the disk's unflushed writes."""
        for p in (self.proc, self.nbd):
            if p and p.poll() is None:
                p.kill()
                p.wait()
            if p in CHILDREN:
                CHILDREN.remove(p)

    def command(self, word):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.ctl))
            s.sendall(word.encode() + b"\n")

    def shutdown(self, timeout=30):
        """A clean shutdown: SIGTERM to the gateway, sync, unmount, power off."""
        self.command("stop")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.powercut()
            raise HarnessError(f"{self.name}: no clean power-off within {timeout}s:\n{self.tail()}")
        if self.proc in CHILDREN:
            CHILDREN.remove(self.proc)
        if self.nbd:
            # The guest flushed everything when it unmounted /data; what nbdkit still holds
            # unflushed is what a real disk would lose here too.
            stop_child(self.nbd)
        if "powercut-init: data unmounted" not in self.console_text():
            raise HarnessError(f"{self.name}: /data was not unmounted cleanly:\n{self.tail()}")


# --------------------------------------------------------------------------------------------
# gateway configs
# --------------------------------------------------------------------------------------------

BASE_CONFIG = """\
[node]
name = "gw-001"
data_dir = "/data/holdfast"

[[listeners]]
kind = "tcp"
bind = "0.0.0.0:1883"

[auth]
allow_anonymous = true

[log]
level = "info"
"""

BRIDGE_CONFIG = """
[[bridges]]
name = "cloud"
server = "mqtt://10.0.2.2:{port}"
client_id = "gw-001"
remote_prefix = "edge/gw-001/"
forward = ["sensors/#"]
qos = 1
queue = {{ max_bytes = "256MB", on_full = "drop_oldest", flush = "{flush}" }}
"""


def gateway_config(bridge_port=None, flush="group"):
    if bridge_port is None:
        return BASE_CONFIG
    return BASE_CONFIG + BRIDGE_CONFIG.format(port=bridge_port, flush=flush)


def check_config(opts, config):
    """`holdfast check` on the host (the static binary runs here too)."""
    path = Path(opts.work) / "check.toml"
    path.write_text(config)
    r = subprocess.run([opts.holdfast, "check", "--config", str(path)], capture_output=True, text=True)
    return r.returncode, (r.stdout + r.stderr).strip()


# --------------------------------------------------------------------------------------------
# MQTT clients on the host
# --------------------------------------------------------------------------------------------

import paho.mqtt.client as mqtt  # noqa: E402  (run.sh installs it into the venv)


class Client:
    """A small blocking wrapper over paho for the plumbing checks."""

    def __init__(self, port, client_id):
        self.messages = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload.decode(errors="replace"), msg.retain))
            self.cond.notify_all()

    def subscribe(self, topic):
        result, mid = self.c.subscribe(topic, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise HarnessError(f"subscribe {topic}: {mqtt.error_string(result)}")
        time.sleep(0)  # SUBACK is awaited by the publish round trip the callers do next

    def publish(self, topic, payload, retain=False):
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        if not info.is_published():
            raise HarnessError(f"no PUBACK for {topic}")

    def wait_messages(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n and time.monotonic() < deadline:
                self.cond.wait(0.1)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class Device(threading.Thread):
    """The device: publishes QoS 1 to sensors/dev1 (payload = sequence number) keeping `window`
    messages unacknowledged, until the connection dies. `acked` holds the sequence numbers the
    gateway PUBACKed, in PUBACK order."""

    def __init__(self, port, window, topic="sensors/dev1"):
        super().__init__(daemon=True)
        self.port = port
        self.window = window
        self.topic = topic
        self.acked = []
        self.sent = 0
        self.pending = {}
        self.connected = threading.Event()
        self.first_publish = None
        self.done = False
        self.error = None

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code == 0:
            self.connected.set()
        else:
            self.error = f"CONNACK {reason_code}"
            self.done = True

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        seq = self.pending.pop(mid, None)
        if seq is not None:
            self.acked.append(seq)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.done = True

    def run(self):
        try:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev1", protocol=mqtt.MQTTv311)
            c.max_inflight_messages_set(self.window)
            c.on_connect = self._on_connect
            c.on_publish = self._on_publish
            c.on_disconnect = self._on_disconnect
            c.connect("127.0.0.1", self.port, keepalive=60)
            while not self.done and not self.connected.is_set():
                if c.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    self.done = True
            self.first_publish = time.monotonic()
            while not self.done:
                while len(self.pending) < self.window and not self.done:
                    info = c.publish(self.topic, str(self.sent), qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        self.done = True
                        break
                    self.pending[info.mid] = self.sent
                    self.sent += 1
                if c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except Exception as e:  # noqa: BLE001 - reported, the round fails on it
            self.error = repr(e)
        finally:
            self.done = True
            self.connected.set()


class Cloud:
    """The cloud broker: mosquitto on 127.0.0.1 and mosquitto_sub on edge/gw-001/# (QoS 1),
    its lines read as they come."""

    PROBE_TOPIC = "edge/gw-001/powercut-probe"

    def __init__(self, rdir):
        self.dir = rdir
        self.port = free_port()
        conf = rdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The subscriber may fall behind during the bridge's drain: queue, never drop.
            "max_queued_messages 0\n"
            "log_dest stderr\n"
            "log_type all\n"
        )
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = spawn([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(rdir / "mosquitto.log", "wb"))
        if not wait_port(self.port, 10):
            raise HarnessError(f"mosquitto did not listen on {self.port}")
        self.lines = []
        self.lock = threading.Lock()
        self.sub = spawn(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port),
             "-i", "powercut-sub", "-t", "edge/gw-001/#", "-q", "1", "-v"],
            stdout=subprocess.PIPE, stderr=open(rdir / "mosquitto_sub.err", "wb"),
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        # Readiness without a sleep: the subscriber has seen a probe published after it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port),
                            "-t", self.PROBE_TOPIC, "-m", "probe", "-q", "1"],
                           stdin=subprocess.DEVNULL, capture_output=True)
            with self.lock:
                if any(l.startswith(self.PROBE_TOPIC + " ") for l in self.lines):
                    return
            time.sleep(0.2)
        raise HarnessError("mosquitto_sub did not receive the probe")

    def _read(self):
        with open(self.dir / "cloud.txt", "w") as out:
            for raw in self.sub.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                with self.lock:
                    self.lines.append(line)
                out.write(line + "\n")
                out.flush()

    def messages(self):
        """(topic, payload) of everything but the probes, in arrival order."""
        with self.lock:
            lines = list(self.lines)
        out = []
        for l in lines:
            topic, _, payload = l.partition(" ")
            if topic != self.PROBE_TOPIC:
                out.append((topic, payload))
        return out

    def health(self):
        """None while the broker and the subscriber run, else what happened to them."""
        problems = []
        for name, p in (("mosquitto", self.broker), ("mosquitto_sub", self.sub)):
            if p.poll() is not None:
                problems.append(f"{name} exited with {p.returncode}")
        return "; ".join(problems) or None

    def stop(self):
        stop_child(self.sub, signal.SIGINT)
        self.reader.join(5)
        stop_child(self.broker)


# --------------------------------------------------------------------------------------------
# plumbing checks
# --------------------------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.notes = []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed += 1
            print(f"  FAIL  {what}" + (f"\n{detail}" if detail else ""))
        return ok

    def note(self, text):
        self.notes.append(text)
        print(f"  note  {text}")


def retained(port, filt, n, timeout=5.0):
    c = Client(port, "powercut-retained")
    try:
        c.subscribe(filt)
        c.wait_messages(n, timeout)
        # One more than expected would have come with the same SUBACK; a short look for it.
        msgs = c.wait_messages(n + 1, 0.5)
        return sorted((t, p) for t, p, r in msgs if r)
    finally:
        c.close()


def run_plumbing(opts, checks):
    rdir = Path(opts.work) / "plumbing"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    disk = rdir / "disk.img"
    make_disk(disk, opts.disk_mb)
    config = gateway_config()
    print(f"== plumbing checks ({opts.accel}, disk {disk})")
    if opts.disk == "volatile":
        lost_unflushed, kept_flushed = volatile_disk_drops_unflushed_writes(opts, rdir)
        lost_unflushed = not lost_unflushed
        checks.check(lost_unflushed and kept_flushed,
                     "the volatile disk loses unflushed writes at a cut and keeps flushed ones",
                     f"    unflushed write lost: {lost_unflushed}, flushed write kept: {kept_flushed}")

    vm = VM(opts, "boot1", disk, config)
    try:
        secs = vm.boot()
        text = vm.console_text()
        checks.check(True, f"VM boots, mounts /dev/vda and the gateway runs ({secs:.1f}s)")
        checks.check("vda write cache: write back" in text,
                     "the guest sees a volatile write cache on vda (it must send flushes)",
                     vm.tail())
        c = Client(vm.port, "powercut-plumb")
        c.subscribe("plumb/#")
        c.publish("plumb/ping", "pong")
        got = c.wait_messages(1, 5)
        checks.check(("plumb/ping", "pong", False) in got,
                     f"a host client publishes and subscribes through 127.0.0.1:{vm.port}", str(got))
        c.publish("keep/a", "A", retain=True)
        c.publish("keep/b", "B", retain=True)
        c.close()
        vm.shutdown()
        checks.check(True, "clean shutdown: gateway stopped, /data unmounted, VM powered off")
    finally:
        vm.powercut()

    vm = VM(opts, "boot2", disk, config)
    try:
        vm.boot()
        got = retained(vm.port, "keep/#", 2)
        checks.check(got == [("keep/a", "A"), ("keep/b", "B")],
                     "retained messages persisted by the gateway are there after a clean reboot",
                     f"    got {got}")
        c = Client(vm.port, "powercut-plumb")
        c.publish("keep/c", "C", retain=True)
        c.close()
        # sled's background flush runs every 500 ms; give it several rounds (kill -9 test does 3s).
        time.sleep(3)
    finally:
        vm.powercut()
    checks.check(True, "power cut: SIGKILL of qemu mid-run")

    vm = VM(opts, "boot3", disk, config)
    try:
        secs = vm.boot()
        text = vm.console_text()
        checks.check(True, f"the VM boots again on the same disk after the power cut ({secs:.1f}s)")
        recovered = [l for l in text.splitlines() if "kernel: " in l and "EXT4-fs (vda)" in l]
        checks.check(any("recovery complete" in l or "orphan" in l or "mounted filesystem" in l
                         for l in recovered),
                     "ext4 mounted the cut disk (journal replayed)", "\n".join(recovered))
        for l in recovered:
            print(f"        {l.split('] ', 1)[-1]}")
        got = retained(vm.port, "keep/#", 3)
        checks.check(("keep/a", "A") in got and ("keep/b", "B") in got,
                     "retained messages flushed at the clean shutdown survive the power cut",
                     f"    got {got}")
        if ("keep/c", "C") in got:
            checks.note("keep/c, retained 3 s before the power cut, survived")
        else:
            checks.note("keep/c, retained 3 s before the power cut, was lost "
                        "(allowed: retained state is kill -9 durable, not power-cut durable)")
        vm.shutdown()
        checks.check(True, "clean shutdown after the reboot")
    finally:
        vm.powercut()


# --------------------------------------------------------------------------------------------
# the watchdog: udev rules, the service user, feeding and a reset when hung
# --------------------------------------------------------------------------------------------

UDEV_RULES = (Path(__file__).resolve().parents[2]
              / "yocto/meta-holdfast/recipes-holdfast/holdfast/files/99-holdfast.rules")


def udev_rules(path):
    """The rules of a udev rules file as (matches, assignments) pairs: matches maps KEY to
    the pattern of KEY=="..." (globs, `|` alternatives), assignments maps KEY to the value of
    KEY="..." / KEY+="..."."""
    rules = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        matches, assigns = {}, {}
        for key, op, value in re.findall(r'([A-Z_]+(?:\{[^}]*\})?)\s*(==|!=|\+=|:=|=)\s*"([^"]*)"', line):
            if op == "==":
                matches[key] = value
            elif op != "!=":
                assigns[key] = value
        rules.append((matches, assigns))
    return rules


def udev_apply(rules, device):
    """What udev would assign to `device` ({"KERNEL", "SUBSYSTEM", "ACTION"}): the GROUP and
    MODE of every matching rule, later rules winning, as udev applies them."""
    import fnmatch
    out = {}
    for matches, assigns in rules:
        if all(any(fnmatch.fnmatchcase(device.get(k, ""), alt) for alt in pattern.split("|"))
               for k, pattern in matches.items()):
            for k in ("GROUP", "MODE"):
                if k in assigns:
                    out[k] = assigns[k]
    return out


WATCHDOG_TIMEOUT = 5


def watchdog_config():
    return BASE_CONFIG + f"""
[board]
kind = "linux"
watchdog_device = "/dev/watchdog"
watchdog_timeout = "{WATCHDOG_TIMEOUT}s"
"""


def run_watchdog_check(opts, checks):
    """Boots with softdog: the watchdog device nodes the kernel makes get the udev rules'
    group and mode, the gateway runs as the unprivileged service user, opens /dev/watchdog
    and keeps the board up past several timeouts; frozen (SIGSTOP), it gets the board reset."""
    rdir = Path(opts.work) / "watchdog"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    disk = rdir / "disk.img"
    make_disk(disk, opts.disk_mb)
    print("== watchdog check (softdog, the service user, the udev rules)")
    # The devices softdog makes (the legacy misc node and the watchdog-class one) and what
    # the shipped udev rules give each; the VM applies a line only where its kernel agrees.
    expected = [("watchdog", "misc"), ("watchdog0", "watchdog")]
    rules = udev_rules(UDEV_RULES)
    lines = []
    for name, subsystem in expected:
        got = udev_apply(rules, {"KERNEL": name, "SUBSYSTEM": subsystem, "ACTION": "add"})
        checks.check(got.get("GROUP") == "holdfast" and got.get("MODE") == "0660",
                     f"99-holdfast.rules gives /dev/{name} (subsystem {subsystem}) to group holdfast, 0660",
                     f"    the rules give {got}")
        if got.get("GROUP") and got.get("MODE"):
            lines.append(f"{name} {subsystem} {got['GROUP']} {got['MODE']}\n")
    vm = VM(opts, "watchdog", disk, watchdog_config(),
            extra_files={"etc/watchdog-test": "".join(lines).encode()})
    try:
        vm.start()
        vm.wait_for("holdfast running", opts.boot_timeout)
        devices = set(re.findall(r"powercut-init: device /dev/(\S+) subsystem=(\S+)", vm.console_text()))
        checks.check(set(expected) <= devices,
                     "softdog made /dev/watchdog (misc) and /dev/watchdog0 (watchdog), as the rules expect",
                     f"    the kernel made {sorted(devices)}")
        vm.wait_for("powercut-init: gateway uid", 10)
        text = vm.console_text()
        uid = re.search(r"powercut-init: gateway uid (\d+)", text)
        checks.check(uid is not None and uid.group(1) == "999",
                     "the gateway runs as the service user (uid 999), not root",
                     f"    {uid.group(0) if uid else 'no uid line'}")
        vm.wait_for("board ready", 10)
        text = vm.console_text()
        armed = re.search(r"board ready.*watchdog_seconds=(\d+)", text)
        checks.check(armed is not None and armed.group(1) == str(WATCHDOG_TIMEOUT),
                     f"the service user opened /dev/watchdog and armed it ({WATCHDOG_TIMEOUT} s)",
                     vm.tail())
        t = time.monotonic()
        time.sleep(WATCHDOG_TIMEOUT * 3)
        checks.check(vm.proc.poll() is None and wait_port(vm.port, 5),
                     f"fed: the board is still up {time.monotonic() - t:.0f} s later "
                     f"({WATCHDOG_TIMEOUT} s timeout) and the gateway answers", vm.tail())
        vm.command("freeze")
        t = time.monotonic()
        try:
            vm.proc.wait(WATCHDOG_TIMEOUT + 15)
            reset = True
        except subprocess.TimeoutExpired:
            reset = False
        checks.check(reset, f"a frozen gateway gets the board reset by the watchdog "
                            f"({time.monotonic() - t:.1f} s after SIGSTOP)", vm.tail())
    finally:
        vm.powercut()


# --------------------------------------------------------------------------------------------
# power-cut rounds
# --------------------------------------------------------------------------------------------


def analyse(acked, msgs, sent):
    """Compares the PUBACKed sequence numbers with what the cloud received."""
    per_topic = {}
    for topic, payload in msgs:
        try:
            per_topic.setdefault(topic, []).append(int(payload))
        except ValueError:
            per_topic.setdefault(topic, []).append(-1)
    stream = per_topic.get("edge/gw-001/sensors/dev1", [])
    arrived = set(stream)
    acked_set = set(acked)
    lost = sorted(acked_set - arrived)
    order = {}
    for topic, seqs in per_topic.items():
        # A step back that is a resend of something already delivered is a duplicate; a step
        # back to a number never seen before is an order violation.
        seen, hi, regressions = set(), -1, 0
        for s in seqs:
            if s < hi and s not in seen:
                regressions += 1
            seen.add(s)
            hi = max(hi, s)
        order[topic] = regressions
    return {
        "acked": len(acked_set),
        "arrived": len(stream),
        "distinct": len(arrived),
        "lost": lost,
        "duplicates": len(stream) - len(arrived),
        "unacked_arrived": len(arrived - acked_set),
        "never_sent": len([s for s in arrived if s < 0 or s >= sent]),
        "order": order,
        "other_topics": sorted(t for t in per_topic if t != "edge/gw-001/sensors/dev1"),
    }


def run_round(opts, n, rng, flush):
    rdir = Path(opts.work) / f"round{n}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    disk = rdir / "disk.img"
    make_disk(disk, opts.disk_mb)
    r = {"round": n}
    t0 = time.monotonic()

    # 1-3: uplink down, the device publishes, power cut.
    down_port = free_port()  # released: nothing listens there
    vm1 = VM(opts, "vm1", disk, gateway_config(down_port, flush))
    try:
        r["boot1"] = vm1.boot()
        dev = Device(vm1.port, opts.window)
        dev.start()
        dev.connected.wait(10)
        if dev.error or dev.done:
            raise HarnessError(f"round {n}: the device could not publish: {dev.error}\n{vm1.tail()}")
        cut_after = rng.uniform(opts.cut_min, opts.cut_max)
        time.sleep(max(0.0, dev.first_publish + cut_after - time.monotonic()))
        vm1.powercut()
        r["cut_after"] = cut_after
        dev.join(15)
        if dev.is_alive():
            raise HarnessError(f"round {n}: the device did not notice the power cut")
    finally:
        vm1.powercut()
    acked = list(dev.acked)
    (rdir / "acked.txt").write_text("".join(f"{s}\n" for s in acked))
    r["sent"] = dev.sent
    r["rate"] = len(acked) / cut_after if cut_after else 0.0
    if not acked:
        raise HarnessError(f"round {n}: the gateway acknowledged nothing in {cut_after:.1f}s "
                           f"({dev.sent} sent, error {dev.error}):\n{vm1.tail()}")

    # 4: the cloud comes up, VM #2 boots on the same disk and drains the queue.
    cloud = Cloud(rdir)
    vm2 = VM(opts, "vm2", disk, gateway_config(cloud.port, flush))
    try:
        r["boot2"] = vm2.boot()
        if cloud.health():
            raise HarnessError(f"round {n}: the cloud broker failed before VM #2 was up: {cloud.health()}")
        ready = time.monotonic()
        acked_set = set(acked)
        last_count, last_change = -1, ready
        while True:
            now = time.monotonic()
            msgs = cloud.messages()
            if len(msgs) != last_count:
                last_count, last_change = len(msgs), now
            quiet = now - last_change
            done = acked_set <= {int(p) for t, p in msgs if p.lstrip("-").isdigit()}
            if done and quiet >= opts.quiet:
                break
            if quiet >= opts.settle:
                break
            if now - ready > opts.drain_timeout:
                break
            time.sleep(0.2)
        r["drain"] = last_change - ready
        msgs = cloud.messages()
        if cloud.health():
            r["cloud_failed"] = cloud.health()
        if vm2.proc.poll() is not None:
            r["vm2_exited"] = True
    finally:
        vm2.powercut()
        cloud.stop()
    r.update(analyse(acked, msgs, dev.sent))
    r["seconds"] = time.monotonic() - t0
    r["ok"] = (not r["lost"] and r["never_sent"] == 0 and not r.get("vm2_exited")
               and not r.get("cloud_failed"))
    if not r["ok"]:
        r["vm2_tail"] = vm2.tail(40)
    return r


def print_round(r, control=False):
    if control:
        verdict = "lost acknowledged messages, as a control must" if r["lost"] else "nothing lost"
    else:
        verdict = "ok" if r["ok"] else "FAIL"
    order = ", ".join(f"{t}: {'in order' if k == 0 else f'{k} out of order'}" for t, k in r["order"].items()) or "-"
    print(
        f"  round {r['round']}: cut after {r['cut_after']:.2f}s, sent {r['sent']}, "
        f"acked {r['acked']} ({r['rate']:.0f}/s), arrived {r['arrived']} "
        f"({r['distinct']} distinct), lost {len(r['lost'])}, duplicates {r['duplicates']}, "
        f"unacked but arrived {r['unacked_arrived']}; boot {r['boot1']:.1f}s + {r['boot2']:.1f}s, "
        f"drain {r['drain']:.1f}s, round {r['seconds']:.1f}s -> {verdict}"
    )
    print(f"           order per topic: {order}")
    if r["lost"]:
        head = r["lost"][:20]
        print(f"           {'lost' if control else 'LOST'} acked sequence numbers ({len(r['lost'])}): {head}{' ...' if len(r['lost']) > 20 else ''}")
    if r["never_sent"]:
        print(f"           {r['never_sent']} arrived numbers were never sent")
    if r.get("cloud_failed"):
        print(f"           the cloud side failed during the drain: {r['cloud_failed']} "
              "(a harness problem, not the gateway's; see mosquitto.log in the round's dir)")
    if r.get("vm2_exited"):
        print("           VM #2 exited by itself during the drain")
    if "vm2_tail" in r and not control:
        print("           VM #2 console tail:\n" + r["vm2_tail"])


def pick_accel(opts):
    """kvm when /dev/kvm can boot this kernel, else tcg. A /dev/kvm can be there and still not
    run a stock kernel: PVM (kvm_pvm, a paravirtual KVM for nested use without hardware
    virtualisation) needs a guest built for it, and a nested KVM may reject `-cpu host`. So a
    short probe boot decides: the init's first line within 20 s."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg", "/dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel"
    probe_dir = Path(opts.work) / "kvm-probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    disk = probe_dir / "disk.img"
    disk.write_bytes(b"")
    saved = opts.accel, opts.smp
    opts.accel, opts.smp = "kvm", 1
    vm = VM(opts, "probe", disk, gateway_config(), disk_model="file")
    try:
        vm.start()
        vm.wait_for("powercut-init: started", 20)
        return "kvm", "/dev/kvm boots the guest kernel"
    except HarnessError as e:
        return "tcg", "a probe boot under kvm failed: " + str(e).splitlines()[0]
    finally:
        vm.powercut()
        opts.accel, opts.smp = saved


# Synced long after the power cut (60s is the longest interval the config takes): every message
# of a round is acknowledged from the page cache.
CONTROL_FLUSH = "interval:60s"


def cmd_run(opts):
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    if opts.accel == "auto":
        opts.accel, why = pick_accel(opts)
        print(f"== accel {opts.accel}: {why}")
    if opts.smp is None:
        opts.smp = 2 if opts.accel == "kvm" else 1
    if opts.boot_timeout is None:
        opts.boot_timeout = 60 if opts.accel == "kvm" else 300
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    print(f"== powercut: accel {opts.accel}, {opts.smp} vCPU, {opts.mem} MiB, "
          f"disk {opts.disk} ({opts.disk_mb} MiB ext4, qemu cache={opts.cache}), seed {seed}")

    failures = 0
    checks = Checks()
    if opts.watchdog:
        try:
            run_watchdog_check(opts, checks)
        except HarnessError as e:
            checks.check(False, "watchdog", str(e))
        print(f"watchdog: {checks.passed} passed, {checks.failed} failed")
        return 1 if checks.failed else 0
    if opts.plumbing or not opts.no_plumbing:
        t = time.monotonic()
        try:
            run_plumbing(opts, checks)
        except HarnessError as e:
            checks.check(False, "plumbing", str(e))
        try:
            run_watchdog_check(opts, checks)
        except HarnessError as e:
            checks.check(False, "watchdog", str(e))
        print(f"plumbing: {checks.passed} passed, {checks.failed} failed "
              f"({time.monotonic() - t:.1f}s)")
        failures += checks.failed
        if opts.plumbing:
            return 1 if failures else 0

    code, out = check_config(opts, gateway_config(1883, opts.flush))
    if code != 0:
        print(f"== the scenario's config does not pass `holdfast check`:\n{out}")
        if "not supported by this build yet" in out:
            print("== this build does not support [[bridges]] yet: the power-cut rounds cannot run")
        return 1

    print(f"== power-cut rounds: {opts.rounds}, queue flush {opts.flush!r}, "
          f"cut after {opts.cut_min:g}-{opts.cut_max:g}s, device window {opts.window}")
    results = []
    errors = 0
    for n in range(1, opts.rounds + 1):
        try:
            r = run_round(opts, n, rng, opts.flush)
            results.append(r)
            print_round(r)
        except HarnessError as e:
            errors += 1
            print(f"  round {n}: ERROR {e}")
    if opts.control:
        # The negative control: a queue that acknowledges before it syncs must lose messages
        # here, or this harness cannot see below the page cache and its passes mean nothing.
        print(f"== negative control: queue flush {CONTROL_FLUSH!r} (PUBACK before fdatasync)")
        try:
            r = run_round(opts, 0, rng, CONTROL_FLUSH)
            print_round(r, control=True)
            saw = bool(r["lost"])
            print(f"  control: {'ok, the power cut lost acknowledged messages that were only in the page cache' if saw else 'FAIL: nothing lost, so the harness does not model a power cut'}")
            failures += 0 if saw else 1
        except HarnessError as e:
            failures += 1
            print(f"  control: ERROR {e}")
    ok = sum(1 for r in results if r["ok"])
    bad = len(results) - ok + errors
    if results:
        tot = lambda k: sum(r[k] if isinstance(r[k], (int, float)) else len(r[k]) for r in results)  # noqa: E731
        boots = [r["boot1"] for r in results] + [r["boot2"] for r in results]
        print("== summary")
        print(f"  rounds {opts.rounds} ({ok} ok, {bad} failed), acked {tot('acked')}, "
              f"arrived {tot('arrived')} ({tot('distinct')} distinct), lost {tot('lost')}, "
              f"duplicates {tot('duplicates')}, unacked but arrived {tot('unacked_arrived')}")
        print(f"  boot time {min(boots):.1f}-{max(boots):.1f}s (avg {sum(boots) / len(boots):.1f}s), "
              f"round time avg {sum(r['seconds'] for r in results) / len(results):.1f}s, "
              f"accel {opts.accel}")
    print(f"powercut: {ok} passed, {bad} failed")
    failures += bad
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("modules", help="copy kernel modules into an initramfs stage")
    m.add_argument("moddir")
    m.add_argument("stage")
    m.add_argument("names", nargs="+")
    r = sub.add_parser("run", help="plumbing checks and power-cut rounds")
    r.add_argument("--work", required=True)
    r.add_argument("--kernel", required=True)
    r.add_argument("--initramfs", required=True)
    r.add_argument("--holdfast", required=True, help="the static binary (for `holdfast check`)")
    r.add_argument("--qemu", default="qemu-system-x86_64")
    r.add_argument("--nbdkit", default="nbdkit")
    r.add_argument("--qemu-io", default="qemu-io")
    r.add_argument("--disk", choices=["volatile", "file"], default=os.environ.get("POWERCUT_DISK", "volatile"),
                   help="volatile: unflushed writes die with the VM (nbdkit cache filter); "
                        "file: every write the guest issued survives (qemu on the image file)")
    r.add_argument("--rounds", type=int, default=int(os.environ.get("POWERCUT_ROUNDS", "3")))
    r.add_argument("--plumbing", action="store_true", help="only the plumbing checks")
    r.add_argument("--watchdog", action="store_true",
                   help="only the watchdog check (softdog, the service user, the udev rules)")
    r.add_argument("--no-plumbing", action="store_true", help="skip the plumbing checks")
    r.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=os.environ.get("POWERCUT_ACCEL", "auto"))
    r.add_argument("--smp", type=int, default=None, help="vCPUs (default 2 with kvm, 1 with tcg)")
    r.add_argument("--mem", type=int, default=512, help="guest MiB")
    r.add_argument("--cache", default="writeback",
                   help="qemu -drive cache= mode (writeback: the guest sees a volatile write cache)")
    r.add_argument("--disk-mb", type=int, default=1024)
    r.add_argument("--cut-min", type=float, default=2.0)
    r.add_argument("--cut-max", type=float, default=6.0)
    r.add_argument("--window", type=int, default=32, help="unacknowledged QoS 1 messages in flight")
    r.add_argument("--quiet", type=float, default=2.0,
                   help="seconds without a new message that end the drain once every acked one arrived")
    r.add_argument("--settle", type=float, default=15.0,
                   help="seconds without a new message that end the drain in any case")
    r.add_argument("--drain-timeout", type=float, default=300.0)
    r.add_argument("--boot-timeout", type=float, default=None)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--flush", default="group",
                   help="the bridge queue's flush mode in the rounds: group | every | interval:DUR")
    r.add_argument("--control", action="store_true",
                   help=f"add a negative-control round (flush {CONTROL_FLUSH!r}) that must lose messages")
    args = ap.parse_args()
    if args.cmd == "modules":
        return cmd_modules(args)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return cmd_run(args)
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
