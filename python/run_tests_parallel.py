"""Run a pytest selection as several pytest processes at once (make test, make test-floor, and python/gpu_check.sh,
where pytest-xdist may be missing): collect the test ids once, cut them into chunks of contiguous ids (whole files
where possible: neighbouring parametrizations share Triton kernel variants and build directories), run the chunks
longest first, `--workers` at a time, each in a pytest of its own started when a worker is free, print each
chunk's output when it ends, merge the junit XMLs into one, and exit non-zero when any chunk failed.
Chunk lengths are estimated from the seconds per test of each file recorded in python/test_durations.json
(`--record-durations` rewrites it from a run's XML); files it does not know count DEFAULT_SECONDS per test.
On SIGINT/SIGTERM the chunks get SIGINT (pytest then still writes its summary and XML) and the merge still
happens, so a step cut short by its time limit reports what ran.

    python python/run_tests_parallel.py --workers 8 --serial large --junitxml out.xml -- tests -m gpu
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

NO_TESTS = 5  # pytest's exit code when nothing was selected
DURATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_durations.json")
DEFAULT_SECONDS = 0.2  # per test of a file without a recorded duration
SPLIT_MIN_TESTS = 100  # files with fewer tests stay whole (a few long tests that may share a build directory)


def collect(py, pytest_args):
    proc = subprocess.run([py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", *pytest_args], capture_output=True, text=True)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return ids, proc


def split(ids, n):
    """ids in n contiguous parts of nearly equal length."""
    n = max(1, min(n, len(ids)))
    size, extra = divmod(len(ids), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(ids[start:end])
        start = end
    return out


def plan(ids, workers, seconds_per_test):
    """[(estimated seconds, ids)], longest first: files packed in collection order into chunks of about a third
    of a worker's share (so that the last chunks to start are short), files past that length and with at least
    SPLIT_MIN_TESTS tests cut into pieces, and at least `workers` chunks when there are that many tests."""
    files = {}
    for i in ids:
        files.setdefault(i.split("::")[0], []).append(i)
    cost = {f: seconds_per_test.get(f, DEFAULT_SECONDS) for f in files}
    total = sum(cost[f] * len(f_ids) for f, f_ids in files.items())
    target = total / (3 * max(1, workers))
    parts, current = [], []
    for f, f_ids in files.items():
        length = cost[f] * len(f_ids)
        if length > target and len(f_ids) >= SPLIT_MIN_TESTS:
            parts.extend(split(f_ids, round(length / target)))
            continue
        if current and sum(cost[i.split("::")[0]] for i in current) + length > target:
            parts.append(current)
            current = []
        current = current + f_ids
    if current:
        parts.append(current)
    while len(parts) < workers and max(len(p) for p in parts) > 1:
        longest = max(parts, key=len)
        parts.remove(longest)
        parts.extend(split(longest, 2))
    planned = [(sum(cost[i.split("::")[0]] for i in p), p) for p in parts]
    return sorted(planned, key=lambda c: -c[0])


def load_durations(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def record_durations(xml_path, path):
    """Seconds per test of each file in a junit XML of this script, merged into the JSON file at path."""
    spent, count = {}, {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        f = case.get("classname", "").replace(".", "/") + ".py"
        spent[f] = spent.get(f, 0.0) + float(case.get("time", 0))
        count[f] = count.get(f, 0) + 1
    durations = load_durations(path)
    durations.update({f: round(spent[f] / count[f], 4) for f in spent})
    with open(path, "w") as out:
        json.dump(dict(sorted(durations.items())), out, indent=1)
        out.write("\n")


def merge(xml_paths, out_path):
    """One <testsuites> with every chunk's <testsuite>; returns the totals."""
    root = ET.Element("testsuites")
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    for path in xml_paths:
        if not os.path.exists(path):
            continue
        try:
            tree = ET.parse(path)
        except ET.ParseError as e:
            print(f"run_tests_parallel: cannot read {path}: {e}", flush=True)
            continue
        suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else list(tree.getroot())
        for suite in suites:
            root.append(suite)
            for k in totals:
                totals[k] += int(suite.get(k, 0))
    for k, v in totals.items():
        root.set(k, str(v))
    ET.ElementTree(root).write(out_path, encoding="utf-8", xml_declaration=True)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--junitxml", required=True)
    parser.add_argument("--serial", metavar="MARKER",
                        help="tests with this marker (e.g. large: many GiB each) run one after the other in one "
                             "extra process, next to the others")
    parser.add_argument("--durations", default=DURATIONS, help="seconds per test of each file (JSON)")
    parser.add_argument("--record-durations", action="store_true",
                        help="after the run, write the measured seconds per test of each file into --durations")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: paths and selection (-m, -k)")
    args = parser.parse_args()
    pytest_args = [a for a in args.pytest_args if a != "--"]
    py = sys.executable
    start = time.time()

    with ThreadPoolExecutor(2) as pool:  # both collections at once
        main_collect = pool.submit(collect, py, pytest_args)
        # A second -m replaces the first: intersected with the main selection below.
        serial_collect = pool.submit(collect, py, pytest_args + ["-m", args.serial]) if args.serial else None
    ids, proc = main_collect.result()
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    if proc.returncode not in (0, NO_TESTS) or errors:
        print(proc.stdout[-20000:], proc.stderr[-5000:], flush=True)
    if not ids:
        print(f"run_tests_parallel: no tests selected by {pytest_args} (collect exit {proc.returncode})", flush=True)
        merge([], args.junitxml)
        return 0 if proc.returncode in (0, NO_TESTS) else 1
    # Selection options stay (-m, -k, ...); paths are replaced by the ids.
    options = [a for a in pytest_args if not os.path.exists(a.split("::")[0])]
    serial = []
    if args.serial:
        serial_ids = set(serial_collect.result()[0])
        serial = [i for i in ids if i in serial_ids]
        ids = [i for i in ids if i not in serial_ids]
    parts = [p for _, p in plan(ids, args.workers, load_durations(args.durations))] if ids else []
    if serial:
        parts.append(serial)
    print(f"run_tests_parallel: {len(ids) + len(serial)} tests in {len(parts)} processes, {args.workers} at a time"
          + (f" ({len(serial)} marked {args.serial} in the last one)" if serial else "")
          + f" (collected in {time.time() - start:.0f}s)", flush=True)

    env = dict(os.environ)
    # CPU kernels use every core per process by default: share the cores between the processes instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(parts))))
    # torch.compile in every process would start its own pool of compile workers (one per core): compile in
    # process instead; the graphs of the tests are small.
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    tmp = tempfile.mkdtemp(prefix="mae_pytest_")
    procs = {}  # chunk index -> (process, log, xml)

    def launch(i):
        log = open(os.path.join(tmp, f"chunk{i}.log"), "w")
        xml = os.path.join(tmp, f"chunk{i}.xml")
        cmd = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *options, f"--junitxml={xml}", *parts[i]]
        # Same process group: `timeout -s INT` reaches every chunk directly, and its final SIGKILL too.
        procs[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, xml)

    interrupted = []

    def interrupt(signum, frame):
        print(f"run_tests_parallel: signal {signum}: waiting for the chunks to write their results", flush=True)
        interrupted.append(time.time())

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    serial_chunk = len(parts) - 1 if serial else None
    queue = [i for i in range(len(parts)) if i != serial_chunk]  # longest first (plan's order)
    if serial:
        launch(serial_chunk)  # next to the others, from the start, not counted as a worker
    codes, forwarded = {}, False
    while queue or len(codes) < len(procs):
        while queue and not interrupted and sum(i not in codes and i != serial_chunk for i in procs) < args.workers:
            launch(queue.pop(0))
        running = [i for i in procs if i not in codes]
        if interrupted:
            queue.clear()  # chunks not started stay out of the results
            if not forwarded and time.time() - interrupted[0] > 3:
                forwarded = True  # a signal sent to this process alone: pass it on once
                for i in running:
                    procs[i][0].send_signal(signal.SIGINT)
        for i in sorted(running):
            p, log, xml = procs[i]
            try:
                codes[i] = p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            log.close()
            part = parts[i]
            print(f"----- chunk {i} ({len(part)} tests: {part[0]} .. {part[-1]}), exit {codes[i]}, "
                  f"{time.time() - start:.0f}s", flush=True)
            with open(log.name) as f:
                print(f.read()[-30000:], flush=True)
            break  # start the next chunk before waiting on the others
    totals = merge([xml for _, _, xml in procs.values()], args.junitxml)
    if args.record_durations:
        record_durations(args.junitxml, args.durations)
    failed = [i for i, c in codes.items() if c not in (0, NO_TESTS)]
    print(f"run_tests_parallel: {totals['tests']} tests, {totals['failures']} failures, {totals['errors']} errors, "
          f"{totals['skipped']} skipped in {time.time() - start:.0f}s; chunks failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
