"""Train one of the ported models on MNIST with gradient probes attached.

    python train.py --model cnn            # then: tensorboard --logdir runs

Per epoch: train/test loss and accuracy, the probes logged to TensorBoard every
``--log-every`` steps, and a pair scan of fixed test images. At the end a plain-words
summary, also written to ``<run-dir>/summary.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional

import torch

import models
from experiments.batches import batches, num_batches, to_float
from experiments.mnist import DataError, Split, load_mnist
from experiments.progress import Progress
from experiments.rundir import RunDirError, new_run_dir, write_json
from experiments.zero_grad_scan import describe, scan_zero_gradients
from models.losses import LOSSES
from models.optimizers import OPTIMIZERS, build_optimizer
from probes import ActivationStats, GradientStats, Monitor, TensorBoardSink


def train_epoch(model, optimizer, loss_fn, split: Split, batch_size: int, generator: torch.Generator,
                monitor: Monitor, device: torch.device, max_steps: Optional[int], label: str, compiled=None):
    """One pass over ``split``; returns (mean loss, accuracy) over the batches seen.

    ``compiled`` (``torch.compile(model)``) runs the steps between probe logs; logging steps
    run ``model`` itself, whose probe hooks would break the compiled graph.
    """
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    steps = num_batches(len(split), batch_size) if max_steps is None else max_steps
    progress = Progress(steps, label)
    for images, labels in batches(split, batch_size, generator):
        x, y = to_float(images).to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = (model if compiled is None or monitor.logging else compiled)(x)
        loss = loss_fn(logits, torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)).mean()
        loss.backward()
        optimizer.step()
        monitor.step(loss)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        progress.update()
        if progress.done >= steps:
            break
    progress.close()
    return float(total_loss) / seen, int(correct) / seen


@torch.no_grad()
def evaluate(model, loss_fn, split: Split, batch_size: int, device: torch.device):
    """Mean loss and accuracy over ``split`` in inference mode."""
    model.eval()
    total, correct = 0.0, 0
    for images, labels in batches(split, max(batch_size, 500), shuffle=False):
        x, y = to_float(images).to(device), labels.to(device)
        logits = model(x)
        total += float(loss_fn(logits, torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)).sum())
        correct += int((logits.argmax(1) == y).sum())
    return total / len(split), correct / len(split)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2 (usage)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = _Parser(prog="train.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted(models.MODELS), help="which port to train")
    p.add_argument("--loss", choices=sorted(LOSSES), help="keras (=keras2): clipped probabilities, the "
                   "question's; logits (=keras3): from logits (default: the model's original)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the model's original, cnn: 2)")
    p.add_argument("--train-size", type=positive_int, help="use the first N training images (default: all 60000)")
    p.add_argument("--test-size", type=positive_int, help="evaluate on the first N test images (default: all 10000)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the original's, cnn: 128)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default: the original's, cnn: adadelta)")
    p.add_argument("--lr", type=float, help="learning rate (default: the original's, cnn: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, dropout and batch order (default: 0)")
    p.add_argument("--log-every", type=positive_int, default=100, help="probe logging interval in steps (default: 100)")
    p.add_argument("--scan-images", type=int, default=1000, help="test images in the per-epoch pair scan (default: 1000)")
    p.add_argument("--scan-norm-images", type=int, default=16,
                   help="of those, how many also get per-layer gradient norms (default: 16)")
    p.add_argument("--data-dir", help="MNIST folder (default: $MNIST_DIR, else ./data)")
    p.add_argument("--run-dir", help="where to write logs (default: runs/<model>-<time>, never overwritten)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the steps between probe logs "
                   "(default: off; ~1.4x faster steps on a CPU after ~25 s of compiling, see bench/RESULTS.md)")
    p.add_argument("--dry-run", action="store_true", help="two steps per epoch and a tiny scan: checks the setup")
    args = p.parse_args(argv)
    recipe = models.RECIPES[args.model]
    for key in ("loss", "epochs", "batch_size", "optimizer", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(recipe, key))
    if args.dry_run:
        args.scan_images, args.scan_norm_images = min(args.scan_images, 8), min(args.scan_norm_images, 2)
    return args


def subset(split: Split, n: Optional[int]) -> Split:
    return split if n is None else Split(split.images[:n], split.labels[:n])


def run(args: argparse.Namespace) -> Dict:
    data = load_mnist(args.data_dir)
    train_split, test_split = subset(data["train"], args.train_size), subset(data["test"], args.test_size)
    if args.batch_size > len(train_split):
        raise DataError(f"--batch-size {args.batch_size} is larger than the {len(train_split)} training images")
    run_dir = new_run_dir(args.model, args.run_dir)
    write_json(run_dir / "args.json", vars(args))
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = models.build(args.model).to(device)
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr)
    loss_fn = LOSSES[args.loss]["categorical"]
    generator = torch.Generator().manual_seed(args.seed)
    sink = TensorBoardSink(str(run_dir))
    monitor = Monitor([ActivationStats(), GradientStats()], sink=sink, every=args.log_every)
    compiled = torch.compile(model) if args.compile else None
    scan_images = to_float(test_split.images[: args.scan_images]).to(device)
    print(f"run directory: {run_dir}")
    history, scan = [], None
    start = time.time()
    try:
        with monitor.attach(model):
            for epoch in range(1, args.epochs + 1):
                train_loss, train_acc = train_epoch(model, optimizer, loss_fn, train_split, args.batch_size, generator,
                                                    monitor, device, 2 if args.dry_run else None,
                                                    f"epoch {epoch}/{args.epochs}", compiled)
                test_loss, test_acc = evaluate(model, loss_fn, test_split, args.batch_size, device)
                step = monitor.global_step
                for tag, value in (("train_loss", train_loss), ("train_accuracy", train_acc),
                                   ("test_loss", test_loss), ("test_accuracy", test_acc)):
                    sink.writer.add_scalar(f"epoch/{tag}", value, step)
                scan = scan_zero_gradients(model, scan_images, loss_fn, norms_for=args.scan_norm_images)
                log_scan(sink, scan, step)
                history.append(dict(epoch=epoch, step=step, train_loss=train_loss, train_accuracy=train_acc,
                                    test_loss=test_loss, test_accuracy=test_acc))
                print(f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                      f"test loss {test_loss:.4f} acc {test_acc:.4f} | pair scan: "
                      f"{describe(scan['facts'], args.loss)}")
    finally:
        monitor.flush()
        sink.close()
    summary = {
        "model": args.model, "loss": args.loss, "epochs": args.epochs, "steps": monitor.global_step,
        "test_accuracy": history[-1]["test_accuracy"], "test_loss": history[-1]["test_loss"],
        "seconds": round(time.time() - start, 2), "history": history,
        "pair_scan": scan["facts"], "pair_scan_text": describe(scan["facts"], args.loss),
    }
    write_json(run_dir / "summary.json", summary)
    sink = TensorBoardSink(str(run_dir))
    sink.text("summary", summary["pair_scan_text"], monitor.global_step)
    sink.close()
    print(f"summary: {summary['pair_scan_text']}")
    print(f"written: {run_dir / 'summary.json'}; view with: tensorboard --logdir {run_dir}")
    return summary


def log_scan(sink: TensorBoardSink, scan: Dict, step: int) -> None:
    """Pair-scan facts as scalars, the target-probability spread and norms as histograms."""
    w = sink.writer
    w.add_scalar("pair_scan/all_zero_fraction", scan["facts"]["all_zero_fraction"], step)
    w.add_scalar("pair_scan/clipped_fraction", scan["facts"]["clipped"] / scan["facts"]["pairs"], step)
    w.add_histogram("pair_scan/log10_target_prob", scan["target_prob"].clamp_min(1e-45).log10().cpu(), step)
    for layer, norms in scan["result"].layer_norms.items():
        w.add_histogram(f"pair_scan_grad_norm/{layer}", norms.cpu(), step)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, RunDirError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; what was logged so far is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
