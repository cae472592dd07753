"""Classification speed: messages/s from raw .eml bytes (parse, new text, classify, route) on
one core, `triage classify` of one message from a cold start, and `triage train`.

    python benchmarks/classify_speed.py [--messages 2000] [--skip-train]

Prints figures; it asserts nothing (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from triage import classifier  # noqa: E402
from triage.config import load_settings  # noqa: E402
from triage.query import parse  # noqa: E402
from triage.routing import Router  # noqa: E402


def reference_seconds() -> float:
    """CPU seconds of a fixed pure-Python loop: how fast this shared machine runs right now, so
    that figures taken in different minutes can be compared."""
    started = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200, help="messages per classify_many call")
    parser.add_argument("--runs", type=int, default=5, help="timed passes over the corpus")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    settings = load_settings(_env_file=None, replies_dir=ROOT / "replies")
    model = classifier.load(ROOT / "models" / "triage.joblib")
    router = Router.from_settings(settings)
    raws = [p.read_bytes() for p in sorted((ROOT / "samples" / "inbox").glob("*.eml"))]
    corpus = [raws[i % len(raws)] for i in range(args.messages)]
    print(
        f"{len(corpus)} messages cycled from {len(raws)} samples, mean {sum(map(len, corpus)) // len(corpus)} bytes"
    )

    def one_pass() -> None:
        for start in range(0, len(corpus), args.batch):
            queries = [
                parse(raw, support_address=settings.support_address)
                for raw in corpus[start : start + args.batch]
            ]
            people = [q for q in queries if not q.automatic and not q.problem]
            results = iter(model.classify_many(people))
            for q in queries:
                router.route(q, None if (q.automatic or q.problem) else next(results))

    reference = [reference_seconds()]
    with threadpool_limits(1):
        one_pass()  # warm-up, not timed: the first batch imports scipy.sparse (the cold start is timed below)
        rates, cpu_rates = [], []
        for _ in range(args.runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            one_pass()
            rates.append(len(corpus) / (time.perf_counter() - started))
            cpu_rates.append(len(corpus) / (time.process_time() - cpu_started))
        started = time.perf_counter()
        for raw in corpus[:500]:
            q = parse(raw, support_address=settings.support_address)
            router.route(q, None if (q.automatic or q.problem) else model.classify(q))
        one_by_one = 500 / (time.perf_counter() - started)
        started = time.perf_counter()
        for raw in corpus:
            parse(raw, support_address=settings.support_address)
        parse_only = len(corpus) / (time.perf_counter() - started)
    reference.append(reference_seconds())
    print(
        f"reference loop (the machine's speed now; lower is faster): "
        f"{min(reference) * 1000:.0f} ms before and after the passes, best"
    )
    print(
        f"batched (batch {args.batch}), one core: {statistics.median(rates):,.0f} messages/s median, "
        f"{max(rates):,.0f} best (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    print(
        f"batched, per second of this process's own CPU time: {statistics.median(cpu_rates):,.0f} "
        f"messages/s median (runs: {', '.join(f'{r:,.0f}' for r in cpu_rates)})"
    )
    print(f"one message at a time, one core: {one_by_one:,.0f} messages/s")
    print(f"parse + new text alone: {parse_only:,.0f} messages/s")

    sample = ROOT / "samples" / "inbox" / "events-01.eml"
    colds = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "triage", "classify", "--json", str(sample)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        colds.append(time.perf_counter() - started)
    print(
        f"`triage classify` of one message, cold start: {min(colds):.2f} s best, {statistics.median(colds):.2f} s median"
    )

    if not args.skip_train:
        started = time.perf_counter()
        env = {**os.environ, "TRIAGE_MODEL_PATH": str(Path("/tmp") / f"bench-{os.getpid()}.joblib")}
        subprocess.run(
            [sys.executable, "-m", "triage", "train", "--samples", "/nonexistent"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            env=env,
        )
        print(f"`triage train`: {time.perf_counter() - started:.1f} s wall clock")
        Path(env["TRIAGE_MODEL_PATH"]).unlink(missing_ok=True)
        Path(env["TRIAGE_MODEL_PATH"]).with_suffix(".card.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
