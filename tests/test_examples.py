"""Run every script in examples/ at reduced size and check what it prints.

Each example runs once, in a subprocess, with GRADC_EXAMPLE_SMALL=1 (reduced
size), one BLAS thread and the Agg backend, writing its figure into a
temporary folder. The numbers an example prints are checked against an
independent reference where it has one (closed form, NumPy, lstsq, finite
differences), and every figure must be a readable PNG.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


def _env(out_dir, *paths):
    """Environment for an example: reduced size, one BLAS thread, Agg, gradc importable."""
    env = dict(os.environ)
    pythonpath = [*map(str, paths), str(ROOT), env.get("PYTHONPATH", "")]
    env.update(
        GRADC_EXAMPLE_SMALL="1",
        OPENBLAS_NUM_THREADS="1",
        MPLBACKEND="Agg",
        GRADC_EXAMPLE_OUT=str(out_dir),
        PYTHONPATH=os.pathsep.join(filter(None, pythonpath)),
    )
    return env


def _run_example(name, out_dir):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        cwd=ROOT,
        env=_env(out_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run(name) -> (stdout, folder of its figure) of examples/<name>.py.

    All examples start at once, a few at a time: most of their time is Numba
    compiling kernels, one core each, so two cores halve the wait.
    """
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = {}
        for name in NAMES:
            out_dir = tmp_path_factory.mktemp(name)
            jobs[name] = pool.submit(_run_example, name, out_dir), out_dir

        def _run(name):
            job, out_dir = jobs[name]
            proc = job.result()
            assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout}\n{proc.stderr}"
            return proc.stdout, out_dir

        yield _run


def grab(pattern, text):
    """The numbers captured by `pattern` (NUM groups) in `text`, as floats."""
    m = re.search(pattern, text)
    assert m, f"no line matching {pattern!r} in:\n{text}"
    return [float(v) for v in m.groups()]


def test_every_example_is_tested():
    assert set(NAMES) == {
        "bowl",
        "custom",
        "digits",
        "gd_variants",
        "linear_regression",
        "network_342",
        "vanishing_exploding",
    }


@pytest.mark.parametrize("name", NAMES)
def test_example_writes_a_png(run, name):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out, out_dir = run(name)
    path = out_dir / f"{name}.png"
    assert path.is_file(), out
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01  # not a blank canvas


def test_runs_without_matplotlib(tmp_path):
    # A package named matplotlib that refuses to import, first on the path.
    fake = tmp_path / "block" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib blocked for this test')\n")
    env = _env(tmp_path / "out", fake.parent)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "bowl.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "plot skipped" in proc.stdout
    assert not (tmp_path / "out" / "bowl.png").exists()


def test_bowl_matches_the_closed_form(run):
    out, _ = run("bowl")
    # The seed's printed trajectory, rounded to three places as it prints it.
    assert "P1:(-1.6,2.2)" in out and "P20:(-0.023,-0.954)" in out
    w1, w2 = grab(rf"P20 at full precision: w1 = {NUM}, w2 = {NUM}", out)
    # ∂J/∂w = (2w1, 2w2 + 2), η = 0.1: both distances to (0, −1) shrink by 0.8 per step.
    assert w1 == pytest.approx(-2 * 0.8**20, abs=1e-12)
    assert w2 == pytest.approx(-1 + 4 * 0.8**20, abs=1e-12)


def test_linear_regression_matches_lstsq(run):
    out, _ = run("linear_regression")
    (gerr,) = grab(rf"largest difference from the seed's formulas: {NUM}", out)
    assert gerr < 1e-10
    loss_gc, loss_seed = grab(rf"loss at \(0, 0\): gradc {NUM}, seed formula {NUM}", out)
    assert loss_gc == pytest.approx(loss_seed, rel=1e-9)
    w_gd, b_gd = grab(rf"gradient descent: w = {NUM}, b = {NUM}", out)
    w_ls, b_ls = grab(rf"numpy lstsq: +w = {NUM}, b = {NUM}", out)
    assert w_gd == pytest.approx(w_ls, abs=1e-6) and b_gd == pytest.approx(b_ls, abs=1e-6)
    assert w_ls == pytest.approx(3.0, abs=0.5) and b_ls == pytest.approx(2.0, abs=0.5)


def test_network_342_gradient_and_training(run):
    out, _ = run("network_342")
    assert "δ" in out or "delta" in out.lower()  # explain() shows the δ recursion
    (rel,) = grab(rf"hand-written NumPy backprop: largest relative difference {NUM}", out)
    assert rel < 1e-10
    (fd,) = grab(rf"finite differences \(gc.check_grad\): {NUM}", out)
    assert fd < 1e-5
    first, last, _ = grab(rf"first epoch {NUM}, last epoch {NUM}, on all data now {NUM}", out)
    assert last < 0.5 * first


def test_gd_variants_all_learn(run):
    out, _ = run("gd_variants")
    (start,) = grab(rf"starting loss {NUM}", out)
    rows = re.findall(rf"^(.+?)\s+(\d+)\s+{NUM}\s+{NUM}$", out, flags=re.M)
    finals = {label.strip(): float(final) for label, _, _, final in rows}
    assert set(finals) == {"BGD", "SGD (batch 1)", "mini-batch 32", "Momentum 32", "Adam 32"}
    updates = {label.strip(): int(u) for label, u, _, _ in rows}
    n_epochs = updates["BGD"]
    assert updates["SGD (batch 1)"] == 256 * n_epochs  # 256 samples at reduced size
    assert updates["mini-batch 32"] == 8 * n_epochs
    for label, final in finals.items():
        assert np.isfinite(final) and final < start, label
    # Per epoch, many small updates beat one full-batch update.
    assert finals["mini-batch 32"] < finals["BGD"]


def test_vanishing_and_exploding(run):
    out, _ = run("vanishing_exploding")
    (sig,) = grab(rf"sigmoid: last layer / first layer = {NUM}", out)
    (relu,) = grab(rf"relu: last layer / first layer = {NUM}", out)
    assert sig > 100 and relu < 100 and sig > 10 * relu
    assert re.search(r"no clipping: diverged -> gc.GradcError: .*step", out), out
    first, last = grab(rf"clip_norm=1.0: loss {NUM} -> {NUM}", out)
    assert np.isfinite(last) and last < first


def test_digits_accuracy(run):
    out, _ = run("digits")
    (acc,) = grab(rf"test accuracy: {NUM}", out)
    assert acc > 0.9


def test_custom_pieces_match_numpy(run):
    out, _ = run("custom")
    (fwd,) = grab(rf"swish forward vs NumPy: largest difference {NUM}", out)
    assert fwd < 1e-12
    gc_loss, np_loss = grab(rf"log-cosh loss: gradc {NUM}, NumPy {NUM}", out)
    assert gc_loss == pytest.approx(np_loss, rel=1e-9)
    (fd,) = grab(rf"\(gc.check_grad\): {NUM}", out)
    assert fd < 1e-5
    (step,) = grab(rf"one RMSProp step vs NumPy: largest difference {NUM}", out)
    assert step < 1e-10
    first, last, rmse = grab(
        rf"log-cosh loss {NUM} -> {NUM}; RMS distance to the curve "
        rf"on the inliers {NUM}",
        out,
    )
    assert last < first and rmse < 0.3
