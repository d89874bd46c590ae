"""Caffe's solver reference cases (tests/conformance/solvers, and ../shared's newer ones), run as the conformance
README section B says: copy the case, chdir into it, build the solver from
solver.prototxt with ``weights: "init.caffemodel"`` (what ``caffe train --weights`` does),
solve, and compare the max_iter snapshot, the displayed losses / lrs / train outputs /
test scores, the gradient-clipping count, the ignored source layers, and the resumed run.
"""
import csv
import logging
import math
import os

import numpy as np
import pytest

from caffepy.proto import caffe_pb2
from caffepy.proto import blobproto_to_array, read_binary
from caffepy.solver import get_solver, read_solver_file

from helpers import SOLVER_CASES, assert_close, copy_case, load_meta

CASES = sorted(SOLVER_CASES)


class Recorder:
    """A solver listener keeping every displayed number."""

    def __init__(self):
        self.losses = {}        # iter -> smoothed loss
        self.lrs = {}           # iter -> lr
        self.train_outputs = []  # (iter, index, name, value)
        self.test_scores = []   # (iter, net, index, name, value)
        self.clips = 0

    def __call__(self, event, rec):
        if event == "train":
            self.losses[rec["iter"]] = rec["loss"]
            for idx, name, value, _w in rec["outputs"]:
                self.train_outputs.append((rec["iter"], idx, name, value))
        elif event == "final_loss":
            self.losses[rec["iter"]] = rec["loss"]
        elif event == "lr":
            self.lrs[rec["iter"]] = rec["lr"]
        elif event == "test":
            for idx, name, value, _w in rec["scores"]:
                self.test_scores.append((rec["iter"], rec["net"], idx, name, value))
        elif event == "clip":
            self.clips += 1


def read_tsv(path):
    with open(path) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def compare_caffemodel(actual_path, expected_path, tol, what):
    assert os.path.isfile(actual_path), "%s: snapshot %s was not written" % (what, actual_path)
    exp = read_binary(expected_path, caffe_pb2.NetParameter())
    act = read_binary(actual_path, caffe_pb2.NetParameter())
    act_layers = {l.name: l for l in act.layer}
    n = 0
    for le in exp.layer:
        if not len(le.blobs):
            continue
        assert le.name in act_layers, "%s: layer '%s' missing from %s" % (what, le.name,
                                                                          actual_path)
        la = act_layers[le.name]
        assert len(la.blobs) == len(le.blobs), "%s: layer '%s' has %d blobs, expected %d" % (
            what, le.name, len(la.blobs), len(le.blobs))
        for j, (ba, be) in enumerate(zip(la.blobs, le.blobs)):
            assert_close(blobproto_to_array(ba), blobproto_to_array(be), tol,
                         "%s: layer '%s' blob %d" % (what, le.name, j))
            n += 1
    for la in act.layer:
        if len(la.blobs):
            assert any(le.name == la.name for le in exp.layer), \
                "%s: unexpected layer with blobs '%s'" % (what, la.name)
    assert n > 0


def compare_solverstate(actual_path, expected_path, tol, what):
    assert os.path.isfile(actual_path), "%s: snapshot %s was not written" % (what, actual_path)
    exp = read_binary(expected_path, caffe_pb2.SolverState())
    act = read_binary(actual_path, caffe_pb2.SolverState())
    assert act.iter == exp.iter, "%s: iter %d, expected %d" % (what, act.iter, exp.iter)
    assert act.current_step == exp.current_step, "%s: current_step %d, expected %d" % (
        what, act.current_step, exp.current_step)
    assert len(act.history) == len(exp.history), "%s: %d history blobs, expected %d" % (
        what, len(act.history), len(exp.history))
    for i, (ha, he) in enumerate(zip(act.history, exp.history)):
        assert_close(blobproto_to_array(ha), blobproto_to_array(he), tol,
                     "%s: history blob %d" % (what, i))


def compare_losses(rec, tsv, tol, lr_tol, what):
    _, rows = read_tsv(tsv)
    exp_iters = [int(r[0]) for r in rows]
    assert sorted(rec.losses) == exp_iters, "%s: displayed iterations %s, expected %s" % (
        what, sorted(rec.losses), exp_iters)
    for r in rows:
        it, loss, lr = int(r[0]), float(r[1]), float(r[2])
        assert_close(rec.losses[it], loss, tol, "%s: loss at iteration %d" % (what, it))
        if math.isnan(lr):
            assert it not in rec.lrs, "%s: lr displayed at the final pass %d" % (what, it)
        else:
            assert it in rec.lrs, "%s: no lr displayed at iteration %d" % (what, it)
            assert_close(rec.lrs[it], lr, lr_tol, "%s: lr at iteration %d" % (what, it))


def compare_train_outputs(rec, tsv, tol, what):
    _, rows = read_tsv(tsv)
    exp = [(int(r[0]), int(r[1]), r[2], float(r[3])) for r in rows]
    got = rec.train_outputs
    assert [(e[0], e[1], e[2]) for e in got] == [(e[0], e[1], e[2]) for e in exp], \
        "%s: train outputs (iter, index, name) differ: got %s..., expected %s..." % (
            what, got[:6], exp[:6])
    assert_close([g[3] for g in got], [e[3] for e in exp], tol, what + ": train output values")


def compare_test_scores(rec, tsv, tol, what):
    _, rows = read_tsv(tsv)
    exp = [(int(r[0]), int(r[1]), int(r[2]), r[3], float(r[4])) for r in rows]
    got = rec.test_scores
    assert [g[:4] for g in got] == [e[:4] for e in exp], \
        "%s: test outputs (iter, net, index, name) differ: got %s, expected %s" % (
            what, [g[:4] for g in got], [e[:4] for e in exp])
    assert_close([g[4] for g in got], [e[4] for e in exp], tol, what + ": test scores")


