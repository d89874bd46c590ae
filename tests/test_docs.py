"""The documentation's examples run, so the docs cannot silently rot.

In docs/extending.md and docs/python-api.md a fenced block preceded by

    <!-- test -->                 is a ```python block to execute;
    <!-- test: file NAME -->      is a block (any language) to save as NAME first.

Each page runs in its own fresh interpreter, in an empty temporary directory, with its
blocks in page order sharing one namespace (a page reads like one session). A failure
reports the page and the line of the block that failed.

All the pages written for users are checked more lightly too: relative links must point to
existing files and headings, and docs/cli.md must name every ``caffepy`` command and no
command that does not exist.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RUNNABLE_PAGES = ["extending.md", "python-api.md"]
OWN_PAGES = ["getting-started.md", "cli.md", "solvers.md", "data.md", "python-api.md",
             "extending.md", "compatibility.md"]

MARKER = re.compile(r"^<!--\s*test(?::\s*file\s+(?P<file>\S+))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w+-]*)\s*$")


def extract_blocks(path):
    """[(kind, name, code, line)] for the marked blocks of ``path``: kind "run" (code to
    execute) or "file" (text to save as ``name``); ``line`` is the block's first line."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fm = FENCE.match(lines[j]) if j < len(lines) else None
        if fm is None:
            raise AssertionError("%s:%d: a test marker must be followed by a fenced code block"
                                 % (os.path.basename(path), i + 1))
        fence, lang = fm.group("fence"), fm.group("lang")
        k = j + 1
        while k < len(lines) and lines[k].rstrip() != fence:
            k += 1
        if k == len(lines):
            raise AssertionError("%s:%d: unterminated code block" % (os.path.basename(path), j + 1))
        code = "\n".join(lines[j + 1:k]) + "\n"
        if m.group("file"):
            blocks.append(("file", m.group("file"), code, j + 2))
        else:
            if lang != "python":
                raise AssertionError("%s:%d: <!-- test --> marks a ```python block, not ```%s"
                                     % (os.path.basename(path), j + 1, lang))
            blocks.append(("run", None, code, j + 2))
        i = k + 1
    return blocks


RUNNER = textwrap.dedent('''
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for kind, name, code, line in blocks:
        if kind == "file":
            with open(name, "w") as f:
                f.write(code)
            continue
        # pad with newlines so tracebacks show the line numbers of the page
        src = "\\n" * (line - 1) + code
        try:
            exec(compile(src, PAGE, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            sys.stderr.write("\\nFAILED: the block starting at %s:%d\\n" % (PAGE, line))
            sys.exit(1)
''')


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_examples_run(page, tmp_path):
    path = os.path.join(DOCS, page)
    blocks = extract_blocks(path)
    assert sum(1 for b in blocks if b[0] == "run") >= 5, \
        "%s: too few runnable blocks (markers lost?)" % page
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    runner = tmp_path / "run_page.py"
    runner.write_text("PAGE = %r\n" % ("docs/" + page) + RUNNER)
    import caffepy
    env = dict(os.environ)      # the subprocess imports the caffepy this test process imports
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(caffepy.__file__))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, str(runner), str(tmp_path / "blocks.json")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        pytest.fail("docs/%s: an example failed\n--- stdout\n%s\n--- stderr\n%s"
                    % (page, proc.stdout[-4000:], proc.stderr[-6000:]))


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def heading_anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    in_code = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                text = line.lstrip("#").strip().lower()
                anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", OWN_PAGES)
def test_relative_links_resolve(page):
    path = os.path.join(DOCS, page)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    bad = []
    for m in LINK.finditer(text):
        target = m.group("target")
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(DOCS, file_part)) if file_part else path
        if not os.path.exists(dest):
            bad.append(target)
        elif anchor and dest.endswith(".md") and anchor not in heading_anchors(dest):
            bad.append(target)
    assert not bad, "%s: links to missing files or headings: %s" % (page, bad)


def test_cli_page_names_real_commands():
    from caffepy import cli
    with open(os.path.join(DOCS, "cli.md"), encoding="utf-8") as f:
        text = f.read()
    named = set(re.findall(r"\bcaffepy (\w+)", text))
    words = {w for w in named if (w.islower() and "_" in w) or w in cli.COMMANDS}
    unknown = sorted(w for w in words if w not in cli.COMMANDS)
    assert not unknown, "docs/cli.md names commands caffepy does not have: %s" % unknown
    missing = sorted(c for c in cli.COMMANDS if c not in named)
    assert not missing, "docs/cli.md does not document: %s" % missing
