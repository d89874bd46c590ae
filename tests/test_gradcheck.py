"""check_regularizer catches wrong regularizers; ``caffepy gradcheck`` (caffepy.tools.gradcheck)
checks layers and regularizers and says so in its table and exit status."""
import io
import textwrap

import numpy as np
import pytest

from caffepy.errors import GradientCheckError, RegularizerError
from caffepy.gradient_check import check_regularizer, default_zero_groups
from caffepy.regularizers import GroupLasso, Regularizer
from caffepy.tools import gradcheck


class Scaled(Regularizer):
    """L2 whose gradient is ``factor`` times too big; optional misbehaviours."""

    def __init__(self, coeff=0.1, factor=1.0, overwrite=False, touch_data=False):
        super().__init__(coeff)
        self.factor, self.overwrite, self.touch_data = factor, overwrite, touch_data

    def regularize(self, param_id, blob, ctx):
        g = np.float32(self.coeff * self.factor) * blob.data
        if self.overwrite:
            blob.diff[...] = g
        else:
            blob.diff[...] += g
        if self.touch_data:
            blob.data[...] *= 0.5

    def penalty(self, param_id, blob, ctx):
        return 0.5 * self.coeff * float((blob.data * blob.data).sum())


def test_correct_regularizer_passes_with_its_numbers():
    w = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    res = check_regularizer(GroupLasso(0.5, kind="filter"), weights=w, zero=None)
    assert res.passed and res.count == 6 and res.shape == (2, 3)
    assert res.penalty == pytest.approx(2.5)                      # 0.5 * ||(3, 4, 0)||
    np.testing.assert_allclose(res.analytic, [[0.3, 0.4, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(res.numeric, [[0.3, 0.4, 0], [0, 0, 0]], atol=1e-9)
    assert res.analytic[1].tolist() == [0.0, 0.0, 0.0]
    assert check_regularizer(Scaled(0.1)).passed


def test_wrong_gradient_is_caught_with_the_element():
    with pytest.raises(GradientCheckError) as e:
        check_regularizer(Scaled(0.1, factor=1.02), shape=(3, 2), zero=None)
    msg = str(e.value)
    assert msg.startswith("regularizer 'Regularizer' on layer 'layer' blob 0 (3, 2): gradient of "
                          "element 0 (0, 0): analytic ")
    assert "(6 of 6 elements off)" in msg
    res = check_regularizer(Scaled(0.1, factor=1.02), shape=(3, 2), raise_on_failure=False)
    assert not res.passed and res.max_rel_error == pytest.approx(0.02 / 1.02, rel=1e-3)
    assert [k for k, _, _ in res.failures] == [2, 4]     # row 0 and column 1 are zeroed


def test_overwriting_the_diff_and_touching_the_data_are_caught():
    res = check_regularizer(Scaled(0.1, overwrite=True), shape=(3, 2), raise_on_failure=False)
    assert not res.passed
    assert "regularize() must add its gradient to blob.diff" in res.message
    res = check_regularizer(Scaled(0.1, touch_data=True), shape=(3, 2), raise_on_failure=False)
    assert "regularize() changed blob.data" in res.message


def test_unselected_param_is_an_error():
    with pytest.raises(RegularizerError, match="regularizer 'GroupLasso' does not apply to layer "
                                               "'layer' blob 1"):
        check_regularizer(GroupLasso(0.1), shape=(4,), blob_index=1)


def test_default_zero_groups():
    w = np.ones((4, 2, 3))
    for idx in default_zero_groups(w.shape):
        w[idx] = 0
    m = w.reshape(4, 6)
    assert (m[0] == 0).all() and (m[:, 5] == 0).all() and m.sum() == 15
    assert default_zero_groups((5,)) == [np.s_[:1]]


# -- the command ---------------------------------------------------------------------------------

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = gradcheck.main(list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def table_rows(text):
    lines = text.splitlines()
    assert lines[0].split() == ["check", "shape", "elements", "max", "rel", "err", "result"]
    return [ln for ln in lines[2:] if not ln.startswith("FAIL ")]


def test_cli_regularizer_passes():
    rc, out, err = run("-regularizer", "GroupLasso", "-param_str", "kind: shape", "-coeff",
                       "0.01", "-shape", "8,2,3,3", "-conv_group", "2")
    assert rc == 0, err
    (row,) = table_rows(out)
    assert row.startswith("regularizer GroupLasso kind=shape coeff=0.01")
    assert row.split()[-4:-2] == ["8x2x3x3", "144"] and row.endswith("PASS")
    rc, out, _ = run("-regularizer", "SSLGroupLasso", "-param_str",
                     "{'breadth_decay': 0.01, 'block_group_decay': 0.02}", "-param_spec",
                     "breadth_decay_mult: 1 block_group_lasso { xdimen: 9 ydimen: 2 }",
                     "-shape", "4x2x3x3")
    assert rc == 0 and table_rows(out)[0].endswith("PASS")


def test_cli_layer_with_regularizer_uses_its_paramspecs(tmp_path):
    f = tmp_path / "conv.prototxt"
    f.write_text('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
                 '  param { breadth_decay_mult: 1 kernel_shape_decay_mult: 1 }\n'
                 '  convolution_param { num_output: 4 kernel_size: 2 group: 2\n'
                 '    weight_filler { type: "gaussian" std: 0.5 } } }\n')
    rc, out, err = run("-layer", str(f), "-shape", "2,4,4,4", "-regularizer", "GroupLasso",
                       "-coeff", "0.1", "-param_str", "kind: channel")
    assert rc == 0, err
    rows = table_rows(out)
    assert rows[0].startswith("layer conv1 (Convolution)") and rows[0].endswith("PASS")
    assert rows[1].startswith("regularizer GroupLasso on conv1 blob 0") and \
        rows[1].endswith("PASS")
    assert rows[2].startswith("regularizer GroupLasso on conv1 blob 1") and \
        rows[2].endswith("SKIP")                          # group kinds: weights only


def test_cli_user_classes_pass_and_fail(tmp_path, monkeypatch):
    (tmp_path / "my_plugins.py").write_text(textwrap.dedent('''
        import numpy as np
        import caffepy
        from caffepy.regularizers import Regularizer


        class Cube(caffepy.NeuronLayer):
            wrong = False

            def forward_impl(self, bottom, top):
                top[0].data[...] = bottom[0].data ** 3

            def backward_impl(self, top, propagate_down, bottom):
                k = 3.3 if self.wrong else 3.0
                bottom[0].diff[...] = k * bottom[0].data ** 2 * top[0].diff


        class WrongCube(Cube):
            wrong = True


        class HalfL1(Regularizer):
            def regularize(self, param_id, blob, ctx):
                blob.diff[...] += np.float32(self.coeff) * np.sign(blob.data)

            def penalty(self, param_id, blob, ctx):
                return 2 * self.coeff * float(abs(blob.data).sum())     # twice too big
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, out, err = run("-layer", "my_plugins:Cube", "-shape", "2,3")
    assert rc == 0, err
    assert table_rows(out)[0].startswith("layer Cube (Cube)")
    rc, out, _ = run("-layer", "my_plugins:WrongCube", "-shape", "2,3")
    assert rc == 1
    assert table_rows(out)[0].endswith("FAIL")
    assert "FAIL layer WrongCube (WrongCube): layer 'WrongCube' (WrongCube): gradient of " \
           "bottom 0 element" in out
    rc, out, _ = run("-regularizer", "my_plugins:HalfL1", "-coeff", "0.5", "-shape", "3,4")
    assert rc == 1
    assert "analytic 0.5 vs numeric 1" in out or "analytic -0.5 vs numeric -1" in out


def test_cli_usage_and_configuration_errors():
    rc, _, err = run("-regularizer", "Nope", "-shape", "3")
    assert rc == 2 and err.startswith("ERROR: Unknown regularizer 'Nope' (registered: ")
    rc, _, err = run("-regularizer", "L1", "-shape", "3,a")
    assert rc == 2 and "ERROR: -shape '3,a' is not a shape like 2,3,7,7" in err
    rc, _, err = run("-regularizer", "L1", "-coeff", "1")
    assert rc == 2 and "needs exactly one -shape (the weights' shape), got 0" in err
    rc, _, err = run("-frobnicate", "1")
    assert rc == 2 and "ERROR: unknown flag '-frobnicate'" in err
    rc, _, err = run()
    assert rc == 2 and "give -layer and/or -regularizer" in err
    rc, _, err = run("-regularizer", "GroupLasso", "-param_str", "kind: block, xdimen: 4",
                     "-shape", "3,3")
    assert rc == 2 and "block group lasso (xdimen 4, ydimen 1) does not tile the 3x3" in err


def test_caffepy_gradcheck_command(capsys):
    from caffepy import cli
    assert cli.COMMANDS["gradcheck"].own_flags
    rc = cli.run(["gradcheck", "-regularizer", "GroupLasso", "-coeff", "0.01", "-param_str",
                  "kind: shape", "-shape", "8,2,3,3", "-conv_group", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    row = table_rows(out)[0]
    assert row.startswith("regularizer GroupLasso kind=shape coeff=0.01  8x2x3x3  144")
    assert row.endswith("PASS")
    rc = cli.run(["gradcheck", "-layer", 'type: "SoftmaxWithLoss"', "-shape", "4,5",
                  "-shape", "4", "-labels", "5", "-shape", "4"])
    assert rc == 2 and "Unexpected" not in capsys.readouterr().err
    rc = cli.run(["gradcheck", "-layer", 'type: "SoftmaxWithLoss"', "-shape", "4,5",
                  "-shape", "4", "-labels", "5"])
    assert rc == 0
    assert table_rows(capsys.readouterr().out)[0].startswith(
        "layer SoftmaxWithLoss (SoftmaxWithLoss)  4x5 4  24")
