"""What the terminal shows: the bar (loss, rate, ETA), the run's time forecast, the thread choice.
Time comes from a fake clock and the machine's load from an argument: nothing here depends on timing."""
import io

import pytest

from experiments import threads
from experiments.progress import Forecast, Progress, duration


class Clock:
    """A clock that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 100.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Loss:
    """The loss callable train_epoch passes: counts how often the bar reads it (a device sync each)."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return 0.5 / self.reads


def test_log_lines_show_loss_rate_and_eta():
    out, loss = io.StringIO(), Loss()
    progress = Progress(20, "epoch 1/2", out, loss=loss, clock=Clock(0.5))  # read once a step: 0.5 s a step
    for _ in range(20):
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and loss.reads == 3  # the first step, half way, the end: the loss read 3 times
    first, half, last = lines
    assert first.startswith("epoch 1/2 [") and " 1/20 " in first and "loss 0.5000" in first
    assert "2.0 it/s" in first and "eta 0:10" in first
    assert " 10/20 " in half and "loss 0.2500" in half and "eta 0:05" in half
    assert " 20/20 " in last and "took 0:10" in last and "eta" not in last


def test_slow_steps_show_seconds_per_step():
    out = io.StringIO()
    progress = Progress(4, "epoch 1/1", out, clock=Clock(2.5))
    progress.update()
    assert "2.50 s/it" in out.getvalue() and "eta 0:08" in out.getvalue() and "loss" not in out.getvalue()


def test_terminal_bar_reads_the_loss_at_most_five_times_a_second():
    out, loss = Tty(), Loss()
    progress = Progress(1000, "epoch 1/1", out, loss=loss, clock=Clock(0.01))  # 100 steps a second
    for _ in range(1000):
        progress.update()
    progress.close()
    # 1000 steps over 10 s of fake time: ~5 reads a second (~50), not one a step
    assert 45 <= loss.reads <= 55
    assert out.getvalue().count("\r") == loss.reads and out.getvalue().endswith("\n")
    assert "it/s" in out.getvalue().split("\r")[-1] and "loss" in out.getvalue().split("\r")[-1]


def test_several_models_show_one_loss_each_and_say_keeps_the_bar():
    out = Tty()
    progress = Progress(10, "epoch 1/1", out, loss=lambda: "0.4000/0.3000", clock=Clock(1.0))
    progress.update()
    said = io.StringIO()
    progress.say("time: ...", said)
    assert said.getvalue() == "time: ...\n"
    cleared, _, redrawn = out.getvalue().rpartition("\r\x1b[K")  # the bar's line cleared before the text,
    assert cleared and redrawn.startswith("epoch 1/1 [") and "loss 0.4000/0.3000" in redrawn  # drawn again after


def test_forecast_says_once_how_long_the_run_takes():
    clock = Clock(0.0)
    forecast = Forecast(steps=938, epochs=2, batch_size=128, test_images=10000, skip=2, measure=8,
                        note="1 torch thread, load average 3.0 on 2 cores", clock=clock)
    lines = []
    for _ in range(30):
        clock.now += 0.5  # each step takes 0.5 s
        lines.append(forecast.step())
    said = [line for line in lines if line]
    assert len(said) == 1 and lines[9] == said[0]  # after step 10, once
    (line,) = said
    # 928 steps left x 0.5 s = 7:44; evaluation: 2 epochs x 10000/128 batches x 0.5/3 s = 0:26
    assert "0.50 s a step (steps 3-10)" in line and "928 steps 7:44" in line and "evaluation ~0:26" in line
    assert "about 8:10 more" in line and line.endswith("(1 torch thread, load average 3.0 on 2 cores)")


def test_forecast_says_nothing_for_a_run_shorter_than_its_measurement():
    forecast = Forecast(steps=4, epochs=2, batch_size=128, test_images=100, clock=Clock(1.0))
    assert [forecast.step() for _ in range(4)] == ["", "", "", ""]


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3725, "1:02:05")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_busy_machine_gets_fewer_threads_and_a_warning():
    choice = threads.choose(None, default=2, load=3.4, cores=2, env={})
    assert choice.threads == 1
    assert "busy" in choice.message and "load average 3.4 on 2 cores" in choice.message
    assert "--threads" in choice.message and "OMP_NUM_THREADS" in choice.message
    choice = threads.choose(None, default=8, load=5.2, cores=8, env={})
    assert choice.threads == 3 and "using 3" in choice.message  # 8 cores, 5.2 busy: 3 free (2.8 rounded)
    assert threads.choose(None, default=2, load=0.6, cores=2, env={}).threads == 1  # 1.4 free: 1


def test_idle_machine_keeps_torchs_default_silently():
    assert threads.choose(None, default=2, load=0.3, cores=2, env={}) == (2, "", 0.3, 2)
    assert threads.choose(None, default=1, load=5.0, cores=2, env={}).message == ""  # one thread: nothing fewer


def test_users_choice_is_kept_with_a_warning_when_too_many():
    choice = threads.choose(4, default=2, load=3.2, cores=4, env={})
    assert choice.threads == 4 and "--threads 4 asks for 4 threads" in choice.message and "1 free" in choice.message
    assert threads.choose(1, default=2, load=3.0, cores=2, env={}).message == ""
    choice = threads.choose(None, default=2, load=3.0, cores=2, env={"OMP_NUM_THREADS": "2"})
    assert choice.threads == 2 and "OMP_NUM_THREADS=2" in choice.message
    assert threads.choose(None, default=1, load=3.0, cores=2, env={"OMP_NUM_THREADS": "1"}).message == ""
