"""Run a pytest selection as several pytest processes at once (for python/gpu_check.sh, where pytest-xdist may
be missing): collect the test ids once, split them into contiguous chunks (neighbouring parametrizations share
Triton kernel variants, so each process JIT-compiles a different part of them), run one pytest per chunk, print
each chunk's output when it ends, merge the junit XMLs into one, and exit non-zero when any chunk failed.
On SIGINT/SIGTERM the chunks get SIGINT (pytest then still writes its summary and XML) and the merge still
happens, so a step cut short by its time limit reports what ran.

    python python/run_tests_parallel.py --workers 8 --serial large --junitxml out.xml -- tests -m gpu
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

NO_TESTS = 5  # pytest's exit code when nothing was selected


def collect(py, pytest_args):
    proc = subprocess.run([py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", *pytest_args], capture_output=True, text=True)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return ids, proc


def chunks(ids, n):
    n = max(1, min(n, len(ids)))
    size, extra = divmod(len(ids), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(ids[start:end])
        start = end
    return out


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
    parts = chunks(ids, args.workers) if ids else []
    if serial:
        parts.append(serial)
    print(f"run_tests_parallel: {len(ids) + len(serial)} tests in {len(parts)} processes"
          + (f" ({len(serial)} marked {args.serial} in the last one)" if serial else "")
          + f" (collected in {time.time() - start:.0f}s)", flush=True)

    env = dict(os.environ)
    # CPU kernels use every core per process by default: share the cores between the processes instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(parts))))
    # torch.compile in every process would start its own pool of compile workers (one per core): compile in
    # process instead; the graphs of the tests are small.
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    tmp = tempfile.mkdtemp(prefix="mae_pytest_")
    procs = []
    for i, part in enumerate(parts):
        log = open(os.path.join(tmp, f"chunk{i}.log"), "w")
        xml = os.path.join(tmp, f"chunk{i}.xml")
        cmd = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *options, f"--junitxml={xml}", *part]
        # Same process group: `timeout -s INT` reaches every chunk directly, and its final SIGKILL too.
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, xml, part))

    interrupted = []

    def interrupt(signum, frame):
        print(f"run_tests_parallel: signal {signum}: waiting for the chunks to write their results", flush=True)
        interrupted.append(time.time())

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    pending, codes, forwarded = set(range(len(procs))), {}, False
    while pending:
        if interrupted and not forwarded and time.time() - interrupted[0] > 3:
            forwarded = True  # a signal sent to this process alone: pass it on once
            for i in pending:
                procs[i][0].send_signal(signal.SIGINT)
        for i in sorted(pending):
            p, log, xml, part = procs[i]
            try:
                codes[i] = p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            log.close()
            pending.discard(i)
            print(f"----- chunk {i} ({len(part)} tests: {part[0]} .. {part[-1]}), exit {codes[i]}, "
                  f"{time.time() - start:.0f}s", flush=True)
            with open(log.name) as f:
                print(f.read()[-30000:], flush=True)
    totals = merge([xml for _, _, xml, _ in procs], args.junitxml)
    failed = [i for i, c in codes.items() if c not in (0, NO_TESTS)]
    print(f"run_tests_parallel: {totals['tests']} tests, {totals['failures']} failures, {totals['errors']} errors, "
          f"{totals['skipped']} skipped in {time.time() - start:.0f}s; chunks failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
