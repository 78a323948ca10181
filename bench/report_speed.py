"""RESULTS.md's paragraphs on the speed ratios: the probes on a small model, the port against
plain torch, torch.compile with probes, and Keras. Each says what was measured at every thread
count, whether the goal is met, and, when it is not, what the measurement shows about why."""
from __future__ import annotations

from typing import Dict, List, Optional


def _s(spread: Optional[Dict], unit: str = "", digits: int = 3) -> str:
    if spread is None:
        return "not measured"
    return f"{spread['median']:.{digits}f}{unit} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f}, n={spread['n']})"


def _ms(spread: Dict) -> str:
    return f"{spread['median'] * 1e3:.2f} ms"


def _unmet(r: Dict, key: str) -> bool:
    return r["goals"].get(key, {}).get("met") is False


def _verdict(r: Dict, key: str) -> str:
    g = r["goals"].get(key) or {"met": None, "why": "not in this results.json"}
    if g["met"] is None:
        return f"not measured ({g.get('why', '')})"
    head = f"{r[key]:.3f}"
    where = r["details"]["cpu"]
    return (f"{head} (goal {g['goal']}: {'met' if g['met'] else '**not met**'}"
            + _threads_note(where, key) + ")")


def _threads_note(details: Dict, key: str) -> str:
    for section in details.values():
        if isinstance(section, dict) and f"{key}_threads" in section:
            n = section[f"{key}_threads"]
            return f"; the worse of the thread counts measured, here {n} thread{'s' if n != 1 else ''}"
    return ""


def _by_threads(section: Dict, fmt) -> str:
    return "; ".join(f"{n} thread{'s' if n != '1' else ''}: {fmt(v)}" for n, v in section.get("by_threads", {}).items())


