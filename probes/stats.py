"""Pure tensor statistics used by the probes.

Everything here stays on the tensor's device and returns tensors, never Python numbers:
turning a statistic into a number forces a device sync, so that is left to the one
transfer per logging step that :class:`probes.monitor.Monitor` makes. (On a CPU there is
no device to wait for, so reading a number there is free, and :func:`summarize` uses that
to skip a pass.)

A probe runs these over every layer's output and gradient, tens of millions of elements
per logged step, so they keep passes over the data few: each cache-sized piece is read from
memory once (its sum streams it in; the extremes and squares find it in cache), sums are
reductions that allocate nothing, elementwise work goes to a :class:`Scratch` buffer reused
across the tensors of a step (on a CPU a fresh multi-megabyte tensor costs more in page
faults than the arithmetic on it), and a ReLU's output is summarised from its input's pass.
"""
from __future__ import annotations

import math
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch

DEFAULT_BINS = 30
SATURATION_TOL = 1e-3  # "saturated" = within 1e-3 of an activation's bound (issue 2)


class Hist(NamedTuple):
    """A histogram in TensorBoard's raw form; every field is a tensor on the source device."""

    min: torch.Tensor
    max: torch.Tensor
    num: torch.Tensor
    sum: torch.Tensor
    sum_squares: torch.Tensor
    bucket_limits: torch.Tensor  # right edges, shape (bins,)
    bucket_counts: torch.Tensor  # shape (bins,)


class Summary(NamedTuple):
    """What the probes log about one tensor; all 0-d tensors but the histogram."""

    hist: Hist
    zero_fraction: Optional[torch.Tensor]  # None when not asked for (``zeros=False``)
    norm: torch.Tensor  # L2 norm of all elements, NaN or inf if any element is


#: Elements per piece (per intra-op thread) of :func:`_moments_in_pieces`: 1 MiB of float32,
#: so that a piece read from memory once stays in a core's L2 cache (2 MiB here, 1-2 MiB on
#: most x86 and ARM server cores) for the other passes over it. Measured on a 5.5 M-element
#: ReLU output, one thread, CPU time: 1.23 ns an element at 2**17 and 2**18 (the larger takes
#: half the op calls), 1.50 at 2**19, 1.65 at 2**20 (the size before); all of one cnn logging
#: step's tensors: 82 ms at 2**18, 84 at 2**17, 94 at 2**16.
PIECE = 2**18

#: Tensors of at most this many elements are summarised together at the end of a logging step
#: (:class:`Deferred`): for them the ~25 ops of a summary cost more than the arithmetic (a few
#: microseconds each on a CPU), so one copy each now and ~30 ops for all of them later win.
#: Segment reductions cost 2-4 ns an element on a CPU (ten times a plain reduction), so larger
#: tensors are summarised on their own: at 64k elements the cnn's logging step took 6 ms more.
DEFER_MAX = 2**12

#: What "summarised from a sample of its blocks" reads of a tensor, at most (see :func:`summarize`'s
#: ``moments_sample``). The cnn logging every step read whole came to 1.48x a bare step (full
#: bench, two threads); reading whole 1 MiB pieces up to 2**20 elements, 1.18x / 1.29x (one / two
#: threads), up to 2**19 1.15x / 1.23x, and 16 KiB blocks up to 2**19 (this) 1.17x / 1.26x in the
#: full bench (bench/RESULTS.md; the others bench/run.py --quick's every-step part).
MOMENTS_SAMPLE = 2**19

#: Elements of one block of such a sample: 16 KiB of float32, smaller than one example of most
#: layer outputs (the cnn's convolution outputs hold 5 to 9 blocks an example), so that every
#: example of the batch is read in part, not a few examples whole.
SAMPLE_BLOCK = 2**12

#: A logging step fewer than this many steps after the one before is "close" (see
#: :func:`moments_budget`): the cost of exact statistics is then spread over few steps. On the
#: cnn on a CPU a logging step's exact statistics cost 1/3 to 1/2 of a step (one / two threads);
#: spread over 20 steps that is 1.7-2.4%, about the 2% the default interval's overhead goal allows.
CLOSE_LOGS = 20

#: What ``moments_sample`` accepts besides a number of elements.
MOMENTS_CHOICES = ("auto", "exact")


def moments_budget(choice: Any, close: bool) -> Optional[int]:
    """The ``moments_sample`` to summarise with now: ``"auto"`` samples (:data:`MOMENTS_SAMPLE`)
    only on a logging step that comes close after the one before (``close``), ``"exact"`` (or None)
    never, a number always."""
    if choice == "auto":
        return MOMENTS_SAMPLE if close else None
    return None if choice in ("exact", None) else int(choice)


def check_moments_choice(choice: Any) -> None:
    """A clear error at construction for a ``moments_sample`` that :func:`moments_budget` cannot use."""
    if choice in MOMENTS_CHOICES or choice is None:
        return
    if isinstance(choice, bool) or not isinstance(choice, int) or choice < PIECE:
        raise ValueError(f"moments_sample must be 'auto', 'exact' (or None), or a number of elements of at least "
                         f"{PIECE} (a cache-sized piece: a smaller budget saves nothing), not {choice!r}")


