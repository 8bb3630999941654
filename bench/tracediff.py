"""What grew between two tracemalloc snapshots of a gateway (``BENCH_TRACEMALLOC`` in
``bench/variant.py``), biggest growth first.

    .venv/bin/python bench/tracediff.py OLD.snap NEW.snap [--top 25] [--by traceback|lineno]

``--by lineno`` groups by the line that allocated; ``--by traceback`` (the default) shows the
frames that led there (as many as ``BENCH_TRACEMALLOC_FRAMES`` kept), which tells a cache that
fills once from a list that grows forever.
"""

from __future__ import annotations

import argparse
import tracemalloc

#: Allocations of the tracer and the import machinery are not the gateway's.
IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by", choices=("traceback", "lineno"), default="traceback")
    args = parser.parse_args()
    old = tracemalloc.Snapshot.load(args.old).filter_traces(IGNORED)
    new = tracemalloc.Snapshot.load(args.new).filter_traces(IGNORED)
    total_old = sum(s.size for s in old.statistics("filename"))
    total_new = sum(s.size for s in new.statistics("filename"))
    print(f"traced: {total_old / 2**20:.1f} MB -> {total_new / 2**20:.1f} MB")
    for stat in new.compare_to(old, args.by)[: args.top]:
        print(
            f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks "
            f"(now {stat.size / 1024:.1f} KiB in {stat.count})"
        )
        frames = stat.traceback.format() if args.by == "traceback" else stat.traceback.format()[:2]
        for line in frames:
            print(f"      {line}")


if __name__ == "__main__":
    main()