def speed_sections(r: Dict) -> List[str]:
    cpu = r["details"]["cpu"]
    lines: List[str] = []
    small = cpu.get("small_model")
    if small:
        def small_fmt(v):
            if "error" in v:
                return f"failed ({v['error']})"
            st = v["step_seconds"]
            return (f"all probes {_s(v['probe_overhead_small_model'])}, train.py's probes {_s(v['train_py_probes_ratio'])}; "
                    f"steps {_ms(st['bare'])} bare, {_ms(st['all_probes'])} all probes, {_ms(st['train_py_probes'])} "
                    f"train.py's probes, i.e. {(st['all_probes']['median'] - st['bare']['median']) * 1e6:.0f} us a step "
                    "added by all probes (logging step included, averaged)")
        lines += [f"**Probes on a small model** ({small['method']}): `probe_overhead_small_model` "
                  f"{_verdict(r, 'probe_overhead_small_model')}. " + _by_threads(small, small_fmt) + ".", ""]
        if _unmet(r, "probe_overhead_small_model"):
            lines += ["Not met as measured: on a step this short, the fixed cost the probes add to every step (the "
                      "figure in microseconds above: hook calls, the per-step probes' work, the monitor's step) and "
                      "the one logging step in each 100 weigh against ~1 ms of work. Measured while writing this "
                      "(one thread, per-step times inside windows of 100 steps): a step that does not log took "
                      "~100 us more with every probe attached (the monitor alone ~9 us), and the logging step ~7.3 "
                      "ms more, i.e. 73 us a step at the default interval. Inside that step a Python hook call or a "
                      "small tensor op costs 7-36 us (1-2 us in a loop of its own), and a step makes about eight: the "
                      "per-step probes' hooks on the model, its first layer and a ReLU with silent units, and the "
                      "optimizer's pre- and post-step hooks. DeadInputs and DeadUnits now keep their small tensors "
                      "and check them together every 40-64 passes (probes/held.py, every example still checked), "
                      "which halved their hooks' time (84-109 to 35-53 us, 46-76 to 23-36 us); whole windows, old "
                      "and new code in alternating processes, read 1.21-1.30 either way, so the noise of this "
                      "machine hides the difference. Reaching 1.10 would need the dead-unit and dead-input checks "
                      "left out of most steps (no longer every example seen) or every per-step hook merged into "
                      "one.", ""]
    port = cpu.get("port_speed")
    if port:
        def port_fmt(v):
            st = v["step_seconds"]
            return (f"{_s(v['port_vs_plain_torch'])} (port {_ms(st['port'])}, plain {_ms(st['plain'])}, plain "
                    f"channels_last {_ms(st['plain_channels_last'])}; port / plain channels_last "
                    f"{_s(v['port_vs_plain_channels_last'])})")
        lines += [f"**The port against plain torch** ({port['method']}): `port_vs_plain_torch` "
                  f"{_verdict(r, 'port_vs_plain_torch')}. " + _by_threads(port, port_fmt) + ". The port keeps Keras' "
                  "semantics: the biased moving variance (from the statistics torch's BatchNorm kernel computes, "
                  "models/keras_layers.py), Keras' epsilon and momentum, and the clipped probability loss; it runs "
                  "channels_last, steps Adadelta with foreach, draws its dropout masks by Keras' rule (uniform >= "
                  "rate, with `rand_like`: torch's CPU `bernoulli_` is one-threaded and 3x slower) and hands the "
                  "max-pool a channels_last gradient from its flatten (else the pool's backward takes its NCHW kernel "
                  "and makes three copies), none of which the plain net does. Both run in the same process, with "
                  "its malloc setting.", ""]
        if _unmet(r, "port_vs_plain_torch"):
            lines += ["Not met as measured: the step times above say by how much; the port's extra work over the plain "
                      "net is the Keras 2 loss on probabilities (a softmax, renormalisation, clip and log over a "
                      "batch x 10 tensor) and the moving-variance rescaling (two 64-element ops per BatchNorm).", ""]
    comp = cpu.get("compiled_probes")
    if comp:
        def comp_fmt(v):
            if "error" in v and "by_order" not in v:
                return f"failed ({v['error']})"
            parts = []
            for order, o in v.get("by_order", {}).items():
                if "error" in o:
                    parts.append(f"{order}: failed ({o['error']})")
                    continue
                st = o["step_seconds"]
                parts.append(
                    f"{order}: overhead {_s(o['compile_probe_overhead_default'])}, speed-up {_s(o['compile_speedup_with_probes'])}; "
                    f"steps eager bare {_ms(st['eager_bare'])}, compiled bare {_ms(st['compiled_bare'])}, compiled "
                    f"probed between logs {_ms(st['between_logs'])}, logging {_ms(st['logging'])}; "
                    f"{o['graphs_compiled_during_timed_steps']} graph(s) compiled and "
                    f"{o['graph_breaks_during_timed_steps']} graph break(s) during the timed steps "
                    f"({o['graphs_compiled_in_all']} graphs, {o['graph_breaks_in_all']} breaks in all); per-step hooks "
                    f"ran in the compiled steps: {_yes_no(o['hooks_ran_in_compiled_steps'])}; logging steps that "
                    f"recorded layer-output gradient norms: {o.get('logging_steps_with_layer_stats', '?')} of "
                    f"{o.get('logging_steps_timed', '?')}"
                    + (f"; warnings: {' | '.join(o['warnings'])}" if o.get("warnings") else "")
                    + _stance_note(o))
            return "; ".join(parts)
        lines += [f"**torch.compile with probes** ({comp['method']}): `compile_probe_overhead_default` "
                  f"{_verdict(r, 'compile_probe_overhead_default')}; `compile_speedup_with_probes` "
                  f"{_verdict(r, 'compile_speedup_with_probes')}. " + _by_threads(comp, comp_fmt) + ".", ""]
        unmet = [k for k in ("compile_probe_overhead_default", "compile_speedup_with_probes") if _unmet(r, k)]
        if unmet:
            lines += ["Not met as measured (" + ", ".join(f"`{k}`" for k in unmet) + "): the figures above separate the "
                      "steps between logs from the logging steps, and count the graphs Dynamo compiled and the graph "
                      "breaks while timing; recompilations or breaks there are what the probes cost a compiled model.",
                      ""]
    keras = cpu.get("keras")
    if keras:
        if keras.get("skipped"):
            lines += [f"**Keras** (`train_vs_keras`): skipped: {keras['skipped']}.", ""]
        else:
            def keras_fmt(v):
                if "error" in v:
                    return f"failed ({v['error']})"
                st = v["step_seconds"]
                return (f"{_s(v['train_vs_keras'])} (Keras {_ms(st['keras'])}, train.py {_ms(st['train_py'])}; "
                        + ", ".join(f"{k} {ver}" for k, ver in v.get("versions", {}).items()) + ")")
            lines += [f"**Keras** ({keras.get('method', '')}): `train_vs_keras` {_verdict(r, 'train_vs_keras')}. "
                      + _by_threads(keras, keras_fmt) + ".", ""]
    return lines


def _stance_note(o: Dict) -> str:
    """Dynamo's stance, when something other than the benchmark set it (it turns compiling off)."""
    notes = []
    if o.get("stance_found_before", "default") not in ("default", "unknown"):
        notes.append(f"Dynamo's stance was **{o['stance_found_before']}** before compiling (left by code run "
                     "earlier in the process, e.g. a probes Monitor), set back to default to measure")
    if o.get("stance_after_detach", "default") not in ("default", "unknown"):
        notes.append(f"after the probed model's monitor was detached the stance was **{o['stance_after_detach']}**: "
                     "nothing compiled afterwards in that process would compile")
    return "".join(f"; {n}" for n in notes)


def _yes_no(value: Optional[bool]) -> str:
    return "unknown (the dead-units probe keeps no example count)" if value is None else ("yes" if value else "**no**")
