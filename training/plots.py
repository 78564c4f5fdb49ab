"""Training curves as a PNG: loss and accuracy per epoch, train against validation."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training.files import write_atomically  # noqa: E402


def training_curves(history, path, title=""):
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax_acc.plot(epochs, [100 * row["train_acc"] for row in history], label="train")
    if "val_loss" in history[0]:
        ax_loss.plot(epochs, [row["val_loss"] for row in history], label="validation")
        ax_acc.plot(epochs, [100 * row["val_acc"] for row in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_figure(fig, path, dpi=100):
    """A PNG that a reader (the MLflow UI, a browser refreshing the run folder) only ever sees whole; closes `fig`."""
    try:
        write_atomically(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
