"""python/run_tests_parallel.py (how `make gpu-check` runs the test suite on the GPU machine): the selection is
split over several pytest processes, the serial marker gets a process of its own, the junit XMLs are merged and
a failure anywhere fails the run."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "run_tests_parallel.py")

TESTS = '''
import pytest

@pytest.mark.parametrize("i", range(5))
def test_ok(i):
    assert i >= 0

@pytest.mark.big
def test_big():
    pass
'''


def run(tmp_path, *args):
    (tmp_path / "test_sample.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    big: runs alone\n")
    xml = tmp_path / "out.xml"
    proc = subprocess.run([sys.executable, SCRIPT, "--workers", "2", "--junitxml", str(xml), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return proc, ET.parse(xml).getroot()


def test_chunks_merged_and_serial_marker_alone(tmp_path):
    proc, root = run(tmp_path, "--serial", "big", "--", "test_sample.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 tests in 3 processes, 2 at a time (1 marked big in the last one)" in proc.stdout
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "0", "0")
    assert len(root) == 3  # one <testsuite> per process


def test_selection_kept_and_failure_reported(tmp_path):
    (tmp_path / "test_fail.py").write_text("def test_broken():\n    assert False\n")
    proc, root = run(tmp_path, "--", ".", "-k", "broken or ok")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (root.get("tests"), root.get("failures")) == ("6", "1")
    assert "chunks failed: [" in proc.stdout


def test_nothing_selected_is_not_a_failure(tmp_path):
    proc, root = run(tmp_path, "--", "test_sample.py", "-m", "nonexistent")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no tests selected" in proc.stdout and root.get("tests") == "0"


def test_plan_runs_long_chunks_first_and_keeps_files_whole():
    """The plan: the longest chunk first, small files packed together, a file of few long tests never cut, a file
    of many tests cut when it is longer than a third of a worker's share; every id exactly once, in order."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("run_tests_parallel", SCRIPT)
    rtp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rtp)
    ids = ([f"a.py::t{i}" for i in range(3)] + [f"b.py::t{i}" for i in range(10)]
           + [f"c.py::t{i}" for i in range(300)] + [f"d.py::t{i}" for i in range(2)])
    plan = rtp.plan(ids, 2, {"a.py": 0.1, "b.py": 50.0, "c.py": 1.0, "d.py": 0.1})
    lengths = [t for t, _ in plan]
    assert lengths == sorted(lengths, reverse=True)
    assert plan[0] == (500.0, [f"b.py::t{i}" for i in range(10)])  # 10 long tests: whole, and first
    assert [len(p) for _, p in plan if p[0].startswith("c.py")] == [150, 150]  # 300 s of many tests: cut
    assert sorted(i for _, p in plan for i in p) == sorted(ids)
    for _, p in plan:
        assert p == [i for i in ids if i in set(p)]  # contiguous order kept within a chunk