class _capture_log:
    """Collect the "caffepy" logger's INFO messages (whatever its propagate setting)."""

    def __init__(self, messages):
        self.messages = messages
        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())
        self.logger = logging.getLogger("caffepy")

    def __enter__(self):
        self.old_level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)
        return False


def _read_param(with_weights):
    param = read_solver_file("solver.prototxt")
    if with_weights:
        param.weights.append("init.caffemodel")
    return param


@pytest.mark.conformance
@pytest.mark.parametrize("case", CASES)
def test_solver_case(case, tmp_path, monkeypatch):
    case_dir = SOLVER_CASES[case]
    meta = load_meta(case_dir)
    tol = meta["tolerance"]
    max_iter = meta["max_iter"]
    exp_dir = os.path.join(case_dir, "expected")

    # -- the uninterrupted run (caffe train --solver=solver.prototxt --weights=init.caffemodel)
    work = copy_case(case_dir, tmp_path / "run")
    monkeypatch.chdir(work)
    messages = []
    with _capture_log(messages):
        solver = get_solver(_read_param(with_weights=True))
        rec = Recorder()
        solver.add_listener(rec)
        solver.solve()
    assert solver.iter == max_iter

    final_model = os.path.join(work, "expected", "snap_iter_%d.caffemodel" % max_iter)
    final_state = os.path.join(work, "expected", "snap_iter_%d.solverstate" % max_iter)
    compare_caffemodel(final_model, os.path.join(exp_dir, "final.caffemodel"),
                       tol["final_weights"], case + " final weights")
    compare_solverstate(final_state, os.path.join(exp_dir, "final.solverstate"),
                        tol["solverstate_history"], case + " final solverstate")
    compare_losses(rec, os.path.join(exp_dir, "losses.tsv"), tol["losses"], tol["lr"], case)
    if os.path.exists(os.path.join(exp_dir, "train_outputs.tsv")):
        compare_train_outputs(rec, os.path.join(exp_dir, "train_outputs.tsv"), tol["losses"],
                              case)
    if os.path.exists(os.path.join(exp_dir, "test_scores.tsv")):
        compare_test_scores(rec, os.path.join(exp_dir, "test_scores.tsv"), tol["test_scores"],
                            case)
    else:
        assert not rec.test_scores
    if "gradient_clipping_lines" in meta:
        assert rec.clips == meta["gradient_clipping_lines"], \
            "%d gradient clipping lines, expected %d" % (rec.clips,
                                                         meta["gradient_clipping_lines"])
    for name in meta.get("ignored_source_layers", []):
        assert "Ignoring source layer %s" % name in messages, \
            "'Ignoring source layer %s' was not logged" % name

    # -- the resumed run (caffe train --solver=solver.prototxt --snapshot=...), fresh copy
    resume = meta.get("resume")
    if resume:
        work2 = copy_case(case_dir, tmp_path / "resume")
        monkeypatch.chdir(work2)
        solver2 = get_solver(_read_param(with_weights=False))
        rec2 = Recorder()
        solver2.add_listener(rec2)
        solver2.solve(resume_file=resume["from"])
        assert solver2.iter == max_iter
        model2 = os.path.join(work2, "expected", "snap_iter_%d.caffemodel" % max_iter)
        state2 = os.path.join(work2, "expected", "snap_iter_%d.solverstate" % max_iter)
        compare_caffemodel(model2, os.path.join(exp_dir, "resume_final.caffemodel"),
                           tol["final_weights"], case + " resumed final weights")
        compare_solverstate(state2, os.path.join(exp_dir, "resume_final.solverstate"),
                            tol["solverstate_history"], case + " resumed solverstate")
        compare_losses(rec2, os.path.join(exp_dir, "resume_losses.tsv"), tol["losses"],
                       tol["lr"], case + " resumed")
        # Caffe's resumed run was bit-identical to its uninterrupted run; ours must be too
        # when it resumes from our own mid-run snapshot (written by the first run).
        if (resume.get("resumed_final_weights_bit_identical_to_uninterrupted")
                or resume.get("resumed_solverstate_identical")):
            a_model = read_binary(final_model, caffe_pb2.NetParameter())
            a_state = read_binary(final_state, caffe_pb2.SolverState())
            monkeypatch.chdir(work)
            solver3 = get_solver(_read_param(with_weights=False))
            solver3.solve(resume_file=resume["from"])
            b_model = read_binary(final_model, caffe_pb2.NetParameter())
            b_state = read_binary(final_state, caffe_pb2.SolverState())
            if resume.get("resumed_final_weights_bit_identical_to_uninterrupted"):
                for la, lb in zip(a_model.layer, b_model.layer):
                    for ba, bb in zip(la.blobs, lb.blobs):
                        assert np.array_equal(blobproto_to_array(ba), blobproto_to_array(bb)), \
                            "resumed weights differ from the uninterrupted run (layer %s)" \
                            % la.name
            if resume.get("resumed_solverstate_identical"):
                assert (a_state.iter, a_state.current_step) == (b_state.iter,
                                                                b_state.current_step)
                assert len(a_state.history) == len(b_state.history)
                for ha, hb in zip(a_state.history, b_state.history):
                    assert np.array_equal(blobproto_to_array(ha), blobproto_to_array(hb)), \
                        "resumed solver history differs from the uninterrupted run"
