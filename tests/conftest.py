import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: a case from ../shared/conformance")


_counts = {}


def pytest_runtest_logreport(report):
    if "conformance" not in report.keywords:
        return
    kind = "solver" if "solver" in report.nodeid else "layer"
    c = _counts.setdefault(kind, {"passed": 0, "failed": 0, "skipped": 0})
    if report.skipped and report.when in ("setup", "call"):
        c["skipped"] += 1
    elif report.when == "call":
        c["passed" if report.passed else "failed"] += 1
    elif report.when == "setup" and report.failed:
        c["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _counts:
        return
    terminalreporter.write_sep("=", "Caffe conformance cases")
    for kind, c in sorted(_counts.items()):
        ran = c["passed"] + c["failed"]
        terminalreporter.write_line("%s cases: %d ran, %d passed, %d failed, %d skipped (layer type "
                                    "not implemented)" % (kind, ran, c["passed"], c["failed"],
                                                          c["skipped"]))
