"""`make test-kernels`: the real-kernel matrix (see scripts/kernelvm/__init__.py)."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.kernelvm import fetch, matrix, table, vm

REPO = Path(__file__).resolve().parents[2]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.kernelvm", description=__doc__)
    p.add_argument(
        "--kernels",
        default=",".join(s.name for s in fetch.MATRIX),
        help="comma-separated kernels of the matrix to boot (default: all)",
    )
    p.add_argument("--no-host", action="store_true", help="do not run the subset on the host's own kernel")
    p.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="guests at a time (default 2: a TCG guest keeps about one host CPU busy, so two fit 2 CPUs)",
    )
    p.add_argument(
        "--boot-attempts",
        type=int,
        default=3,
        help="boots per kernel before a guest that never reaches user space is a failure",
    )
    p.add_argument("--cpu", default=vm.VmConfig.cpu_model, help="QEMU TCG CPU model")
    p.add_argument("--tcg-thread", default=vm.VmConfig.tcg_thread, choices=("single", "multi"))
    p.add_argument("--smp", type=int, default=vm.VmConfig.cpus)
    p.add_argument("--append", default="", help="extra guest kernel command line")
    p.add_argument("--refresh", action="store_true", help="look for newer kernel ABIs even with a cache")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "kernels.json")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "kernels.md")
    p.add_argument(
        "--readme",
        type=Path,
        default=REPO / "README.md",
        help="also refresh the table here, if it holds the generated block's markers",
    )
    p.add_argument("--table-only", action="store_true", help="only regenerate --docs from --results")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return p.parse_args(argv)


def _line(r: matrix.KernelResult) -> str:
    n = len(r.tests)
    ok = sum(1 for t in r.tests if t.outcome == "passed")
    boot = (
        (
            f", boot {'/'.join(f'{b:.1f}' for b in r.boot_seconds) or '-'} s"
            f" ({r.boot_attempts} attempt{'s' if r.boot_attempts != 1 else ''})"
        )
        if r.where != "native"
        else ""
    )
    return (
        f"{r.name:>5} {r.release:<28} {r.status.upper():<11} {ok}/{n} tests passed{boot}, "
        f"tests {r.tests_seconds:.0f} s, total {r.wall_seconds:.0f} s"
    )


def _write_docs(results_path: Path, docs: Path, readme: Path) -> None:
    rendered = table.render(matrix.load_results(results_path))
    current = docs.read_text() if docs.exists() else table.HEADER
    docs.write_text(table.splice(current, rendered))
    if readme.is_file() and table.BEGIN in (text := readme.read_text()):
        readme.write_text(table.splice(text, rendered))


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.table_only:
        _write_docs(a.results, a.docs, a.readme)
        return 0
    wanted = [k for k in a.kernels.split(",") if k]
    specs = {s.name: s for s in fetch.MATRIX}
    unknown = [k for k in wanted if k not in specs]
    if unknown:
        print(f"test-kernels: unknown kernel(s) {', '.join(unknown)}; known: {', '.join(specs)}", file=sys.stderr)
        return 2
    try:
        vm.check_host()
    except vm.VmError as e:
        print(f"test-kernels: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()
    cache = fetch.cache_dir()
    trees = []
    for name in wanted:
        t0 = time.monotonic()
        try:
            tree = fetch.fetch(specs[name], cache, refresh=a.refresh)
        except fetch.FetchError as e:
            print(f"test-kernels: {name}: {e}", file=sys.stderr)
            return 1
        print(f"test-kernels: {name}: {tree.release} in {tree.root} ({time.monotonic() - t0:.1f} s)", flush=True)
        trees.append(tree)
    results: list[matrix.KernelResult] = []
    if not a.no_host:
        print("test-kernels: host kernel, natively ...", flush=True)
        results.append(matrix.run_native(REPO, a.pytest_args, cache / "logs"))
        print("test-kernels: " + _line(results[-1]), flush=True)
    cfg = vm.VmConfig(cpus=a.smp, cpu_model=a.cpu, tcg_thread=a.tcg_thread, append=a.append)
    log: list[str] = []

    def one(tree: fetch.KernelTree) -> matrix.KernelResult:
        print(f"test-kernels: {tree.spec.name}: booting {tree.release} ...", flush=True)
        r = matrix.run_guest(tree, REPO, cfg, a.boot_attempts, a.pytest_args, log, cache / "logs")
        print("test-kernels: " + _line(r), flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, a.parallel)) as pool:
        results += list(pool.map(one, trees))
    wall = time.monotonic() - start
    matrix.write_results(a.results, results, wall)
    _write_docs(a.results, a.docs, a.readme)
    print(f"\ntest-kernels: matrix in {wall:.0f} s (results: {a.results}, table: {a.docs})")
    for line in log:
        print(f"  {line}")
    failed = [r for r in results if r.status != "passed"]
    for r in results:
        print("  " + _line(r))
    for r in failed:
        print(f"\n==== {r.release}: {r.status.upper()} ====\n{r.detail}")
        for t in r.tests:
            if t.outcome in ("failed", "error"):
                print(f"  {t.outcome}: {t.test}: {t.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
