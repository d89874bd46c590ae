"""Type hints: the public API of Layer, Regularizer and net_spec is annotated throughout, the
annotations cost nothing at run time (postponed: plain strings, their imports only under
TYPE_CHECKING), and caffe_pb2.pyi, the stub that lets a type checker see the message classes,
is what protoc writes for caffe.proto today.  With mypy installed, a user's layer and
regularizer type-check against the package, and a mistake is caught."""
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

from caffepy import layer, net_spec
from caffepy.regularizers import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def public_callables():
    """(qualified name, function) for the public API of the three modules."""
    out = []
    for mod, classes, functions in (
            (layer, [layer.Layer, layer.LossLayer, layer.NeuronLayer, layer.BlobList],
             ["register_layer", "layer_type_list", "get_layer_class", "create_layer",
              "build_layer"]),
            (base, [base.Regularizer, base.RegularizeContext],
             ["register_regularizer", "regularizer_names", "get_regularizer_class",
              "create_regularizer", "setup_regularizers", "run_regularizers",
              "regularizers_penalty", "chain_state_dict", "load_chain_state_dict"]),
            (net_spec, [net_spec.NetSpec, net_spec.Top, net_spec.Function, net_spec.Layers,
                        net_spec.Parameters],
             ["param_name_dict", "to_proto", "assign_proto"])):
        for name in functions:
            out.append(("%s.%s" % (mod.__name__, name), getattr(mod, name)))
        for cls in classes:
            for name, member in vars(cls).items():
                if name.startswith("_") and name not in ("__init__", "__getattr__",
                                                         "__setattr__", "__getitem__"):
                    continue
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    out.append(("%s.%s" % (cls.__qualname__, name), member))
    return out


def test_every_public_function_is_fully_annotated():
    found = public_callables()
    assert len(found) > 60
    missing = []
    for name, fn in found:
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.name in ("self", "cls"):
                continue
            if p.annotation is inspect.Parameter.empty:
                missing.append("%s(%s)" % (name, p.name))
        if sig.return_annotation is inspect.Signature.empty:
            missing.append("%s -> ?" % name)
    assert not missing, missing


def test_annotations_are_not_evaluated_at_run_time():
    # postponed annotations: strings, so names imported only under TYPE_CHECKING are fine
    assert layer.build_layer.__annotations__["return"] == \
        "Tuple[Layer, List[Blob], List[Blob]]"
    assert base.Regularizer.regularize.__annotations__["blob"] == "Blob"
    assert net_spec.to_proto.__annotations__["return"] == "caffe_pb2.NetParameter"
    # the type-checking-only imports did not happen: numpy.typing is not loaded by them
    code = ("import sys, caffepy, caffepy.net_spec, caffepy.regularizers; "
            "print('numpy.typing' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_caffe_pb2_stub_is_protocs_output_for_caffe_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    proto_dir = os.path.join(SRC, "caffepy", "proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + proto_dir,
                    "--pyi_out=" + str(tmp_path), os.path.join(proto_dir, "caffe.proto")],
                   check=True, timeout=120)
    with open(os.path.join(proto_dir, "caffe_pb2.pyi")) as f:
        shipped = f.read()
    assert (tmp_path / "caffe_pb2.pyi").read_text() == shipped, \
        "caffe_pb2.pyi is stale: run python tools/gen_proto.py"
    assert "class LayerParameter(_message.Message):" in shipped


USER_CODE = textwrap.dedent('''
    from typing import List
    import numpy as np
    import caffepy
    from caffepy.blob import Blob
    from caffepy.layer import BlobVec, build_layer
    from caffepy.regularizers import Regularizer, RegularizeContext, register_regularizer
    from caffepy import net_spec

    @caffepy.register_layer("Twice")
    class Twice(caffepy.NeuronLayer):
        def forward_impl(self, bottom: BlobVec, top: BlobVec) -> None:
            top[0].data[...] = 2 * bottom[0].data

    @register_regularizer("Tiny")
    class Tiny(Regularizer):
        def regularize(self, param_id: int, blob: Blob, ctx: RegularizeContext) -> None:
            blob.diff[...] += self.coeff * blob.data

    layer, bottom, top = build_layer('type: "Twice" bottom: "x" top: "y"', [np.ones(3)])
    names: List[str] = caffepy.layer.layer_type_list()
    loss: float = layer.forward(bottom, top)
    n = net_spec.NetSpec()
    proto = n.to_proto()
    proto.layer.add().name = "x"
''')


def _mypy(tmp_path, code):
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(code)
    return subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports",
                           "--follow-imports=silent", "--no-incremental", "user.py"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MYPYPATH=SRC))


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_user_code_type_checks_and_mistakes_are_caught(tmp_path):
    r = _mypy(tmp_path, USER_CODE)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = USER_CODE + "layer.forward(bottom)\nproto.layer.add().nme = 'x'\n"
    r = _mypy(tmp_path, bad)
    assert r.returncode == 1
    assert 'Missing positional argument "top" in call to "forward" of "Layer"' in r.stdout
    assert '"LayerParameter" has no attribute "nme"' in r.stdout
