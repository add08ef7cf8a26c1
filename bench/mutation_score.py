"""Per-file mutation score of the domain from mutmut's results (see docs/testing.md).

Run after ``mutmut run`` in the same directory::

    python -m bench.mutation_score            # every mutant mutmut knows of
    python -m bench.mutation_score --checked  # only those a run has checked (a sample)

The score of a file is killed / (killed + survived + no tests + timeout); mutants not
checked (outside a sampled run) are counted apart and left out of the score.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def parse(lines: list[str]) -> dict[str, collections.Counter[str]]:
    by_file: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in lines:
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.split(".x")[0] if ".x" in name else name
        by_file[module.removeprefix("app.domain.")][status] += 1
    return by_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checked", action="store_true", help="hide files with nothing checked")
    args = ap.parse_args(argv)
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    by_file = parse(out.splitlines())
    total: collections.Counter[str] = collections.Counter()
    print(f"{'file':<10} {'killed':>7} {'survived':>8} {'no tests':>8} {'unchecked':>9} score")
    for module in sorted(by_file):
        n = by_file[module]
        total.update(n)
        killed = sum(v for k, v in n.items() if k in KILLED)
        alive = n["survived"] + n["no tests"] + n["suspicious"]
        if args.checked and killed + alive == 0:
            continue
        score = f"{100 * killed / (killed + alive):.1f}%" if killed + alive else "-"
        print(
            f"{module:<10} {killed:>7} {n['survived']:>8} {n['no tests']:>8} "
            f"{n['not checked']:>9} {score}"
        )
    killed = sum(v for k, v in total.items() if k in KILLED)
    alive = total["survived"] + total["no tests"] + total["suspicious"]
    if killed + alive:
        print(
            f"{'all':<10} {killed:>7} {total['survived']:>8} {total['no tests']:>8} "
            f"{total['not checked']:>9} {100 * killed / (killed + alive):.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
