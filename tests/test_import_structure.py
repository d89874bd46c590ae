"""``import caffepy`` loads what training needs and nothing else: the optional packages (h5py,
PIL, lmdb, pydot, numba, CuPy) and pycaffe's helpers (io, net_spec, draw, classifier,
gradient_check) load on first use, under the names pycaffe code reaches them by."""
import json
import subprocess
import sys

import caffepy

OPTIONAL = ["h5py", "PIL", "lmdb", "pydot", "numba", "cupy", "mpi4py", "onnx"]
ON_FIRST_USE = ["caffepy.io", "caffepy.net_spec", "caffepy.draw", "caffepy.classifier",
                "caffepy.gradient_check"]


def _loaded_after(code):
    probe = ("import json, sys\n%s\nprint(json.dumps(sorted(m for m in %r if m in sys.modules)))"
             % (code, OPTIONAL + ON_FIRST_USE))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_loads_no_optional_package_nor_pycaffe_helper():
    assert _loaded_after("import caffepy") == []


def test_pycaffe_helpers_load_on_first_use():
    assert _loaded_after("import caffepy\ncaffepy.NetSpec") == ["caffepy.net_spec"]
    assert _loaded_after("from caffepy import io") == ["caffepy.io"]
    assert _loaded_after("import caffepy.draw") == ["caffepy.draw"]


def test_lazy_names_are_the_modules_objects():
    from caffepy import classifier, gradient_check, io, net_spec
    assert caffepy.io is io and io.array_to_blobproto is caffepy.io.array_to_blobproto
    assert caffepy.Classifier is classifier.Classifier
    assert (caffepy.NetSpec, caffepy.params, caffepy.to_proto) == \
        (net_spec.NetSpec, net_spec.params, net_spec.to_proto)
    assert caffepy.gradient_check.GradientChecker is gradient_check.GradientChecker
    assert {"io", "draw", "Classifier", "NetSpec", "Net", "get_solver"} <= set(dir(caffepy))
    try:
        caffepy.no_such_name
    except AttributeError as e:
        assert str(e) == "module 'caffepy' has no attribute 'no_such_name'"
    else:
        raise AssertionError("caffepy.no_such_name did not raise")
