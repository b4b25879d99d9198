"""One guest boot: a Debian kernel under QEMU (TCG) running one shell script on the host's root.

The guest's root is the host's `/`, shared read-only over virtiofs (QEMU's virtiofsd), under a
tmpfs overlay so the guest may write anywhere without touching the host. A second virtiofs share
(read-write) is the run directory, where the guest leaves its marker files: `booted` once user
space is up, then the script's output and `rc`. A run without `booted` is a boot failure (the only
thing a caller may retry); a run with `booted` but no `rc` is a failure of the script (time-out).
The guest kernel's modules and headers are bind-mounted where bcc and modprobe look for them.
"""

from __future__ import annotations

import lzma
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.kernelvm.fetch import KernelTree

VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
BUSYBOX = "/bin/busybox"
# what the initramfs needs before it can mount the root: PCI transport, the file system, overlay
BOOT_MODULES = ("virtio_pci", "virtiofs", "overlay")


class VmError(Exception):
    """The host cannot run guests (a tool is missing, or the kernel tree is incomplete)."""


@dataclass(frozen=True)
class VmConfig:
    """How a guest is run. TCG, since KVM may be unusable (e.g. nested PVM hosts)."""

    cpus: int = 2
    mem_mib: int = 2048
    # Without CMPXCHG16B. 6.12's SLUB allocates with `cmpxchg16b %gs:(...)` (this_cpu_try_cmpxchg128),
    # and QEMU 7.2's TCG left garbage in the upper bits of RFLAGS after it (the oopses show EFLAGS
    # like 0x05122f4a, equal to the low bits of a register): about half the 6.12 boots panicked in
    # kmem_cache_alloc (prepare_creds early on) or killed init, with -cpu max or Skylake-Client-v4,
    # multi- or single-threaded, with or without KASLR. Without cx16 the kernel falls back to its
    # software this_cpu_cmpxchg16b_emu: 8 of 8 boots then succeeded. No kernel here needs cx16.
    cpu_model: str = "max,-cx16"
    tcg_thread: str = "multi"
    boot_timeout_s: float = 120.0  # until the guest's user space reports in
    timeout_s: float = 1500.0  # the whole run (the subset took 7-8 minutes under TCG, two guests at a time)
    append: str = ""


@dataclass(frozen=True)
class GuestResult:
    booted: bool
    rc: int | None  # the script's exit status; None when the guest never reported one
    output: str  # the script's stdout and stderr, interleaved
    console_tail: str
    wall_s: float  # the whole run, host clock
    boot_s: float | None  # QEMU start to the guest's `booted` marker
    files: dict[str, str]  # what the command left in /run/kvm (the run share), by name

    def text(self, name: str) -> str:
        return self.files.get(name, "")


def _virtiofsd() -> str:
    for p in VIRTIOFSD_PATHS:
        if os.access(p, os.X_OK):
            return p
    found = shutil.which("virtiofsd")
    if found:
        return found
    raise VmError("virtiofsd not found (Debian: apt-get install qemu-system-x86)")


def check_host() -> None:
    """Raise VmError naming what is missing on the host to boot guests."""
    missing = [t for t in ("qemu-system-x86_64",) if shutil.which(t) is None]
    if not os.access(BUSYBOX, os.X_OK):
        missing.append(BUSYBOX)
    if missing:
        raise VmError(f"missing {', '.join(missing)} (Debian: apt-get install qemu-system-x86 busybox-static)")
    _virtiofsd()
    if os.geteuid() != 0:
        raise VmError("booting guests needs root (virtiofsd shares /, the guest runs tests as root)")


