"""Train one of the ported models on MNIST with gradient probes attached.

    python train.py --model cnn            # then: tensorboard --logdir runs
    python train.py --model deep-sigmoid   # also deep-relu, dense-mlp, scaled-conv [--variant N | --compare]

Per epoch: train/test loss and accuracy, the probes logged to TensorBoard every
``--log-every`` steps, and what the model's question needs (experiments/study.py: the
cnn's pair scan, weight change, frozen weights, update ratios). At the end a plain-words
summary, also written to ``<run-dir>/summary.json`` and to TensorBoard, with plots.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Dict, List, Optional

import torch

import models
from experiments.batches import batches, num_batches
from experiments.findings import as_json, as_text, findings_for
from experiments.mnist import DataError, Split, load_mnist
from experiments.progress import Progress
from experiments.rundir import RunDirError, new_run_dir, write_json
from experiments.study import Run, study_for
from models.keras_weights import KerasWeightsError
from experiments.tasks import TASKS, Task
from models.losses import LOSSES
from models.optimizers import OPTIMIZERS
from probes import TensorBoardSink, suspended
from probes.records import HostScalar


def train_epoch(runs: List[Run], task: Task, loss_fn, split: Split, batch_size: int, generator: torch.Generator,
                device: torch.device, max_steps: Optional[int], label: str) -> List[tuple]:
    """One pass over ``split``, every run stepping on the same batches; (mean loss, accuracy) per run."""
    for run in runs:
        run.model.train()
    total_loss = [torch.zeros((), device=device) for _ in runs]
    correct = [torch.zeros((), device=device, dtype=torch.long) for _ in runs]
    seen, units = 0, 0
    steps = num_batches(len(split), batch_size) if max_steps is None else max_steps
    progress = Progress(steps, label)
    for images, labels in batches(split, batch_size, generator):
        x, target = task.batch(images, labels, device)
        for i, run in enumerate(runs):
            run.optimizer.zero_grad(set_to_none=True)
            output = run.model(x)
            loss = loss_fn(output, target).mean()  # Keras: mean over examples (and pixels)
            loss.backward()
            run.optimizer.step()
            run.monitor.step(loss)
            total_loss[i] += loss.detach() * len(x)
            correct[i] += task.count_correct(output.detach(), target)
        seen, units = seen + len(x), units + task.units(target)
        progress.update()
        if progress.done >= steps:
            break
    progress.close()
    return [(float(t) / seen, int(c) / units) for t, c in zip(total_loss, correct)]


@torch.no_grad()
def evaluate(model, task: Task, loss_fn, split: Split, batch_size: int, device: torch.device):
    """Mean loss and accuracy over ``split`` in inference mode, with the probes silent."""
    model.eval()
    total, correct, units = 0.0, 0, 0
    with suspended():
        for images, labels in batches(split, max(batch_size, 500), shuffle=False):
            x, target = task.batch(images, labels, device)
            output = model(x)
            total += float(loss_fn(output, target).reshape(len(x), -1).mean(1).sum())
            correct += int(task.count_correct(output, target))
            units += task.units(target)
    return total / len(split), correct / units


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
    g = p.add_argument_group("training (defaults: the model's original recipe, models/__init__.py RECIPES)")
    g.add_argument("--loss", choices=sorted(LOSSES), help="keras (=keras2): clipped probabilities, as Keras 2; "
                   "logits (=keras3): from logits (default: the original's: keras, deep-*: logits)")
    g.add_argument("--epochs", type=positive_int, help="epochs (default: the original's, cnn: 2, others: 1)")
    g.add_argument("--batch-size", type=positive_int, help="batch size (default: cnn 128, deep-* 100, "
                   "dense-mlp 128, scaled-conv 32)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default: cnn adadelta, deep-* momentum, "
                   "dense-mlp rmsprop, scaled-conv adam; all as Keras 2 / Theano ran them)")
    g.add_argument("--lr", type=float, help="learning rate (default: cnn 1.0, deep-* 0.01, dense-mlp 0.001, "
                   "scaled-conv 0.001)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, dropout and batch order (default: 0)")
    g = p.add_argument_group("scaled-conv")
    g.add_argument("--variant", type=int, choices=(1, 2, 3), help="which parameterisation to train (default: 1)")
    g.add_argument("--compare", action="store_true", help="train variants 1, 2, 3 from the same start on the "
                   "same batches, logged side by side (default: off)")
    g = p.add_argument_group("data and logging")
    g.add_argument("--train-size", type=positive_int, help="use the first N training images (default: all 60000)")
    g.add_argument("--test-size", type=positive_int, help="evaluate on the first N test images (default: all "
                   "10000; 1000 with --dry-run)")
    g.add_argument("--log-every", type=positive_int, default=100, help="probe logging interval in steps (default: 100)")
    g.add_argument("--scan-images", type=int, default=1000, help="cnn: test images in the per-epoch pair scan "
                   "(default: 1000)")
    g.add_argument("--scan-norm-images", type=int, default=16,
                   help="cnn: of those, how many also get per-layer gradient norms (default: 16)")
    g.add_argument("--data-dir", help="MNIST folder (default: $MNIST_DIR, else ./data)")
    g.add_argument("--run-dir", help="where to write logs (default: runs/<model>-<time>, never overwritten)")
    g.add_argument("--init-from-keras", metavar="FILE", help="start from Keras weights: an .npz of get_weights(), "
                   "or a .weights.h5/.keras/.h5 file with h5py installed (default: fresh Keras-style init)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available)")
    g.add_argument("--dry-run", action="store_true", help="two steps per epoch and a tiny scan: checks the setup")
    args = p.parse_args(argv)
    if args.model != "scaled-conv" and (args.variant is not None or args.compare):
        p.error("--variant and --compare apply to --model scaled-conv only")
    if args.variant is not None and args.compare:
        p.error("--compare trains all three variants; leave out --variant")
    if args.init_from_keras and args.compare:
        p.error("--init-from-keras starts one model; it cannot be combined with --compare")
    recipe = models.RECIPES[args.model]
    for key in ("loss", "epochs", "batch_size", "optimizer", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(recipe, key))
    args.task = recipe.task
    if args.model == "scaled-conv" and not args.compare:
        args.variant = args.variant or 1
    if args.dry_run:
        args.scan_images, args.scan_norm_images = min(args.scan_images, 8), min(args.scan_norm_images, 2)
        args.test_size = min(args.test_size or 1000, 1000)
    return args


def subset(split: Split, n: Optional[int]) -> Split:
    return split if n is None else Split(split.images[:n], split.labels[:n])


def keras_initial_state(args: argparse.Namespace) -> Optional[Dict[str, torch.Tensor]]:
    """Keras' weights for ``--init-from-keras``, converted and checked before any run directory
    exists, so a wrong file leaves nothing behind (models/keras_weights.py)."""
    if not args.init_from_keras:
        return None
    kwargs = {"variant": args.variant} if args.model == "scaled-conv" else {}
    return models.load_keras_weights(models.build(args.model, **kwargs), args.init_from_keras).state_dict()


def run(args: argparse.Namespace) -> Dict:
    data = load_mnist(args.data_dir)
    train_split, test_split = subset(data["train"], args.train_size), subset(data["test"], args.test_size)
    if args.batch_size > len(train_split):
        raise DataError(f"--batch-size {args.batch_size} is larger than the {len(train_split)} training images")
    keras_state = keras_initial_state(args)
    run_dir = new_run_dir(args.model, args.run_dir)
    write_json(run_dir / "args.json", vars(args))
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    task = TASKS[args.task]
    loss_fn = LOSSES[args.loss][task.loss_kind]
    study = study_for(args, train_split, test_split, device)
    sink = TensorBoardSink(str(run_dir))
    runs = study.make_runs(sink)
    if keras_state is not None:
        runs[0].model.load_state_dict(keras_state)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"run directory: {run_dir}")
    start = time.time()
    try:
        with contextlib.ExitStack() as attached:
            for r in runs:
                attached.enter_context(r.monitor.attach(r.model))
            for epoch in range(1, args.epochs + 1):
                results = train_epoch(runs, task, loss_fn, train_split, args.batch_size, generator, device,
                                      2 if args.dry_run else None, f"epoch {epoch}/{args.epochs}")
                step = runs[0].monitor.global_step
                for r, (train_loss, train_acc) in zip(runs, results):
                    test_loss, test_acc = evaluate(r.model, task, loss_fn, test_split, args.batch_size, device)
                    r.history.append(dict(epoch=epoch, step=step, train_loss=train_loss, train_accuracy=train_acc,
                                          test_loss=test_loss, test_accuracy=test_acc))
                    r.sink.write([HostScalar(f"epoch/{k}", step, v) for k, v in r.history[-1].items()
                                  if k not in ("epoch", "step")])
                    print(f"epoch {epoch}{' variant ' + r.label if r.label else ''}: train loss {train_loss:.4f} "
                          f"acc {train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f}")
                note = study.after_epoch(runs, step, sink)
                if note:
                    print(f"epoch {epoch}: {note}")
        facts, sentence = study.finish(runs, run_dir, sink)
        summary = {"model": args.model, "loss": args.loss, "epochs": args.epochs,
                   "steps": runs[0].monitor.global_step, "seconds": round(time.time() - start, 2)}
        if len(runs) == 1:
            summary.update(test_accuracy=runs[0].history[-1]["test_accuracy"],
                           test_loss=runs[0].history[-1]["test_loss"], history=runs[0].history)
        summary.update(facts, summary_text=sentence)
        findings = findings_for(runs, facts)  # the diagnosis (probes/diagnosis.py)
        summary["findings"] = as_json(findings)
        write_json(run_dir / "summary.json", summary)
        sink.text("summary", sentence, summary["steps"])
        sink.text("findings", as_text(findings).replace("\n", "  \n"), summary["steps"])  # markdown line breaks
    finally:
        for r in runs:
            r.monitor.flush()
        sink.close()
    print(f"summary: {sentence}")
    print(as_text(findings))
    print(f"written: {run_dir / 'summary.json'}; view with: tensorboard --logdir {run_dir}")
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, RunDirError, KerasWeightsError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; what was logged so far is kept", file=sys.stderr)
        return 130
    return 0


def cli() -> None:
    """Console entry point (``gradient-probes-train``), the same as ``python train.py``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
