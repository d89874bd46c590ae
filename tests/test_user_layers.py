"""User layers, both ways: a native caffepy.LossLayer subclass registered by type name (the
README's example, verbatim) and a pycaffe-style `type: "Python"` layer that does `import caffe`."""
import os
import textwrap

import numpy as np
import pytest

import caffepy
from caffepy.gradient_check import check_layer
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_loss_example():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("### Your own loss")
    block = text[text.index("```python", start) + len("```python"):]
    return block[:block.index("```")]


def test_readme_custom_loss_registers_trains_and_passes_gradient_check():
    namespace = {}
    exec(compile(readme_loss_example(), "README.md", "exec"), namespace)
    assert "L1Loss" in caffepy.layer_type_list()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    # keep a − b away from the kink of |·| so finite differences are meaningful
    b = (a + rng.choice([-1, 1], (4, 3)) * rng.uniform(0.2, 1, (4, 3))).astype(np.float32)
    layer, bottom, top = check_layer('name: "l1" type: "L1Loss" bottom: "a" bottom: "b" top: "l"',
                                     [a, b], check_bottom=0, threshold=1e-2)
    assert layer.loss_weights == [1.0]              # a LossLayer: default loss weight 1
    layer.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(np.abs(a - b).sum() / 4, rel=1e-5)
    # and inside a net, with a loss_weight, trained by the solver's machinery
    net_text = """
    layer { name: "in" type: "Input" top: "x" top: "t"
            input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "l1" type: "L1Loss" bottom: "y" bottom: "t" top: "l" loss_weight: 2 }
    """
    p = parse_text(net_text, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TRAIN
    net = caffepy.Net(p)
    net.blobs["x"].data[...] = a
    net.blobs["t"].data[...] = 0
    y = net.forward_prefilled()
    assert y == pytest.approx(2 * np.abs(net.blobs["y"].data).sum() / 4, rel=1e-5)
    net.clear_param_diffs()
    net.backward_from_to(len(net.layers) - 1, 0)
    w_grad = net.params["ip"][0].diff
    expected = (2 / 4.0) * np.sign(net.blobs["y"].data).T @ a
    np.testing.assert_allclose(w_grad, expected, rtol=1e-5)


def test_python_layer_with_param_str_and_import_caffe(tmp_path, monkeypatch):
    (tmp_path / "myscale.py").write_text(textwrap.dedent('''
        import caffe

        class Scale3(caffe.Layer):
            def setup(self, bottom, top):
                self.k = float(self.param_str)
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = 0.5

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data * self.k + self.blobs[0].data

            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[...] += top[0].diff.sum()
                if propagate_down[0]:
                    bottom[0].diff[...] = top[0].diff * self.k
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    text = ('name: "py" type: "Python" bottom: "x" top: "y" '
            'python_param { module: "myscale" layer: "Scale3" param_str: "3" }')
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    layer, bottom, top = check_layer(text, [x])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x * 3 + 0.5)
    assert layer.impl.phase == caffe_pb2.TRAIN


def test_python_layer_missing_module_is_a_clear_error():
    lp = parse_text('name: "py" type: "Python" python_param { module: "no_such_mod" layer: "X" }',
                    caffe_pb2.LayerParameter())
    with pytest.raises(caffepy.LayerError, match="Layer 'py' \\(Python\\): cannot import "
                                                 "python_param.module 'no_such_mod'"):
        caffepy.layer.create_layer(lp)