class Scratch:
    """Flat buffers reused for elementwise temporaries, one per (slot, dtype, device), and
    the random picks of sampled histograms.

    A buffer grows to the largest request and is kept until :meth:`release`, which a probe
    calls when a step that does not log starts: nothing is held between logs, and
    consecutive logging steps reuse the buffers (a fresh multi-megabyte buffer costs page
    faults on every first touch).

    It also keeps the last tensor summarised and its summary, until the next summary or the
    end of the logging step, so that a view of it costs no pass (:meth:`recall`).
    """

    def __init__(self, host_records: bool = False) -> None:
        #: summaries on a CPU may be records of host numbers rather than tensors: nothing reduces
        #: them across processes (one process). Their last arithmetic is then done in Python, and
        #: small tensors are summarised together when the step's records are collected
        #: (:class:`Deferred`: :class:`Pending` values until :meth:`resolve`).
        self.host_records = host_records
        self.deferred: Optional["Deferred"] = None
        self._buffers: Dict[Tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        self._generators: Dict[torch.device, torch.Generator] = {}
        self._picks: Dict[tuple, torch.Tensor] = {}
        self._steps: Dict[tuple, torch.Tensor] = {}
        self._block_rows: Dict[tuple, torch.Tensor] = {}  # (size, k) -> the blocks read, drawn once a step
        self._piece_picks: Dict[tuple, List[Optional[torch.Tensor]]] = {}  # keyed by the picks' memory
        # the last tensor summarised (flat, detached: holding it keeps its memory from being
        # reused, never an autograd graph), its version and what was asked, and its summary
        self._last: Optional[Tuple[torch.Tensor, int, tuple, "Summary"]] = None
        self._calls = 0  # summaries made in this step (their order is the model's, step after step)
        self._last_call = -1  # the order of the last tensor summarised
        #: (order, size) of the summaries whose next layer is a ReLU of them (learnt on a logging
        #: step, kept for the next ones): their pass also sums their positive part, from which
        #: the ReLU's output gets its summary without a pass of its own (:func:`summarize`)
        self.rectified_next: set = set()
        #: per list of deferred tensors' sizes: their sizes, segment ids and first buckets (a
        #: logging step defers the same sizes as the one before)
        self.segments: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._rectified: Optional[Tuple[torch.Tensor, int, tuple, "Summary"]] = None

    def take(self, slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (slot, dtype, device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]

    def steps(self, bins: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """1, 2, ..., bins: the bucket edges' multiples of the width, made once."""
        key = ("steps", bins, device, dtype)
        found = self._steps.get(key)
        if found is None:
            found = self._steps[key] = torch.arange(1, bins + 1, device=device, dtype=dtype)
        return found

    def generator(self, device: torch.device) -> torch.Generator:
        """A private, seeded generator for sampling, so the global RNG (and with it dropout and
        data order) is the same with and without probes."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device).manual_seed(0)
        return gen

    def picks(self, n: int, sample: int, device: torch.device) -> torch.Tensor:
        """Indices of ``sample`` of ``n`` elements, one drawn at random from each of ``sample``
        equal strata: every element is equally likely, and the reads go forward through
        memory (independent picks cost 4x more). Tensors of one size share the draw until
        :meth:`new_step`."""
        key = (n, sample, device)
        picks = self._picks.get(key)
        if picks is None:
            jitter = torch.rand(sample, device=device, dtype=torch.float64, generator=self.generator(device))
            picks = (torch.arange(sample, device=device, dtype=torch.float64) + jitter).mul_(n / sample)
            picks = self._picks[key] = picks.long().clamp_(max=n - 1)
        return picks

    def block_rows(self, blocks: int, every: int, device: torch.device) -> torch.Tensor:
        """The blocks of ``blocks`` that a sample reads: one drawn at random in each group of
        ``every`` consecutive blocks, independently (one offset for all groups would alias with a
        tensor's own period: measured on a GPT's attention input gradient, whose first positions
        hold most of it, a fixed stride of 2 over a sequence's 6 blocks put the norm 36-43% off,
        one way or the other by step). Drawn with the sampling generator; tensors of one size
        share the draw until :meth:`new_step`, as they share :meth:`picks`. Blocks after the last
        whole group are not read."""
        key = (blocks, every, device)
        found = self._block_rows.get(key)
        if found is None:
            groups = blocks // every
            jitter = torch.randint(every, (groups,), generator=self.generator(device), device=device)
            found = self._block_rows[key] = torch.arange(0, groups * every, every, device=device) + jitter
        return found

    def piece_picks(self, picks: torch.Tensor, n: int, piece: int) -> List[Optional[torch.Tensor]]:
        """``picks`` (sorted) split by the pieces of ``piece`` elements that they fall in, each as
        indices into its piece (None: no pick there); made once per draw and piece size."""
        key = (picks.data_ptr(), n, piece)
        found = self._piece_picks.get(key)
        if found is None:
            starts = list(range(0, n, piece))
            cuts = torch.searchsorted(picks, torch.tensor([*starts, n], device=picks.device)).tolist()
            found = self._piece_picks[key] = [picks[cuts[i]:cuts[i + 1]] - start if cuts[i + 1] > cuts[i] else None
                                              for i, start in enumerate(starts)]
        return found

    def generator_states(self) -> Dict[str, torch.Tensor]:
        """The sampling generators' states, so a resumed run draws the picks an uninterrupted
        run would have drawn (its histograms then match bitwise)."""
        return {str(device): gen.get_state() for device, gen in self._generators.items()}

    def set_generator_states(self, states: Dict[str, torch.Tensor]) -> None:
        for device, state in states.items():
            self.generator(torch.device(device)).set_state(state.cpu())

    def recall(self, flat: torch.Tensor, asked: tuple) -> Optional["Summary"]:
        """The summary of the last tensor summarised if ``flat`` holds the same elements: the
        same memory (the same first element and count, both read in place; the last one is held,
        so its memory cannot have been reused), unchanged since (the version counter, shared by
        views, moves on every in-place write) and summarised as asked now.

        A layer that only reshapes (``nn.Flatten``) outputs a view of its input, and its
        output's gradient is a view of the next one's: one summary serves both, no pass."""
        last = self._last
        if last is None:
            return None
        held, version, was_asked, summary = last
        if _same_elements(flat, held, version) and was_asked[:2] == asked[:2] \
                and (summary.zero_fraction is not None or not asked[2]):
            return summary
        return None

    def remember(self, flat: torch.Tensor, asked: tuple, summary: "Summary") -> None:
        self._last = (flat, flat._version, asked, summary)

    def holds_last(self, flat: Optional[torch.Tensor]) -> bool:
        """Whether ``flat`` holds the elements of the tensor summarised last, unchanged since."""
        last = self._last
        return last is not None and flat is not None and _same_elements(flat, last[0], last[1])

    def recall_rectified(self, source: Optional[torch.Tensor], asked: tuple) -> Optional["Summary"]:
        """The summary of ``max(source, 0)`` made in ``source``'s own pass, if ``source`` is that tensor."""
        found = self._rectified
        if found is None or source is None or not _same_elements(source, found[0], found[1]) \
                or found[2][:2] != asked[:2]:
            return None
        return found[3]

    def resolve(self) -> None:
        """Compute the summaries deferred in this step (their :class:`Pending` values become known)."""
        if self.deferred is not None:
            self.deferred.resolve()
            self.deferred = None

    def new_step(self) -> None:
        """Draw fresh sample picks from now on."""
        self.resolve()
        self._picks.clear()
        self._block_rows.clear()
        self._piece_picks.clear()
        self._last = self._rectified = None
        self._calls, self._last_call = 0, -1

    def release(self) -> None:
        self.resolve()
        self._buffers.clear()
        self._picks.clear()
        self._block_rows.clear()
        self._piece_picks.clear()
        self._last = self._rectified = None
        self._calls, self._last_call = 0, -1


def summarize(x: torch.Tensor, bins: int = DEFAULT_BINS, scratch: Optional[Scratch] = None,
              sample: Optional[int] = None, zeros: bool = True,
              same_values_as: Optional[torch.Tensor] = None, rectified_of: Optional[torch.Tensor] = None,
              moments_sample: Optional[int] = None) -> Summary:
    """Histogram, exact-zero fraction and norm of ``x`` in few passes, on its device.

    The histogram has ``bins`` equal-width buckets over the finite values (non-finite ones
    are binned as 0; see :func:`nonfinite_count`). ``torch.histc`` needs its range as
    Python floats (a sync); here the range stays a tensor. Min, max, sum, sum of squares
    and the zero fraction are always exact. With ``sample``, the bucket counts of a larger
    tensor are estimated from that many elements (:meth:`Scratch.picks`, with the scratch's
    own generator, never the global RNG), scaled to the total: putting every element in
    its bucket is the one step that does not vectorise on a CPU (~3 ns an element, more
    than all the rest together).

    ``zeros=False`` leaves the zero fraction out (``None``): counting exact zeros is the
    costliest pass but the min/max one (~0.5 ns an element on a CPU, 40% of the moments),
    and for most layer outputs an exact zero is an accident of rounding, not a fact
    (:class:`probes.ActivationStats` asks for it where zeros mean something).

    With a ``scratch``, a tensor that holds the same elements as the one summarised just
    before (a view of it, e.g. ``nn.Flatten``'s output) gets that summary again, without a
    pass (:meth:`Scratch.recall`); so does one that the caller knows holds the same values as
    ``same_values_as`` in another order (a reshaping layer's output that had to be copied: a
    flattened channels_last tensor), when that tensor is the one summarised just before. The
    numbers are the same; the sampled bucket counts are those of the other order's sample.

    ``rectified_of``: ``x`` is ``max(rectified_of, 0)`` (an ``nn.ReLU``'s output and input).
    If ``rectified_of`` is the tensor summarised just before (unchanged), its pass, from the
    next logging step on, also sums its positive part, piece by piece while the piece is in
    cache, and ``x``'s summary comes from there: the same numbers to the bit (the same pieces
    and sample), without reading ``x`` from memory again (sampled histograms, CPU).

    ``moments_sample``: on a CPU, a tensor of more elements than this is summarised from a
    sample of its blocks of :data:`SAMPLE_BLOCK` elements (one drawn in every ``k`` with the
    scratch's generator, so about this many elements; the same blocks for every tensor of that
    size in a step, :func:`_sample_of_blocks`) instead of from all of them: the sum, the sum of
    squares and the norm are the blocks' scaled to the whole (estimates), the zero fraction is
    the blocks' own, the extremes are the blocks' (the tensor's may lie beyond), and the bucket
    counts come from the histogram picks drawn over those blocks. On an accelerator, or while
    torch.compile traces, tensors are summarised whole (a pass there is cheap beside the step).
    """
    x = _flat(x.detach())
    x = x if x.dtype == torch.float32 else x.float()
    n = x.numel()
    if n == 0:
        zero = x.new_zeros(())
        return Summary(Hist(zero, zero, zero, zero, zero, x.new_zeros(bins), x.new_zeros(bins)),
                       zero if zeros else None, zero)
    asked = (bins, (sample, moments_sample), zeros)
    if scratch is not None:
        if rectified_of is not None:
            source = _flat_view(rectified_of.detach())
            derived = scratch.recall_rectified(source, asked)
            if derived is not None:
                scratch.remember(x, asked, derived)
                scratch._calls += 1
                return derived if zeros else derived._replace(zero_fraction=None)
            if scratch.holds_last(source) and source.numel() == n:  # learnt: from the next logging step on
                scratch.rectified_next.add((scratch._last_call, n))
        known = scratch.recall(x, asked)
        if known is None and same_values_as is not None and same_values_as.numel() == n \
                and same_values_as.dtype == x.dtype:
            other = _flat_view(same_values_as.detach())
            known = scratch.recall(other, asked) if other is not None else None
        if known is not None:
            return known if zeros or known.zero_fraction is None else known._replace(zero_fraction=None)
    else:
        scratch = Scratch()
    # On a CPU the moments come from one read of memory per cache-sized piece, and reading
    # a number back is free, so non-finite values are looked for after the fact. Elsewhere
    # that read would be a sync, and while torch.compile traces a graph break, so those
    # always take the nan_to_num pass.
    all_finite, sampled, picks, source, read = False, None, None, x, n
    some = sample is not None and n > sample  # bucket counts from a sample of the elements read
    if scratch.host_records and not some and n <= DEFER_MAX and host_reads_are_free(x.device) and not _compiling():
        if scratch.deferred is None or scratch.deferred.bins != bins:
            scratch.resolve()
            scratch.deferred = Deferred(bins, scratch)
        summary = scratch.deferred.add(x, zeros)
        scratch.remember(x, asked, summary)
        return summary
    call, scratch._calls = scratch._calls, scratch._calls + 1
    positive = None
    if host_reads_are_free(x.device) and not _compiling():
        blocks = _sample_of_blocks(x, moments_sample, scratch)
        if blocks is not None:
            source, read = blocks, blocks.numel()
        picks = scratch.picks(read, sample, x.device) if sample is not None and read > sample else None
        rectify = picks is not None and (call, n) in scratch.rectified_next
        total, lo, hi, sum_squares, nonzero, sampled, positive = _moments_in_pieces(source, scratch, picks, zeros,
                                                                                     rectify=rectify)
        if read < n:  # a sample of blocks: sums scaled to the whole, zeros counted at the blocks' rate
            total, sum_squares, nonzero = _scaled(n, read, total, sum_squares, nonzero)
            if positive is not None:
                positive = _scaled(n, read, *positive)
        if scratch.host_records:  # one process: the rest in Python numbers (a handful of ops, not ~20)
            summary = _summary_on_host(x, n, total, lo, hi, sum_squares, nonzero, sampled, positive,
                                       *_bucketed(x, n, source, read, sampled), bins, scratch, asked, call)
            if summary is not None:
                return summary
        all_finite = bool(torch.isfinite(total))  # a NaN or Inf anywhere spoils the sum
        if not all_finite:  # summarised whole from here on (the non-finite values are looked at)
            source, read, picks = x, n, None
    if picks is None and some and not all_finite:
        picks = scratch.picks(n, sample, x.device)
    if all_finite:
        finite, norm = x, sum_squares.sqrt()
    else:  # the norm shows NaN/inf as they are; count_nonzero is fast where the device is
        finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0, out=scratch.take("f", n, x.dtype, x.device))
        total = finite.sum()
        lo, hi = torch.aminmax(finite)
        sum_squares = torch.dot(finite, finite)
        norm = torch.linalg.vector_norm(x)
        nonzero = torch.count_nonzero(x) if zeros else None
    zero_fraction = ((n - nonzero.double()) / n).float() if zeros else None

    if all_finite:
        values, scale = _bucketed(x, n, source, read, sampled)
    else:
        values, scale = (finite, None) if picks is None else (torch.index_select(finite, 0, picks), n / sample)
    num = torch.full((), float(n), device=x.device)
    summary = Summary(_histogram(values, lo, hi, num, total, sum_squares, bins, scratch, scale), zero_fraction, norm)
    scratch.remember(x, asked, summary)
    scratch._last_call = call
    if positive is not None and all_finite:  # the summary of max(x, 0), for the ReLU that comes next
        total_p, squares_p, nonzero_p = positive
        lo_p = torch.where(nonzero_p < n, torch.zeros_like(lo), lo)  # a zero unless every element is > 0
        hi_p = hi.clamp(min=0)
        hist_p = _histogram(sampled.clamp(min=0), lo_p, hi_p, num, total_p, squares_p, bins, scratch, scale)
        scratch._rectified = (x, x._version, asked, Summary(hist_p, ((n - nonzero_p.double()) / n).float(),
                                                            squares_p.sqrt()))
    return summary


def _bucketed(x: torch.Tensor, n: int, source: torch.Tensor, read: int,
              sampled: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[float]]:
    """What the histogram buckets, and the factor from its counts to the tensor's ``n``: the
    sample picked, else the blocks read, else ``x`` itself (counts as they are)."""
    if sampled is not None:
        return sampled, n / sampled.numel()
    return (source, n / read) if read < n else (x, None)


def _f32(value: float) -> float:
    """``value`` rounded to float32, as a Python float. An operation on float32 values done in
    float64 and rounded so is the float32 operation's own result (double rounding is harmless
    for +, -, *, / and sqrt when 53 >= 2 * 24 + 2): the host gets the device's numbers."""
    return _F32.unpack(_F32.pack(value))[0]


_F32 = struct.Struct("f")
_TINY_WIDTH = _f32(1e-12)


def _summary_on_host(x: torch.Tensor, n: int, total: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     sum_squares: torch.Tensor, nonzero: Optional[torch.Tensor], sampled: Optional[torch.Tensor],
                     positive: Optional[tuple], values: torch.Tensor, scale: Optional[float], bins: int,
                     scratch: Scratch, asked: tuple, call: int) -> Optional[Summary]:
    """The rest of :func:`summarize` where reading back is free (a CPU, one process): the moments
    read in one op, the bucket edges, zero fraction and norm worked out in Python float32
    arithmetic (:func:`_f32`: the same numbers as the tensor path), only the bucketing left to
    tensor ops. Records then hold Python numbers, which :func:`probes.records.to_host` passes on.
    None if a value is not finite (the tensor path handles that)."""
    read = [total, lo, hi, sum_squares] + ([nonzero] if nonzero is not None else []) + \
        (list(positive) if positive is not None else [])
    numbers = torch.stack([t.double() for t in read]).tolist()
    total_f, lo_f, hi_f, squares_f = numbers[:4]
    if not math.isfinite(total_f):
        return None
    at = 4
    zero_fraction = None
    if nonzero is not None:
        zero_fraction = _f32((n - numbers[at]) / n)
        at += 1
    num = float(n)
    summary = Summary(_histogram_on_host(values, lo_f, hi_f, num, total_f, squares_f, bins, scratch, scale),
                      zero_fraction, _f32(math.sqrt(squares_f)))
    scratch.remember(x, asked, summary)
    scratch._last_call = call
    if positive is not None:  # the summary of max(x, 0), for the ReLU that comes next
        total_p, squares_p, nonzero_p = numbers[at:at + 3]
        lo_p = 0.0 if nonzero_p < n else lo_f  # a zero unless every element is > 0
        hist_p = _histogram_on_host(sampled.clamp(min=0), lo_p, max(hi_f, 0.0), num, total_p, squares_p, bins,
                                    scratch, scale)
        scratch._rectified = (x, x._version, asked, Summary(hist_p, _f32((n - nonzero_p) / n),
                                                            _f32(math.sqrt(squares_p))))
    return summary


def _histogram_on_host(values: torch.Tensor, lo: float, hi: float, num: float, total: float, sum_squares: float,
                       bins: int, scratch: "Scratch", scale: Optional[float]) -> Hist:
    """:func:`_histogram` with its range as Python float32 values: the same edges and counts."""
    width = _f32(max(_f32(hi - lo), _TINY_WIDTH) / bins)
    counts = _bucket_counts(values, lo, width, bins, scratch, scale)
    limits = [_f32(lo + width * k) for k in range(1, bins + 1)]  # addcmul's lo + width * k, rounded once
    return Hist(lo, hi, num, total, sum_squares, limits, counts.tolist())  # type: ignore[arg-type]


def _histogram(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, num: torch.Tensor, total: torch.Tensor,
               sum_squares: torch.Tensor, bins: int, scratch: "Scratch", scale: Optional[float]) -> Hist:
    """``bins`` equal buckets from ``lo`` to ``hi`` of ``values`` (scaled by ``scale``: a sample)."""
    width = torch.clamp(hi - lo, min=1e-12) / bins
    counts = _bucket_counts(values, lo, width, bins, scratch, scale)
    limits = torch.addcmul(lo, width, scratch.steps(bins, values.device, values.dtype))  # lo + width * (1..bins)
    return Hist(lo, hi, num, total, sum_squares, limits, counts)


def _bucket_counts(values: torch.Tensor, lo: Any, width: Any, bins: int, scratch: "Scratch",
                   scale: Optional[float]) -> torch.Tensor:
    """Counts of ``values`` in ``bins`` buckets of ``width`` from ``lo`` (tensors or Python
    float32 values: the same float32 arithmetic), scaled by ``scale`` (a sample's)."""
    # bucket = floor((v - lo) / width), clamped to the last bucket for v == hi
    index = torch.sub(values, lo, out=scratch.take("q", values.numel(), values.dtype, values.device))
    index.div_(width).clamp_(0, bins - 1)
    counts = _bincount(index, bins, scratch)
    return counts * scale if scale is not None else counts


def _same_elements(flat: torch.Tensor, held: torch.Tensor, version: int) -> bool:
    """Whether ``flat`` is the memory of ``held`` (kept alive, so not reused), unchanged since ``version``."""
    return (flat.data_ptr() == held.data_ptr() and flat.numel() == held.numel() and flat.dtype == held.dtype
            and flat.device == held.device and flat._version == version)


class Pending:
    """One number (or a histogram's bucket limits or counts) of a :class:`Deferred` summary,
    known once its batch is resolved; :func:`probes.records.to_host` reads it with the rest."""

    __slots__ = ("batch", "row", "field")

    def __init__(self, batch: "Deferred", row: int, field: int) -> None:
        self.batch, self.row, self.field = batch, row, field

    def tensor(self) -> torch.Tensor:
        """The value as a tensor (a 0-d float64, or a row of limits or counts)."""
        self.batch.resolve()
        if self.field == Deferred.LIMITS:
            return self.batch.limits[self.row]
        if self.field == Deferred.COUNTS:
            return self.batch.counts[self.row]
        return self.batch.numbers[self.row, self.field]


def materialize(value: Any) -> Any:
    """``value``, with a :class:`Pending` made a tensor (for code that needs one: checkpoints)."""
    return value.tensor() if isinstance(value, Pending) else value


class Deferred:
    """Small CPU tensors of one logging step, summarised together (the same statistics as
    :func:`summarize`: finite-value histogram, exact zeros, norm).

    :meth:`add` keeps a float32 copy (one op: the tensor may change in place later in the
    step, e.g. under an in-place ReLU or a gradient clip) and returns a :class:`Summary` of
    :class:`Pending` values; :meth:`resolve` computes all of them with segment reductions
    over the copies laid end to end, one ``bincount`` for every histogram. The bucketing is
    the same float32 arithmetic as :func:`summarize`'s (same edges, same counts); the sums
    are taken in float64.
    """

    #: columns of :attr:`numbers`, in the order of :class:`Hist`'s first five fields
    MIN, MAX, NUM, SUM, SUM_SQUARES, ZERO_FRACTION, NORM = range(7)
    COLUMNS = 7
    LIMITS, COUNTS = -1, -2

    def __init__(self, bins: int, scratch: "Scratch") -> None:
        self.bins = bins
        self._scratch = scratch
        self._flats: List[torch.Tensor] = []
        self.numbers: Optional[torch.Tensor] = None  # (tensors, 7) float64, once resolved
        self.limits: Optional[torch.Tensor] = None  # (tensors, bins)
        self.counts: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor, zeros: bool) -> Summary:
        row = len(self._flats)
        self._flats.append(x.clone())
        p = [Pending(self, row, f) for f in range(self.COLUMNS)]
        hist = Hist(p[self.MIN], p[self.MAX], p[self.NUM], p[self.SUM], p[self.SUM_SQUARES],
                    Pending(self, row, self.LIMITS), Pending(self, row, self.COUNTS))
        return Summary(hist, p[self.ZERO_FRACTION] if zeros else None, p[self.NORM])  # type: ignore[arg-type]

    @torch.no_grad()
    def resolve(self) -> None:
        if self.numbers is not None or not self._flats:
            return
        flats, self._flats = self._flats, []
        bins, n_seg = self.bins, len(flats)
        lengths_list = [f.numel() for f in flats]
        data = torch.cat(flats)
        key = (bins, *lengths_list)
        found = self._scratch.segments.get(key)
        if found is None:
            if len(self._scratch.segments) >= 16:  # sizes that change from step to step: keep few
                self._scratch.segments.clear()
            lengths = torch.tensor(lengths_list, device=data.device)
            seg = torch.repeat_interleave(torch.arange(n_seg, device=data.device), lengths)
            found = self._scratch.segments[key] = (lengths, seg, seg * bins)
        lengths, seg, first_bucket = found
        d64 = data.double()
        total = torch.segment_reduce(d64, "sum", lengths=lengths)
        squares_raw = torch.segment_reduce(d64 * d64, "sum", lengths=lengths)
        finite, squares = data, squares_raw
        if not bool(torch.isfinite(total).all()):  # a NaN or Inf somewhere: statistics of the finite values
            finite = torch.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
            f64 = finite.double()
            total = torch.segment_reduce(f64, "sum", lengths=lengths)
            squares = torch.segment_reduce(f64 * f64, "sum", lengths=lengths)
        lo = torch.segment_reduce(finite, "min", lengths=lengths)
        hi = torch.segment_reduce(finite, "max", lengths=lengths)
        num = lengths.double()
        zero_fraction = (num - torch.segment_reduce(data.ne(0).double(), "sum", lengths=lengths)) / num
        width = torch.clamp(hi - lo, min=1e-12) / bins
        index = torch.sub(finite, lo[seg]).div_(width[seg]).clamp_(0, bins - 1)
        slots = index.to(torch.int64).add_(first_bucket)  # truncation = floor, the values being >= 0
        counts = torch.bincount(slots, minlength=n_seg * bins)[:n_seg * bins].view(n_seg, bins).float()
        steps = self._scratch.steps(bins, data.device, data.dtype)
        self.limits = torch.addcmul(lo[:, None], width[:, None], steps)
        self.counts = counts
        self.numbers = torch.stack([lo.double(), hi.double(), num, total, squares, zero_fraction,
                                    squares_raw.sqrt()], dim=1)


def _compiling() -> bool:
    """Whether torch.compile is tracing this call (then nothing may be read back to Python)."""
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()


def _flat(x: torch.Tensor) -> torch.Tensor:
    """All elements as a 1-D tensor, in memory order: a view, not a copy, for any dense
    layout (channels_last activations, transposed weights), since order does not matter here."""
    flat = _flat_view(x)
    return flat if flat is not None else x.reshape(-1)


def _flat_view(x: torch.Tensor) -> Optional[torch.Tensor]:
    """:func:`_flat` where it is a view, else None (a layout with gaps or overlaps)."""
    if x.is_contiguous():
        return x.view(-1)
    by_stride = x.permute(*sorted(range(x.dim()), key=lambda d: -x.stride(d)))
    return by_stride.view(-1) if by_stride.is_contiguous() else None


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a number back costs nothing (a CPU tensor) rather than a device sync."""
    return device.type == "cpu"


def _sample_of_blocks(x: torch.Tensor, budget: Optional[int], scratch: Scratch) -> Optional[torch.Tensor]:
    """About ``budget`` elements of the flat ``x``: one block of :data:`SAMPLE_BLOCK` in every
    ``k``, drawn in each group of ``k`` once a step per size (:meth:`Scratch.block_rows`), copied
    in order into a scratch buffer; None where ``x`` is not larger than that (read it all)."""
    n = x.numel()
    if budget is None or n <= budget:
        return None
    blocks = n // SAMPLE_BLOCK
    every = -(-blocks // max(1, budget // SAMPLE_BLOCK))
    if every <= 1:
        return None
    rows = scratch.block_rows(blocks, every, x.device)
    out = scratch.take("b", rows.numel() * SAMPLE_BLOCK, x.dtype, x.device)
    torch.index_select(x[:blocks * SAMPLE_BLOCK].view(blocks, SAMPLE_BLOCK), 0, rows,
                       out=out.view(rows.numel(), SAMPLE_BLOCK))
    return out


def _scaled(n: int, read: int, total: Any, squares: Any, nonzero: Any) -> Tuple[Any, Any, Any]:
    """Sums over ``read`` of ``n`` elements scaled to all ``n``; the non-zero count as ``n`` less
    the zeros scaled, so that a sample without zeros gives exactly ``n``."""
    scale = n / read
    return total * scale, squares * scale, None if nonzero is None else n - (read - nonzero) * scale


def _moments_in_pieces(x: torch.Tensor, scratch: Scratch, picks: Optional[torch.Tensor] = None,
                       zeros: bool = True, piece: Optional[int] = None, rectify: bool = False) -> Tuple[Any, ...]:
    """Sum, min, max, sum of squares and the exact non-zero count (float64; None with
    ``zeros=False``) of a flat float32 tensor, and its elements at ``picks`` (sorted indices;
    None: no sample), taking the tensor in cache-sized pieces (:data:`PIECE` per thread: with
    several intra-op threads each takes its share of a piece, which stays cache-sized, and the
    fork per reduction is paid on fewer, larger pieces).

    Five whole-tensor passes and a gather would each stream the tensor from memory; here each
    piece is read from memory once and the other passes find it in cache (a logging step of
    the cnn summarises ~60 M elements: ~25% less time for these statistics on this CPU). The
    non-zero count is sign(x)**2 summed by ``dot``, several times faster on a CPU than
    ``count_nonzero``, exact in float32 within a piece (fewer than 2**24 elements) and summed
    in float64.

    With ``rectify``, also the sum, sum of squares and non-zero count of ``max(x, 0)``, from
    each piece while it is in cache (the last element returned; None without).
    """
    n = x.numel()
    piece = piece or min(PIECE * max(torch.get_num_threads(), 1), 2**23)
    if n <= piece:  # one piece: no table to build and take apart
        total = x.sum()
        lo, hi = x.amin(), x.amax()
        nonzero = None
        if zeros:
            signs = torch.sign(x, out=scratch.take("s", n, x.dtype, x.device))
            nonzero = torch.dot(signs, signs).double()
        sample = None if picks is None else x.index_select(0, picks)
        positive = _positive_part(x, scratch) if rectify else None
        if positive is not None:
            positive = (positive[0], positive[1], positive[2].double())
        return total, lo, hi, torch.dot(x, x), nonzero, sample, positive
    buf = scratch.take("s", piece, x.dtype, x.device) if zeros else None
    local = scratch.piece_picks(picks, n, piece) if picks is not None else None
    rows, sampled = [], []
    for i, part in enumerate(x.split(piece)):
        # the sum first: it streams the piece from memory fastest (~10 GB/s a thread here, against
        # ~6 for aminmax); then the extremes apart, from cache (amax + amin: 20% less than aminmax)
        total = part.sum()
        row = [total, part.amin(), part.amax(), torch.dot(part, part)]
        if zeros:
            signs = torch.sign(part, out=buf[:part.numel()])
            row.append(torch.dot(signs, signs))
        if rectify:
            row.extend(_positive_part(part, scratch))
        rows.append(torch.stack(row))
        if local is not None and local[i] is not None:
            sampled.append(part.index_select(0, local[i]))
    sample = None if picks is None else (sampled[0] if len(sampled) == 1 else torch.cat(sampled))
    table = torch.stack(rows)
    at = 5 if zeros else 4
    positive = (table[:, at].sum(), table[:, at + 1].sum(), table[:, at + 2].double().sum()) if rectify else None
    return (table[:, 0].sum(), table[:, 1].min(), table[:, 2].max(), table[:, 3].sum(),
            table[:, 4].double().sum() if zeros else None, sample, positive)


def _positive_part(part: torch.Tensor, scratch: Scratch) -> List[torch.Tensor]:
    """Sum, sum of squares and non-zero count of ``max(part, 0)``, the same way (and so to the
    same bits) as :func:`_moments_in_pieces` takes them of a ReLU's output piece."""
    p = torch.clamp(part, min=0, out=scratch.take("r", part.numel(), part.dtype, part.device))
    total, squares = p.sum(), torch.dot(p, p)
    ones = p.sign_()  # 0 or 1: their sum is the count dot(signs, signs) gives, exactly (< 2**24 a piece)
    return [total, squares, ones.sum()]


def _bincount(index: torch.Tensor, bins: int, scratch: Scratch) -> torch.Tensor:
    """Counts of the integer parts of ``index`` (floats in [0, bins)), as float32, no sync."""
    if host_reads_are_free(index.device) and not _compiling():
        # bincount is the fastest exact count on a CPU; on CUDA it reads its max back (a sync),
        # and its output's size depends on the data, which torch.compile cannot trace
        ints = scratch.take("i", index.numel(), torch.int32, index.device)
        ints.copy_(index)  # truncation = floor, the values being >= 0
        return torch.bincount(ints, minlength=bins)[:bins].float()
    ints = scratch.take("l", index.numel(), torch.int64, index.device)
    ints.copy_(index)
    ones = torch.ones((), device=index.device).expand_as(ints)
    return torch.zeros(bins, device=index.device).scatter_add_(0, ints, ones)


def histogram(x: torch.Tensor, bins: int = DEFAULT_BINS, scratch: Optional[Scratch] = None,
              sample: Optional[int] = None) -> Hist:
    """Histogram of the finite values of ``x``, on device (see :func:`summarize`)."""
    return summarize(x, bins, scratch, sample).hist


def zero_fraction(x: torch.Tensor) -> torch.Tensor:
    """Fraction of elements that are exactly zero (dead ReLU outputs, zero gradients)."""
    if x.numel() == 0:
        return x.new_zeros((), dtype=torch.float32)
    return 1.0 - torch.count_nonzero(x).float() / x.numel()


def nonfinite_count(x: torch.Tensor) -> torch.Tensor:
    """Number of NaN or infinite elements."""
    return (~torch.isfinite(x)).sum().float()


def saturated_fraction(y: torch.Tensor, low: float, high: float, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Fraction of outputs within ``tol`` of either bound of a squashing activation."""
    y = y.detach()
    near = (y <= low + tol) | (y >= high - tol)
    return near.float().mean()


def norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over all elements, in float32 whatever the input dtype."""
    return torch.linalg.vector_norm(x.detach().float())