def _module_order(tree: KernelTree, wanted: tuple[str, ...]) -> list[Path]:
    """Module files to insmod, dependencies first, from modules.dep (made by depmod at fetch)."""
    deps: dict[str, list[str]] = {}
    for line in (tree.modules / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {_mod_name(m): m for m in deps}
    builtin = {_mod_name(m) for m in (tree.modules / "modules.builtin").read_text().split()}
    order: list[str] = []

    def add(rel: str) -> None:
        if rel in order:
            return
        for d in deps.get(rel, []):
            add(d)
        order.append(rel)

    for name in wanted:
        if name in by_name:
            add(by_name[name])
        elif name not in builtin:
            raise VmError(f"{tree.release}: module {name} neither in modules.dep nor built in")
    return [tree.modules / rel for rel in order]


def _mod_name(rel: str) -> str:
    base = rel.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _ko_bytes(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-qdc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


# The initramfs's /init (busybox sh). Mounts the host root read-only with a tmpfs overlay, moves the
# run share into the new root, and switch_roots into it (so the kernel's usermode helpers, such as
# modprobe for nf_tables, find the host's tools) to run /.kvm-run.sh.
_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "kvm-init: $*"; poweroff -f; }
while read -r m; do insmod "/mod/$m" || fail "insmod $m failed"; done < /mod/order
mount -t virtiofs kvmrun /run-share || fail "virtiofs mount of the run directory failed"
mount -t virtiofs -o ro hostroot /lower || fail "virtiofs mount of / failed"
cut -d' ' -f1 /proc/uptime > /run-share/booted
mount -t tmpfs -o mode=755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay failed"
R=/newroot
mount -t tmpfs -o mode=755 tmpfs $R/run
mkdir -p $R/run/kvm $R/run/kvm-lower
mount --move /run-share $R/run/kvm
cp /run.sh $R/.kvm-run.sh
exec switch_root $R /bin/bash /.kvm-run.sh
"""

# Runs in the new root as pid 1: the usual mounts, the guest kernel's modules/headers in place,
# then the command; its output and status go to the run share, then the guest powers off.
_RUN = r"""
set -u
exec </dev/null >/run/kvm/output 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# the host's hybrid layout: cgroup v2 at /sys/fs/cgroup/unified (the tests and the docs use it)
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/unified
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mkdir -p /lib/modules/$KVER
mount --bind $KDIR/lib/modules/$KVER /lib/modules/$KVER
for d in $KDIR/usr/src/*; do
  n=${d##*/}; mkdir -p /usr/src/$n; mount --bind $d /usr/src/$n
