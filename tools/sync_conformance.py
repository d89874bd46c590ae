#!/usr/bin/env python3
"""Take Caffe's reference cases into the repository (tests/conformance) and rewrite its manifest.

    python tools/sync_conformance.py [SOURCE]     # SOURCE defaults to ../shared/conformance
    python tools/sync_conformance.py --manifest   # only rewrite MANIFEST.sha256 from the files

A case present in SOURCE replaces the repository's copy (new cases are added, none are removed).
MANIFEST.sha256 lists every file under tests/conformance with its SHA-256; the test suite fails
when a listed file is missing or altered, or an unlisted file appears.
"""
import hashlib
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEST = os.path.join(ROOT, "tests", "conformance")
DEFAULT_SOURCE = os.path.join(ROOT, "..", "shared", "conformance")
MANIFEST = "MANIFEST.sha256"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root=DEST):
    rows = []
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/")
            if rel != MANIFEST:
                rows.append("%s  %s\n" % (sha256_file(os.path.join(base, name)), rel))
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(rows)
    os.replace(tmp, os.path.join(root, MANIFEST))
    return len(rows)


def sync(source):
    if not os.path.isdir(source):
        sys.exit("sync_conformance: no conformance folder at %s" % source)
    added = replaced = 0
    for kind in ("layers", "solvers"):
        kind_dir = os.path.join(source, kind)
        if not os.path.isdir(kind_dir):
            continue
        for case in sorted(os.listdir(kind_dir)):
            src = os.path.join(kind_dir, case)
            if not os.path.isfile(os.path.join(src, "meta.json")):
                continue
            dst = os.path.join(DEST, kind, case)
            if os.path.exists(dst):
                shutil.rmtree(dst)
                replaced += 1
            else:
                added += 1
            shutil.copytree(src, dst)
    readme = os.path.join(source, "README.md")
    if os.path.exists(readme):
        shutil.copyfile(readme, os.path.join(DEST, "README.md"))
    return added, replaced


def main(argv):
    if argv and argv[0] == "--manifest":
        n = write_manifest()
        print("wrote %s (%d files)" % (os.path.join(DEST, MANIFEST), n))
        return
    source = argv[0] if argv else DEFAULT_SOURCE
    added, replaced = sync(source)
    n = write_manifest()
    print("%d cases added, %d refreshed from %s; manifest lists %d files" % (added, replaced,
                                                                         source, n))


if __name__ == "__main__":
    main(sys.argv[1:])
