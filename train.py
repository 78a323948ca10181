"""Train one of the ported models on MNIST with gradient probes attached.

    python train.py --model cnn            # then: tensorboard --logdir runs
    python train.py --model deep-sigmoid   # also deep-relu, dense-mlp, scaled-conv [--variant N | --compare]
    torchrun --nproc_per_node=2 train.py --model cnn   # DDP; README "Several processes"

Per epoch: train/test loss and accuracy, the probes logged to TensorBoard every
``--log-every`` steps, and what the model's question needs (experiments/studies.py: the
cnn's pair scan, weight change, frozen weights, update ratios). At the end a plain-words
summary, also written to ``<run-dir>/summary.json`` and to TensorBoard, with plots.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import models
from experiments import checkpoint
from experiments.batches import batches, num_batches
from experiments.checkpoint import ResumeError
from experiments.distributed import Context, setup, teardown
from experiments.findings import as_json, as_text, findings_for
from experiments.gradient_flow import GradientFlowSink
from experiments.mnist import DataError, Split, default_root, load_mnist
from experiments.progress import Forecast, Progress
from experiments import allocator, threads
from experiments.rundir import RunDirError, new_run_dir, write_json
from experiments.stopping import Guard, Interrupted, NonFiniteError, StopOnSignal
from experiments.run import Run
from experiments.studies import study_for
from models.keras_weights import KerasWeightsError
from experiments.tasks import TASKS, Task
from models.losses import LOSSES
from models.optimizers import OPTIMIZERS
from probes import NullSink, Sink, TensorBoardSink, suspended
from probes.distributed import reduce_state
from probes.records import HostScalar
from probes.stats import CLOSE_LOGS, MOMENTS_SAMPLE


def train_epoch(runs: List[Run], task: Task, loss_fn, split: Split, batch_size: int, generator: torch.Generator,
                device: torch.device, max_steps: Optional[int], label: str,
                ctx: Optional[Context] = None, after_step: Callable[[], None] = lambda: None,
                forecast: Optional[Forecast] = None) -> List[tuple]:
    """One pass over ``split``, every run stepping on the same batches; (mean loss, accuracy) per run.

    With several processes each rank trains on its slice of every batch (experiments/distributed.py).
    ``after_step`` runs between steps: it may raise to stop (signal, NaN/Inf). ``forecast``: told of
    every step, its one line (how long the run will take) is printed above the bar.
    The bar shows the epoch's mean loss so far: read from the device only when the bar prints
    (at most 5 times a second on a terminal, 3 times an epoch in a log), never per step.
    """
    ctx = ctx or Context(device=device)
    for run in runs:
        run.model.train()
    total_loss = [torch.zeros((), device=device) for _ in runs]
    correct = [torch.zeros((), device=device, dtype=torch.long) for _ in runs]
    seen, units = 0, 0
    steps = num_batches(len(split), batch_size) if max_steps is None else max_steps
    progress = Progress(steps, label, None if ctx.is_main else sys.stdout,  # other ranks: stdout is /dev/null
                        loss=lambda: "/".join(f"{float(t) / max(seen, 1):.4f}" for t in total_loss))
    for images, labels in batches(split, batch_size, generator):
        x, target = task.batch(ctx.shard(images), ctx.shard(labels), device)
        for i, run in enumerate(runs):
            run.optimizer.zero_grad(set_to_none=True)
            output = (run.net if run.net is not None else run.model)(x)  # (a compiled module has no truth value)
            loss = loss_fn(output, target).mean()  # Keras: mean over examples (and pixels)
            sentinel = run.monitor.get("nonfinite")
            if sentinel is not None:  # train.py's runs have one; a caller's monitor may not
                sentinel.check_loss(loss)
            objective = ctx.rank_loss(loss, len(x), len(images))  # `loss` itself on one process
            objective.backward()
            run.optimizer.step()
            run.monitor.step(objective)
            total_loss[i] += loss.detach() * len(x)
            correct[i] += task.count_correct(output.detach(), target)
        seen, units = seen + len(x), units + task.units(target)
        progress.update()
        line = forecast.step() if forecast is not None else ""
        if line and ctx.is_main:
            progress.say(line, sys.stdout)
        try:
            after_step()
        except BaseException:
            progress.close()  # end a redrawn bar's line before the message
            raise
        if progress.done >= steps:
            break
    progress.close()
    seen, units, *totals = ctx.sum(seen, units, *(float(t) for t in total_loss), *(int(c) for c in correct))
    return [(t / seen, c / units) for t, c in zip(totals[:len(runs)], totals[len(runs):])]


@torch.no_grad()
def evaluate(model, task: Task, loss_fn, split: Split, batch_size: int, device: torch.device,
             ctx: Optional[Context] = None):
    """Mean loss and accuracy over ``split`` in inference mode, with the probes silent
    (with several processes: each rank its share, summed)."""
    ctx = ctx or Context(device=device)
    n, split = len(split), ctx.shard_split(split)
    model.eval()
    total, correct, units = 0.0, 0, 0
    with suspended():
        for images, labels in batches(split, max(batch_size, 500), shuffle=False):
            x, target = task.batch(images, labels, device)
            output = model(x)
            total += float(loss_fn(output, target).reshape(len(x), -1).mean(1).sum())
            correct += int(task.count_correct(output, target))
            units += task.units(target)
    total, correct, units = ctx.sum(total, correct, units)
    return total / n, correct / units


def check_setup(runs: List[Run], task: Task, loss_fn, split: Split, batch_size: int, device: torch.device,
                show: bool = True) -> None:
    """probes.check of each run's model and loss on the first training batch, before any step
    (weights, buffers and random streams untouched): its findings join the diagnosis at the end."""
    x, target = task.batch(split.images[:batch_size], split.labels[:batch_size], device)
    for r in runs:
        found = r.monitor.check(lambda output, t: loss_fn(output, t).mean(), (x, target))
        if found and show:
            print(f"check{' variant ' + r.label if r.label else ''} (before training): {as_text(found)}", flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2 (usage)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def recipe_defaults(key: str) -> str:
    """One training flag's default for every model, from its recipe: "cnn 128, deep-sigmoid 100, ..."."""
    return ", ".join(f"{name} {getattr(spec.recipe, key)}" for name, spec in models.SPECS.items())


