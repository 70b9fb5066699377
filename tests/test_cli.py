"""The gradc command line: compile, explain, fit, errors (demo and bench run elsewhere)."""

import os
import subprocess
import sys

import numpy as np
import pytest

SPEC = """
import sympy as sp
import gradc as gc

w, b, x, y = sp.symbols("w b x y")
spec = dict(objective=gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])
"""


def run(*args, cwd=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "gradc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "linreg.py"
    path.write_text(SPEC)
    return path


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("demo", "compile", "explain", "fit", "bench"):
        assert cmd in out.stdout


def test_compile_prints_the_report_and_emits_sources(spec_file, tmp_path):
    out = run("compile", str(spec_file), "--emit", str(tmp_path / "src"))
    assert out.returncode == 0, out.stderr
    assert "operations per sample" in out.stdout
    assert {p.name for p in (tmp_path / "src").iterdir()} >= {
        "forward.py",
        "backward.py",
        "update.py",
        "train.py",
    }


def test_explain_prints_the_gradients(spec_file):
    out = run("explain", str(spec_file))
    assert out.returncode == 0, out.stderr
    assert "∂L/∂w" in out.stdout and "∂L/∂b" in out.stdout
    assert "δx" not in out.stdout
    out = run("explain", str(spec_file), "--inputs")
    assert out.returncode == 0, out.stderr
    assert "δx" in out.stdout  # δ carried on to the data input


def test_fit_trains_and_saves_loadable_params(spec_file, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=50)
    Y = 3 * X - 0.5
    np.savez(tmp_path / "data.npz", X=X, Y=Y)
    out = run(
        "fit",
        str(spec_file),
        "--data",
        str(tmp_path / "data.npz"),
        "--epochs",
        "300",
        "--lr",
        "0.5",
        "--out",
        str(tmp_path / "p.npz"),
    )
    assert out.returncode == 0, out.stderr
    params = dict(np.load(tmp_path / "p.npz"))
    # least squares through the noiseless data: w = 3, b = -0.5
    assert float(params["w"]) == pytest.approx(3.0, abs=1e-3)
    assert float(params["b"]) == pytest.approx(-0.5, abs=1e-3)


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sympy as sp\nimport gradc as gc\nq = sp.Symbol('q')\nw = sp.Symbol('w')\nspec = dict(objective=w*q, params=[w])\n"
    )
    out = run("compile", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'q'" in lines[0] and "Traceback" not in out.stderr
    missing = run("explain", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "not found" in missing.stderr