done
for f in $KDIR/boot/*; do ln -sf $f /boot/${f##*/}; done
ip link set lo up
hostname kvm-guest
cd $WORKDIR
echo "guest: $(uname -r), up $(cut -d' ' -f1 /proc/uptime)s"
/usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  $ENVS /bin/bash -c "$CMD"
rc=$?
cut -d' ' -f1 /proc/uptime > /run/kvm/uptime
echo $rc > /run/kvm/rc
sync
/bin/busybox poweroff -f
"""


def _initramfs(tree: KernelTree, command: str, workdir: Path, env: dict[str, str], dest: Path) -> None:
    ird = dest / "initramfs"
    for d in ("bin", "dev", "proc", "sys", "mod", "lower", "upper", "newroot", "run-share"):
        (ird / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, ird / "bin" / "busybox")
    order = []
    for path in _module_order(tree, BOOT_MODULES):
        name = _mod_name(path.name) + ".ko"
        (ird / "mod" / name).write_bytes(_ko_bytes(path))
        order.append(name)
    (ird / "mod" / "order").write_text("".join(f"{n}\n" for n in order))
    (ird / "init").write_text(_INIT)
    os.chmod(ird / "init", 0o755)
    envs = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    head = "".join(
        f"{k}={shlex.quote(v)}\n"
        for k, v in (
            ("KVER", tree.release),
            ("KDIR", str(tree.root)),
            ("WORKDIR", str(workdir)),
            ("CMD", command),
            ("ENVS", envs),
        )
    )
    (ird / "run.sh").write_text("#!/bin/bash\n" + head + _RUN)
    os.chmod(ird / "run.sh", 0o755)
    # busybox cpio cannot make device nodes from a list; /dev is devtmpfs once /init runs, and the
    # kernel opens /dev/console before that only for its own messages (console=ttyS0 covers them)
    find = subprocess.run(["find", "."], cwd=ird, capture_output=True, check=True).stdout
    cpio = subprocess.run(
        [BUSYBOX, "cpio", "-o", "-H", "newc"], cwd=ird, input=find, capture_output=True, check=True
    ).stdout
    (dest / "initrd").write_bytes(cpio)


def run(
    tree: KernelTree,
    command: str,
    *,
    workdir: Path,
    config: VmConfig | None = None,
    env: dict[str, str] | None = None,
    keep: bool = False,
) -> GuestResult:
    """Boot `tree`, run `command` (bash) as root in `workdir` inside it, power off; never raises for
    what happens inside the guest (see GuestResult)."""
    cfg = config or VmConfig()
    check_host()
    start = time.monotonic()
    rundir = Path(tempfile.mkdtemp(prefix="tcpscope-vm-", dir="/tmp"))
    share = rundir / "share"
    share.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _initramfs(tree, command, workdir, env or {}, rundir)
        vfsd = _virtiofsd()
        for tag, src in (("hostroot", "/"), ("kvmrun", str(share))):
            sock = rundir / f"{tag}.sock"
            with open(rundir / f"virtiofsd-{tag}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            vfsd,
                            f"--socket-path={sock}",
                            "-o",
                            f"source={src}",
                            "-o",
                            "cache=auto",
                            "-o",
                            "sandbox=chroot",
                            "-o",
                            "log_level=err",
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            for _ in range(200):
                if sock.exists():
                    break
                time.sleep(0.05)
            else:
                raise VmError(f"virtiofsd did not start: {(rundir / f'virtiofsd-{tag}.log').read_text()}")
        console = rundir / "console.log"
        qemu = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-accel",
            f"tcg,thread={cfg.tcg_thread}",
            "-cpu",
            cfg.cpu_model,
            "-smp",
            str(cfg.cpus),
            "-m",
            str(cfg.mem_mib),
            "-machine",
            "q35,memory-backend=mem",
            "-object",
            f"memory-backend-memfd,id=mem,size={cfg.mem_mib}M,share=on",
            "-kernel",
            str(tree.vmlinuz),
            "-initrd",
            str(rundir / "initrd"),
            "-append",
            f"console=ttyS0 panic=-1 quiet loglevel=4 8250.nr_uarts=1 {cfg.append}".strip(),
            "-serial",
            f"file:{console}",
        ]
        for tag in ("hostroot", "kvmrun"):
            qemu += [
                "-chardev",
                f"socket,id={tag},path={rundir / f'{tag}.sock'}",
                "-device",
                f"vhost-user-fs-pci,chardev={tag},tag={tag}",
            ]
        vm = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(vm)
        boot_s: float | None = None
        t0 = time.monotonic()
        while vm.poll() is None:
            now = time.monotonic() - t0
            if boot_s is None and (share / "booted").exists():
                boot_s = now
            if (boot_s is None and now > cfg.boot_timeout_s) or now > cfg.timeout_s:
                vm.kill()
                break
            time.sleep(0.2)
        vm.wait()
        if boot_s is None and (share / "booted").exists():
            boot_s = time.monotonic() - t0
        rc_file = share / "rc"
        rc = int(rc_file.read_text()) if rc_file.is_file() and rc_file.read_text().strip() else None
        out = share / "output"
        tail = console.read_text(errors="replace").splitlines()[-40:] if console.exists() else []
        qerr = vm.stderr.read().decode(errors="replace") if vm.stderr else ""
        if qerr.strip():
            tail.append("qemu: " + qerr.strip())
        return GuestResult(
            booted=boot_s is not None,
            rc=rc,
            output=out.read_text(errors="replace") if out.exists() else "",
            console_tail="\n".join(tail),
            wall_s=time.monotonic() - start,
            boot_s=boot_s,
            files={f.name: f.read_text(errors="replace") for f in share.iterdir() if f.is_file()},
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if keep:
            print(f"kernelvm: run directory kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
