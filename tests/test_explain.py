"""`python scripts/explain.py` through its Hydra entry point, as a user runs it (in this process:
the bad-input sweep of tests/test_bad_input.py runs it as a real subprocess)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_in_process

from fmnist import explain
from fmnist.errors import UserError

COAT_Q = "[0.1058,0.1043,0.0988,0.1066,0.0875,0.0881,0.1027,0.1046,0.1057,0.0958]"


def run_explain(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_in_process("scripts/explain.py", *overrides, cwd=cwd)


def test_default_example_step_by_step(tmp_path):
    result = run_explain(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "[0.0391, 0.1753, 0.7856]",
        "[0.0166, 0.0746, 0.9088]",
        "one-hot target p = [0, 1, 0]",
        "one-hot target p = [0, 0, 1]",
        "-(0*log(0.0391)+1*log(0.1753)+0*log(0.7856)) = 1.7413",
        "-(0*log(0.0166)+0*log(0.0746)+1*log(0.9088)) = 0.0956",
        "x - max = [-3, -1.5, 0]",
    ):
        assert text in out
    mean_line = next(line for line in out.splitlines() if line.startswith("Mean loss"))
    torch_line = next(line for line in out.splitlines() if "torch.nn.CrossEntropyLoss" in line)
    assert mean_line.endswith(": 0.9185") and torch_line.endswith(": 0.9185")
    assert "They agree: yes" in out
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_probabilities_of_the_coat_example(tmp_path):
    result = run_explain(f"probs={COAT_Q}", "target=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    expansion = (
        "-(0*log(0.1058)+0*log(0.1043)+0*log(0.0988)+0*log(0.1066)+1*log(0.0875)"
        "+0*log(0.0881)+0*log(0.1027)+0*log(0.1046)+0*log(0.1057)+0*log(0.0958)) = 2.4361"
    )
    assert expansion in out
    assert "-log(0.0875) = 2.4361" in out
    assert "target class 4 (Coat)" in out
    assert "4 Coat" in out and "9 Ankle boot" in out and "0 T-shirt/top" in out
    assert "torch.nn.NLLLoss()(log(q), target): 2.4361" in out
    assert "They agree: yes" in out
    assert list(tmp_path.iterdir()) == []


def test_a_certain_wrong_answer_costs_infinity_in_both_losses(tmp_path):
    result = run_explain("probs=[1,0]", "target=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "They agree: yes (both infinite)." in result.stdout and "nan" not in result.stdout


def test_a_quoted_target_is_an_index(tmp_path):
    quoted = run_explain("probs=[0.7,0.2,0.1]", "target='1'", cwd=tmp_path)
    plain = run_explain("probs=[0.7,0.2,0.1]", "target=1", cwd=tmp_path)
    assert quoted.returncode == 0, quoted.stderr
    assert quoted.stdout == plain.stdout


def test_custom_single_row_of_logits():
    result = run_explain("logits=[1,2,3]", "targets=0")
    assert result.returncode == 0, result.stderr
    q = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).tolist()
    expected = -math.log(q[0])  # 2.4076
    assert f"q = [{q[0]:.4f}, {q[1]:.4f}, {q[2]:.4f}]" in result.stdout
    assert f"1*log({q[0]:.4f})+0*log({q[1]:.4f})+0*log({q[2]:.4f})) = " in result.stdout
    assert f"Mean loss over 1 sample (exact per-sample losses {expected:.6f}): " in result.stdout
    assert f"{expected:.4f}" in result.stdout and "They agree: yes" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logits=[[1,2,3],[4,5]]", "targets=[0,1]"], "logits row 2 has 2 values but row 1 has 3"),
        (["logits=[1,2,3]", "targets=7"], "target 7 is out of range"),
        (["logits=[1,two,3]", "targets=0"], "logits must hold finite numbers, got 'two'"),
        (["probs=[0.5,0.6]", "target=0"], "probs sums to 1.1000, not 1"),
        (["probs=[0.5,0.5]", "logits=[1,2]", "target=0"], "give either logits"),
    ],
    ids=["ragged", "out-of-range", "not-a-number", "not-a-distribution", "both"],
)
def test_bad_input_is_one_line_error(overrides, message, tmp_path):
    result = run_explain(*overrides, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# Checks of the package function, for the input errors the script runs above don't cover.


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"logits": [1, 2, 3]}, "logits given without targets"),
        ({"probs": [0.2, 0.8]}, "probs given without target"),
        ({"targets": [0]}, "targets given without logits or probs"),
        ({"logits": [1, 2], "targets": 0, "target": 0}, "give the target classes once"),
        ({"logits": [1, 2, 3], "targets": [0, 1]}, "got 2 targets for 1 row"),
        ({"logits": [1, 2, 3], "targets": 1.5}, "targets must be whole class indices"),
        ({"logits": [1, 2, 3], "targets": True}, "targets must be whole class indices"),
        ({"logits": 5, "targets": 0}, "logits must be a list of numbers"),
        ({"logits": [[1], [2]], "targets": [0, 0]}, "at least 2 classes"),
        ({"logits": [1, float("inf")], "targets": 0}, "finite numbers"),
        ({"probs": [[0.5, 0.5], [-0.1, 1.1]], "target": [0, 1]}, "sample 2: probs has a negative"),
        ({"probs": [0.5, 0.5], "target": -1}, "target -1 is out of range"),
    ],
)
def test_bad_input_in_process(cfg, message):
    with pytest.raises(UserError, match=message):
        explain.explain(cfg)


def test_ten_logits_show_fashion_mnist_names_and_several_rows():
    logits = [[0.1 * c for c in range(10)], [1.0] * 10]
    text = explain.explain({"logits": logits, "targets": [9, 4]})
    assert "target class 9 (Ankle boot)" in text and "target class 4 (Coat)" in text
    assert "q = 0.1000  p = 1   <- target" in text  # uniform row, class 4
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor([9, 4]))
    assert f": {expected.item():.4f}" in text and "They agree: yes" in text


def test_example_is_used_only_when_nothing_is_given():
    text = explain.explain({"example": {"logits": [[0.0, 0.0]], "targets": [1]}})
    assert "-(0*log(0.5000)+1*log(0.5000)) = 0.6931" in text
    other = explain.explain(
        {"probs": [0.25, 0.75], "target": 1, "example": {"logits": [[0.0, 0.0]], "targets": [1]}}
    )
    assert "-log(0.7500) = 0.2877" in other and "0.6931" not in other