def model_list() -> str:
    """The end of --help: each model with its one line from models.SPECS."""
    width = max(map(len, models.SPECS))
    return "models:\n" + "\n".join(
        textwrap.fill(spec.help, 79, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4),
                      break_on_hyphens=False)
        for name, spec in models.SPECS.items())


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = _Parser(prog="train.py", description=__doc__.splitlines()[0], epilog=model_list(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(models.SPECS), help="which port to train (required, except with "
                   "--resume; listed below)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint, with the "
                   "arguments it was started with (default: start a new run)")
    p.add_argument("--keep-going", action="store_true", help="train on after a NaN/Inf appears, instead of stopping "
                   "with the last good checkpoint (default: stop)")
    g = p.add_argument_group("training (defaults: the model's original recipe, models/registry.py)")
    g.add_argument("--loss", choices=sorted(LOSSES), help="keras (=keras2): clipped probabilities, as Keras 2; "
                   f"logits (=keras3): from logits (default: {recipe_defaults('loss')})")
    g.add_argument("--epochs", type=positive_int, help=f"epochs (default: {recipe_defaults('epochs')})")
    g.add_argument("--batch-size", type=positive_int, help=f"batch size (default: {recipe_defaults('batch_size')})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=f"optimizer (default: {recipe_defaults('optimizer')}; "
                   "all as Keras 2 / Theano ran them)")
    g.add_argument("--lr", type=positive_float, help=f"learning rate (default: {recipe_defaults('lr')})")
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
    g.add_argument("--scan-images", type=nonnegative_int, default=1000, help="cnn: test images in the per-epoch "
                   "pair scan (default: 1000)")
    g.add_argument("--scan-norm-images", type=nonnegative_int, default=16,
                   help="cnn: of those, how many also get per-layer gradient norms (default: 16)")
    g.add_argument("--data-dir", help="MNIST folder (default: $MNIST_DIR, else ./data)")
    g.add_argument("--run-dir", help="where to write logs (default: runs/<model>-<time>, never overwritten)")
    g.add_argument("--init-from-keras", metavar="FILE", help="start from Keras weights: an .npz of get_weights(), "
                   "or a .weights.h5/.keras/.h5 file with h5py installed (default: fresh Keras-style init)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available)")
    g.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's own, one a core; "
                   "fewer when the machine is busier than its cores, said when it happens; experiments/threads.py)")
    g.add_argument("--malloc", choices=allocator.CHOICES, default="reuse",
                   help="reuse: keep freed memory for the next step (glibc's mmap and trim thresholds raised; a "
                        "cnn step ~15-20%% faster on a CPU, no number changes; experiments/allocator.py); "
                        "system: glibc's defaults (default: reuse)")
    g.add_argument("--compile", action="store_true",
                   help="run the training steps through torch.compile (default: off). The probes' per-step hooks "
                        "compile into the graph as tensor updates; logging steps run eagerly; the first steps "
                        "pay for the compilation (README, torch.compile)")
    g.add_argument("--dry-run", action="store_true", help="two steps per epoch and a tiny scan: checks the setup")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"argument --device: not a torch device: {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"argument --device: {args.device} asked for, but torch sees no CUDA device")
    if args.resume is not None:
        given = checkpoint.given_options(p, argv)
        extra = [f"--{dest.replace('_', '-')}" for dest in given if dest not in checkpoint.RESUME_MAY_GIVE]
        if extra:
            p.error(f"--resume goes on with the run's own arguments (its args.json); leave out {' '.join(extra)}")
        if "device" not in given:
            args.device = None  # the run's own device, not this machine's default
        return args
    if args.model is None:
        p.error("the following arguments are required: --model")
    if args.model != "scaled-conv" and (args.variant is not None or args.compare):
        p.error("--variant and --compare apply to --model scaled-conv only")
    if args.variant is not None and args.compare:
        p.error("--compare trains all three variants; leave out --variant")
    if args.init_from_keras and args.compare:
        p.error("--init-from-keras starts one model; it cannot be combined with --compare")
    recipe = models.SPECS[args.model].recipe
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


def resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """``--resume DIR``: the run's own arguments, with the few a resume may change."""
    saved = checkpoint.resume_args(args.resume, args.model)
    saved.resume, saved.run_dir, saved.keep_going = args.resume, args.resume, args.keep_going
    saved.threads = getattr(args, "threads", None)  # this machine's, now: chosen afresh, not the saved run's
    saved.malloc = getattr(args, "malloc", "reuse")  # this process's, as given now
    for key in ("data_dir", "device"):  # another machine may keep the data elsewhere
        if getattr(args, key) is not None:
            setattr(saved, key, getattr(args, key))
    if torch.device(saved.device).type == "cuda" and not torch.cuda.is_available():
        raise ResumeError(f"--resume {args.resume}: that run trained on {saved.device} and torch sees no CUDA "
                          f"device here; add --device cpu (it goes on, though not bit for bit)")
    return saved


def use_threads(requested: Optional[int], show: bool = True) -> threads.Choice:
    """Set torch's CPU threads for this run (experiments/threads.py says the rule) and say why
    when the choice is not torch's own or the machine is busier than its cores."""
    chosen = threads.choose(requested, torch.get_num_threads())
    if chosen.threads != torch.get_num_threads():
        torch.set_num_threads(chosen.threads)
    if chosen.message and show:
        print(chosen.message, file=sys.stderr, flush=True)
    return chosen


def log_epoch(r: Run) -> None:
    r.sink.write([HostScalar(f"epoch/{k}", r.history[-1]["step"], v) for k, v in r.history[-1].items()
                  if k not in ("epoch", "step")])


def run(args: argparse.Namespace, ctx: Optional[Context] = None) -> Dict:
    ctx = ctx or Context(device=torch.device(args.device))
    resuming = getattr(args, "resume", None) is not None
    data = load_mnist(args.data_dir)
    train_split, test_split = subset(data["train"], args.train_size), subset(data["test"], args.test_size)
    if args.train_size is not None and args.train_size > len(train_split):
        raise DataError(f"--train-size {args.train_size} is more than the {len(train_split)} training images")
    if args.test_size is not None and args.test_size > len(test_split):
        raise DataError(f"--test-size {args.test_size} is more than the {len(test_split)} test images")
    if args.batch_size > len(train_split):
        raise DataError(f"--batch-size {args.batch_size} is larger than the {len(train_split)} training images")
    ctx.check_batches(len(train_split), args.batch_size)
    device = ctx.device
    if resuming:
        run_dir = Path(args.resume)
        saved = checkpoint.load(run_dir, device)  # read and checked before anything is written
    else:
        keras_state = keras_initial_state(args)
        run_dir = new_run_dir(args.model, args.run_dir) if ctx.is_main else None  # only rank 0 writes
        if ctx.is_main:
            # the data folder as found (from $MNIST_DIR too): `--resume DIR` then works verbatim in any shell
            saved_args = {k: v for k, v in vars(args).items() if k != "resume"}
            saved_args["data_dir"] = str(default_root(args.data_dir).resolve())
            write_json(run_dir / "args.json", saved_args)
    # after the checks of the input (an error stays one line), before the models are built
    chosen = use_threads(getattr(args, "threads", None), ctx.is_main)
    malloc = allocator.use(getattr(args, "malloc", "reuse"))  # before the models' first steps allocate
    torch.manual_seed(args.seed)
    task = TASKS[args.task]
    loss_fn = LOSSES[args.loss][task.loss_kind]
    study = study_for(args, train_split, test_split, device)
    # A resume redoes the steps after the checkpoint: TensorBoard hides what was logged there before.
    sink: Sink = (TensorBoardSink(str(run_dir), purge_step=saved["step"] if resuming else None) if ctx.is_main
                  else NullSink())
    if ctx.is_main:  # the gradient-flow picture of each logging step (experiments/gradient_flow.py)
        sink = GradientFlowSink(sink, path=run_dir / "gradient_flow.png")
    runs = study.make_runs(sink)
    if isinstance(sink, GradientFlowSink):
        sink.order = [name for name, _ in runs[0].model.named_parameters()]  # input to output
    study.pin_dashboard(runs, sink)  # the question's charts first on TensorBoard's Custom Scalars tab
    if not resuming and keras_state is not None:
        runs[0].model.load_state_dict(keras_state)
    for r in runs:
        r.net = ctx.wrap(r.model)  # several processes: DDP, starting every rank from rank 0's weights
        if getattr(args, "compile", False):  # lazy: traced at the first step, once the probes below are attached
            r.net = torch.compile(r.net)
    ctx.seed_dropout(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"run directory: {run_dir}", flush=True)
    if args.log_every < CLOSE_LOGS and device.type == "cpu":
        print(f"logging every {args.log_every} step(s): layer outputs and output gradients of more than "
              f"{MOMENTS_SAMPLE:,} elements are summarised from a sample of blocks (sums and norms estimated; "
              f"parameter gradients read whole); --log-every {CLOSE_LOGS} or more reads every element",
              flush=True)
    per_epoch = 2 if args.dry_run else num_batches(len(train_split), args.batch_size)
    epochs_left = args.epochs - (saved["epoch"] if resuming else 0)
    forecast = Forecast(per_epoch * epochs_left, epochs_left, args.batch_size, len(test_split),
                        note=f"{threads.describe(chosen)}, {malloc.message}" if device.type == "cpu" else str(device),
                        sync=(lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None))
    start, done, kept_step = time.time(), 0, 0  # the last checkpoint: after epoch `done`, at step `kept_step`
    try:
        with contextlib.ExitStack() as attached, StopOnSignal() as stop:
            for r in runs:
                attached.enter_context(r.monitor.attach(r.model))
            if resuming:
                checkpoint.restore_training(saved, runs)
                done, kept_step = saved["epoch"], saved["step"]
                if done:  # its epoch-end records sit at the purge step: log them again
                    with torch.random.fork_rng(devices=[]):
                        for r in runs:
                            log_epoch(r)
                        study.after_epoch(runs, saved["step"], sink)
                checkpoint.restore_streams(saved, runs, generator)
                print(f"resumed from {run_dir / checkpoint.CHECKPOINT}: after epoch {done}, step {saved['step']}",
                      flush=True)
            elif ctx.is_main:
                checkpoint.save(run_dir, runs, 0, generator)
            check_setup(runs, task, loss_fn, train_split, args.batch_size, device, ctx.is_main)
            guard = Guard(runs, stop, args.keep_going)
            for epoch in range(done + 1, args.epochs + 1):
                results = train_epoch(runs, task, loss_fn, train_split, args.batch_size, generator, device,
                                      2 if args.dry_run else None, f"epoch {epoch}/{args.epochs}", ctx,
                                      lambda: (guard(), study.after_step(runs, sink)), forecast=forecast)
                step = runs[0].monitor.global_step
                for r, (train_loss, train_acc) in zip(runs, results):
                    ctx.sync_buffers(r.model)  # every rank evaluates (and scans) rank 0's model
                    test_loss, test_acc = evaluate(r.model, task, loss_fn, test_split, args.batch_size, device, ctx)
                    r.history.append(dict(epoch=epoch, step=step, train_loss=train_loss, train_accuracy=train_acc,
                                          test_loss=test_loss, test_accuracy=test_acc))
                    log_epoch(r)
                    print(f"epoch {epoch}{' variant ' + r.label if r.label else ''}: train loss {train_loss:.4f} "
                          f"acc {train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f}", flush=True)
                note = study.after_epoch(runs, step, sink)
                if note:
                    print(f"epoch {epoch}: {note}", flush=True)
                for r in runs:
                    r.monitor.flush()
                if ctx.is_main:
                    checkpoint.save(run_dir, runs, epoch, generator)
                done, kept_step = epoch, step
                stop.check()
        for r in runs:
            reduce_state(r.monitor.probes)  # several processes: e.g. dead inputs over every rank's data
        if not ctx.is_main:
            return {}
        facts, sentence = study.finish(runs, run_dir, sink)
        summary = {"model": args.model, "loss": args.loss, "epochs": args.epochs,
                   "steps": runs[0].monitor.global_step, "seconds": round(time.time() - start, 2)}
        if len(runs) == 1:
            summary.update(test_accuracy=runs[0].history[-1]["test_accuracy"],
                           test_loss=runs[0].history[-1]["test_loss"], history=runs[0].history)
        summary.update(facts, summary_text=sentence)
        nonfinite = {r.label or "model": r.monitor["nonfinite"].summary() for r in runs
                     if r.monitor["nonfinite"].tripped}
        if nonfinite:
            summary["nonfinite"] = nonfinite
        if resuming:
            summary["resumed_after_epoch"] = saved["epoch"]
        findings = findings_for(runs, facts)  # the diagnosis (probes/diagnosis.py)
        summary["findings"] = as_json(findings)
        write_json(run_dir / "summary.json", summary)
        sink.text("summary", sentence, summary["steps"])
        sink.text("findings", as_text(findings).replace("\n", "  \n"), summary["steps"])  # markdown line breaks
    except (Interrupted, NonFiniteError) as exc:
        kept = (f"kept {run_dir / checkpoint.CHECKPOINT} from the end of epoch {done}" if done else
                f"kept {run_dir / checkpoint.CHECKPOINT} from before the first step")
        at = runs[0].monitor.global_step
        if isinstance(exc, Interrupted):
            steps = f"step {kept_step}" if at == kept_step + 1 else f"steps {kept_step}-{at - 1}"
            redo = f" (at step {kept_step}: {steps} will be redone)" if at > kept_step else ""
            raise Interrupted(exc.signum, f"{exc} at step {at}; {kept}{redo}; go on with: "
                              f"python train.py --resume {run_dir}") from None
        raise NonFiniteError(f"stopped: {exc}; {kept}, the last good one (to train on regardless: "
                             f"python train.py --resume {run_dir} --keep-going)") from None
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
    ctx, finished = None, False
    try:
        if args.resume:
            args = resumed_args(args)
        ctx = setup(args.device)  # torchrun: join the process group; else one process
        run(args, ctx)
        finished = True
    except (DataError, RunDirError, KerasWeightsError, ResumeError, NonFiniteError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("train.py: interrupted; what was logged so far is kept", file=sys.stderr)
        return 130
    finally:
        if ctx is not None:
            teardown(ctx, finished)
    return 0


def cli() -> None:
    """Console entry point (``gradient-probes-train``), the same as ``python train.py``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
