"""Fuzz every parser a user's file reaches, for longer than CI can: atheris, then hypothesis.

    python benchmarks/fuzz.py --seconds 120                   # every atheris target, then the long hypothesis run
    python benchmarks/fuzz.py --target tracking:mot --seconds 60   # one target
    python benchmarks/fuzz.py --list

Targets live in ``benchmarks/fuzz_targets/<area>.py``: ``TARGETS`` maps a name to a function of
the fuzzer's bytes that swallows only the errors its parser documents (ConfigError, ModelError);
anything else escaping, a hang past ``--timeout`` or an allocation past ``--rss-mb`` is a crash.
``SEEDS`` gives each target small valid inputs to start from. Each target runs coverage-guided
(libFuzzer through atheris, the segengine package instrumented) in its own process, so one crash
or leak cannot spoil the next target's figures; the crashing input is kept under ``--artifacts``.
Then the property tests (tests/test_fuzz_*.py) run under hypothesis' "long" profile.

The table (inputs tried, seconds, crashes per target) is printed and, with ``--out``, written as
Markdown. Needs ``pip install atheris`` (not a test dependency: CI runs only the short profile).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_DIR = HERE / "fuzz_targets"
_RUNS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_HYPO = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing")  # hypothesis 6.100+ and older


class Target(NamedTuple):
    run: Callable[[bytes], None]
    seeds: list[bytes]


def targets() -> dict[str, Target]:
    """Every ``area:name`` target with its seeds, imported as they are (not instrumented)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    found: dict[str, Target] = {}
    for file in sorted(TARGET_DIR.glob("[!_]*.py")):
        module = importlib.import_module(f"fuzz_targets.{file.stem}")
        seeds = getattr(module, "SEEDS", {})
        found.update({f"{file.stem}:{name}": Target(fn, list(seeds.get(name, ())))
                      for name, fn in module.TARGETS.items()})
    return found


def run_child(target: str, seconds: int, artifacts: Path, rss_mb: int, timeout: int) -> None:
    """In the child process: instrument segengine, seed a corpus, hand over to libFuzzer."""
    import atheris

    area, name = target.split(":", 1)
    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["segengine"]):
        module = importlib.import_module(f"fuzz_targets.{area}")
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{area}-{name}-"))
    for k, seed in enumerate(getattr(module, "SEEDS", {}).get(name, [])):
        (corpus / f"seed{k}").write_bytes(seed)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", f"-rss_limit_mb={rss_mb}",
            f"-malloc_limit_mb={rss_mb}", f"-timeout={timeout}", f"-artifact_prefix={artifacts}/{area}-{name}-",
            "-print_final_stats=1", "-max_len=65536"]
    atheris.Setup(argv, module.TARGETS[name])
    atheris.Fuzz()


def fuzz_one(target: str, seconds: int, artifacts: Path, rss_mb: int, timeout: int) -> dict[str, object]:
    """Run one target in a child process; its figures from libFuzzer's final stats."""
    cmd = [sys.executable, __file__, "--child", target, "--seconds", str(seconds), "--artifacts", str(artifacts),
           "--rss-mb", str(rss_mb), "--timeout", str(timeout)]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=seconds + 120)
        log, rc = done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:  # libFuzzer itself stuck: report, never hang the campaign
        log, rc = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else "", -9
    took = time.monotonic() - start
    runs = _RUNS.findall(log) or [m[0] for m in _DONE.findall(log)]
    crashed = rc != 0
    why = ""
    if crashed:
        why = _why(log) or f"exit {rc}"
        (artifacts / f"{target.replace(':', '-')}.log").write_text(log)
    return {"target": target, "inputs": int(runs[-1]) if runs else 0, "seconds": round(took, 1),
            "crashes": int(crashed), "why": why}


def _why(log: str) -> str:
    """The crash in one line: atheris prints the exception right after its banner; libFuzzer
    names an out-of-memory or a timeout in its ERROR line."""
    lines = log.splitlines()
    for k, line in enumerate(lines):
        if "Uncaught Python exception" in line and k + 1 < len(lines):
            return lines[k + 1].strip()[:300]
    return next((line.strip()[:300] for line in lines if "ERROR: libFuzzer" in line), "")


def hypothesis_long() -> dict[str, object]:
    """The property tests under the long profile: passing examples summed over the tests."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="long")
    tests = sorted(str(p) for p in (REPO / "tests").glob("test_fuzz_*.py"))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--hypothesis-show-statistics", *tests], cwd=REPO, env=env,
                          capture_output=True, text=True, errors="replace")
    took = time.monotonic() - start
    counts = [(int(p), int(f)) for p, f in _HYPO.findall(done.stdout)]
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    return {"target": "hypothesis (long profile): " + ", ".join(Path(t).stem for t in tests),
            "inputs": sum(p for p, _ in counts), "seconds": round(took, 1),
            "crashes": int(done.returncode != 0), "why": "" if done.returncode == 0 else tail[0][:300]}


def table(rows: list[dict[str, object]]) -> str:
    out = ["| target | inputs tried | seconds | crashes |", "|---|---:|---:|---:|"]
    for r in rows:
        note = f" ({r['why']})" if r["why"] else ""
        out.append(f"| {r['target']} | {r['inputs']:,} | {r['seconds']} | {r['crashes']}{note} |")
    return "\n".join(out)


def _machine() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"{time.strftime('%Y-%m-%d')}: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"atheris {v('atheris')}, hypothesis {v('hypothesis')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", help="area:name (repeatable); default: every target")
    p.add_argument("--seconds", type=int, default=60, help="per atheris target")
    p.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"), help="crashing inputs and logs")
    p.add_argument("--rss-mb", type=int, default=3072, help="an input needing more memory than this is a crash")
    p.add_argument("--timeout", type=int, default=20, help="an input taking longer than this (s) is a crash")
    p.add_argument("--no-hypothesis", action="store_true", help="skip the long property-test run")
    p.add_argument("--no-atheris", action="store_true", help="only the long property-test run")
    p.add_argument("--out", type=Path, help="write the table here as Markdown")
    p.add_argument("--list", action="store_true", help="list the targets")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args.child, args.seconds, args.artifacts.resolve(), args.rss_mb, args.timeout)
        return 0
    names = sorted(targets())
    if args.list:
        print("\n".join(names))
        return 0
    unknown = sorted(set(args.target or ()) - set(names))
    if unknown:
        p.error(f"unknown target {', '.join(unknown)}; --list shows them")
    rows = []
    for target in [] if args.no_atheris else args.target or names:
        rows.append(fuzz_one(target, args.seconds, args.artifacts.resolve(), args.rss_mb, args.timeout))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if not args.no_hypothesis and not args.target:
        rows.append(hypothesis_long())
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(f"# Fuzz campaign\n\n{_machine()}\n\n{text}\n")
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
