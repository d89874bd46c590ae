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


# -- the README ------------------------------------------------------------------------------

README = os.path.join(ROOT, "README.md")


def readme_block(heading, lang):
    """The first ```lang block after the line ``heading`` of the README, and its first line."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index(heading)
    for i in range(start + 1, len(lines)):
        if lines[i].rstrip() == "```" + lang:
            end = lines.index("```", i + 1)
            return "\n".join(lines[i + 1:end]) + "\n", i + 2
        assert not lines[i].startswith("#"), "README: no ```%s block under %s" % (lang, heading)
    raise AssertionError("README: no ```%s block under %s" % (lang, heading))


def _run_isolated(code, cwd):
    """Run ``code`` in a fresh interpreter that imports this process's caffepy."""
    import caffepy
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(caffepy.__file__))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=120)


def test_readme_own_loss_example_runs_as_written(tmp_path):
    """The README's "Your own loss" block, verbatim, in a fresh interpreter: it registers
    L1Loss and its gradient check passes; then the loss value and the gradients are the
    hand-computed ones."""
    code, line = readme_block("### Your own loss", "python")
    assert "check_exhaustive(layer, bottom, top)" in code
    src = "\n" * (line - 1) + code
    check = textwrap.dedent('''
        import numpy as _np
        _p, _t = bottom[0].data.copy(), bottom[1].data.copy()
        assert _np.abs(_p - _t).min() >= 0.1
        layer.forward(bottom, top)
        assert abs(float(top[0].data) - _np.abs(_p - _t).sum() / 4) < 1e-5
        layer.backward(top, [True, True], bottom)
        _np.testing.assert_array_equal(bottom[0].diff, _np.sign(_p - _t) / 4)
        _np.testing.assert_array_equal(bottom[1].diff, -_np.sign(_p - _t) / 4)
        print("README loss ok", float(top[0].data))
    ''')
    runner = "exec(compile(%r, 'README.md', 'exec'))\n%s" % (src, check)
    proc = _run_isolated(runner, tmp_path)
    assert proc.returncode == 0, "README.md's own-loss example failed:\n" + proc.stderr[-4000:]
    assert "README loss ok" in proc.stdout


def test_readme_setup_commands_make_a_venv_and_ci_runs_the_test_command():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Set-up: two commands"):text.index("## A short tour")]
    commands = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(commands) == 2, commands
    venv = "python3 -m venv .venv && . .venv/bin/activate && pip install "
    train, test = commands
    assert train.startswith(venv) and "examples/mnist/train_lenet.py" in train
    assert test == venv + "-e '.[test,all]' && python -m pytest"
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().split("\n")
    marker = ci.index("# --- the README's test command (keep the two in sync) ---")
    # the same command, with CI's own environment folder
    assert ci[marker + 1].replace(".venv-ci", ".venv").replace("pip install -q ",
                                                               "pip install ") == test
