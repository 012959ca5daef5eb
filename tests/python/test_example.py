# SPDX-License-Identifier: Apache-2.0
"""examples/python/train_gpt.py runs (a few steps of each optimizer on a small text) and prints its table."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "train_gpt.py")


def test_train_gpt_example_runs(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--steps", "3", "--optimizers", "adamw,muon,namo_d", "--data", str(text)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("| optimizer | validation loss | seconds |")[1]
    for name in ("adamw", "muon", "namo_d"):
        assert f"| {name} |" in table
