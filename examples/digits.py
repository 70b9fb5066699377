"""Handwritten digits: a 64-32-10 network with softmax cross-entropy and Adam.

scikit-learn's bundled `load_digits` (1797 images of 8×8 pixels, no
download), one-hot targets, a stratified train/test split. The output layer
is linear (logits); gc.softmax_cross_entropy(logits, y) = logsumexp(logits)
− Σ y·logits is the per-sample loss, and the predicted class is the argmax
of the logits.

    python examples/digits.py
"""

import numpy as np
from _common import SMALL, pyplot, save

import gradc as gc


def main():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("scikit-learn is not installed: this example needs its bundled digits data")
        return

    digits = load_digits()
    X = digits.data / 16.0  # pixel values 0..16 -> 0..1
    labels = digits.target
    Y = np.eye(10)[labels]  # one-hot
    X_tr, X_te, Y_tr, _, l_tr, l_te = train_test_split(
        X, Y, labels, test_size=0.25, stratify=labels, random_state=0
    )

    net = gc.Sequential(gc.Dense(64, 32, gc.tanh), gc.Dense(32, 10))
    prog = gc.compile(net, loss=gc.softmax_cross_entropy)
    params = prog.init(seed=0)

    epochs = 8 if SMALL else 30
    hist = prog.fit(
        params, X_tr, Y_tr, optimizer=gc.Adam(lr=0.01), epochs=epochs, batch_size=32, seed=0
    )

    def accuracy(X, labels):
        return float(np.mean(prog.predict(params, X).argmax(axis=1) == labels))

    print(
        f"{len(X_tr)} training and {len(X_te)} test images; {epochs} epochs, "
        f"{len(hist.loss)} Adam updates (lr 0.01, batch 32)"
    )
    print(
        f"cross-entropy: first epoch {hist.epoch_loss[0]:.4f}, last epoch {hist.epoch_loss[-1]:.4f}"
    )
    print(f"train accuracy: {accuracy(X_tr, l_tr):.4f}")
    print(f"test accuracy: {accuracy(X_te, l_te):.4f}")

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        np.arange(1, len(hist.loss) + 1),
        hist.loss,
        lw=0.5,
        alpha=0.5,
        label="mini-batch loss (per update)",
    )
    per_epoch = len(hist.loss) / epochs
    ax.plot(
        per_epoch * np.arange(1, epochs + 1), hist.epoch_loss, marker=".", lw=2, label="epoch mean"
    )
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("softmax cross-entropy")
    ax.set_title(f"digits, 64-32-10: test accuracy {accuracy(X_te, l_te):.1%}")
    ax.legend()
    save(fig, "digits")


if __name__ == "__main__":
    main()
