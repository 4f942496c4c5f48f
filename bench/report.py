"""Regenerate docs/benchmarks.md (tables and matplotlib plots) from every bench/results/*.json.

    python bench/report.py [--results bench/results] [--out docs/benchmarks.md] [--images docs/images]

Each results file is recognised by its name: ``fidelity*.json`` (bench/fidelity.py),
``per-sample-*.json`` (bench/bench_per_sample.py), ``core-*.json`` (bench/bench_core.py),
``batch-*.json`` (bench/bench_batch.py), ``service-budget*.json`` (bench/service_budget.py),
``service-*.json`` (bench/bench_service.py),
``training-effect-*.json`` (bench/training_effect.py); any other JSON file gets a generic table.
Files that are expected and absent are listed with the command that makes them; a file that cannot
be read or rendered is reported as such and the rest of the report is still written. Plots are
written as ``docs/images/bench-<name>.png`` (stale ``bench-*.png`` files are removed); without
matplotlib the report is written with tables only and says so. Nothing here measures anything.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "bench" / "results"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DEFAULT_IMAGES = REPO / "docs" / "images"

#: The files a complete ``make bench`` run leaves, and what makes each (GPU ones only on a GPU).
EXPECTED: dict[str, str] = {
    "fidelity.json": "python bench/fidelity.py",
    "per-sample-cpu.json": "python bench/bench_per_sample.py",
    "core-cpu.json": "python bench/bench_core.py",
    "batch-cpu.json": "python bench/bench_batch.py --device cpu",
    "batch-cuda.json": "python bench/bench_batch.py --device cuda (needs a GPU)",
    "service-cpu.json": "python bench/bench_service.py",
    "training-effect-cpu.json": "python bench/training_effect.py",
    "training-effect-cuda.json": "python bench/training_effect.py --out bench/results/training-effect-cuda.json "
                                 "-- --config configs/train/coco-frcnn-r50.yaml --data-path /data/coco "
                                 "--lr 0.0025 --device cuda (needs a GPU and COCO 2017)",
}

#: Section order and the file-name prefix of each kind.
KINDS: tuple[tuple[str, str], ...] = (
    ("fidelity", "Annotation fidelity"),
    ("per-sample", "Per-sample speed, CPU"),
    ("core", "Core kernels, one pair at a time"),
    ("batch", "Batches (detmix.torch.BatchMix)"),
    ("service-budget", "REST service: memory and CPU of one batch"),  # before "service": a longer prefix
    ("service", "REST service"),
    ("training-effect", "Training effect"),
)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def kind_of(name: str) -> str:
    """The kind of a results file from its name (``other`` when unknown)."""
    stem = name[:-5] if name.endswith(".json") else name
    for kind, _ in KINDS:
        if stem == kind or stem.startswith(kind + "-"):
            return kind
    return "other"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant figures, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter per column (l or r; default: l then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1f}%"


def _iou(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def _get(data: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def provenance(data: dict[str, Any]) -> str:
    """A line with the date, the machine and the versions a results file records, whatever its layout."""
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    date = data.get("date") or machine.get("date")
    parts = []
    if date:
        parts.append(f"**date** {date}")
    m = {k: v for k, v in machine.items() if k != "date" and not isinstance(v, (dict, list))}
    if m:
        parts.append("**machine** " + ", ".join(f"{k} {v}" for k, v in m.items()))
    versions = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    if not versions:  # some files keep the versions among the machine's keys
        versions = {k: machine[k] for k in ("python", "torch", "torchvision", "numpy") if k in machine}
    v = {k: val for k, val in versions.items() if val is not None}
    if v:
        parts.append("**versions** " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if data.get("command"):
        parts.append(f"**command** `{data['command']}`")
    return "  \n".join(parts) if parts else "(the file records no machine, versions or date)"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


class Plots:
    """Writes ``bench-<name>.png`` under ``images`` with matplotlib (Agg), or records why not."""

    def __init__(self, images: Path, doc: Path, enabled: bool = True) -> None:
        self.images, self.doc = images, doc
        self.written: list[Path] = []
        self.plt = None
        self.unavailable: str | None = None
        if not enabled:
            self.unavailable = "plots switched off (--no-plots)"
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            self.unavailable = f"matplotlib is not installed ({error}); install the bench extra for plots"
        else:
            self.plt = plt

    def save(self, name: str, draw: Callable[[Any], None], size: tuple[float, float] = (8.0, 4.0)) -> str:
        """Draw with ``draw(plt)`` onto a new figure and return the Markdown image line."""
        if self.plt is None:
            return ""
        plt = self.plt
        fig = plt.figure(figsize=size, dpi=100)
        try:
            draw(fig)
            fig.tight_layout()
            self.images.mkdir(parents=True, exist_ok=True)
            path = self.images / f"bench-{name}.png"
            fig.savefig(path, metadata={"Software": None})
        finally:
            plt.close(fig)
        self.written.append(path)
        rel = Path(_relpath(path, self.doc.parent))
        return f"![{name}]({rel.as_posix()})"

    def remove_stale(self) -> list[Path]:
        if self.plt is None or not self.images.is_dir():
            return []
        stale = [p for p in self.images.glob("bench-*.png") if p not in self.written]
        for path in stale:
            path.unlink()
        return stale


def _shown(path: str) -> str:
    """A path as the reader should see it: relative to the repository when it is absolute."""
    return _relpath(Path(path), REPO) if Path(path).is_absolute() else path


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def _barh(fig: Any, labels: Sequence[str], values: Sequence[float], xlabel: str, title: str,
          log: bool = False, errors: tuple[Sequence[float], Sequence[float]] | None = None,
          highlight: Callable[[str], bool] | None = None) -> None:
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(labels)))[::-1]
    colours = ["#d9822b" if highlight and highlight(label) else "#4a78b5" for label in labels]
    xerr = None
    if errors is not None:
        lo, hi = errors
        xerr = [[max(v - low, 0) for v, low in zip(values, lo)], [max(high - v, 0) for v, high in zip(values, hi)]]
    ax.barh(ys, values, color=colours, xerr=xerr, ecolor="#555555", capsize=2)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)

    def add(self, *text: str) -> None:
        self.lines.extend(text)

    def render(self) -> str:
        return "\n".join([f"## {self.title}", "", *self.lines]).rstrip() + "\n"


_DETMIX_MASKS = ("detmix with masks", "detmix with masks, Albumentations")


def fidelity_goals(data: dict[str, Any], issue: int | None = None) -> list[str]:
    """Sentences that check the issue's goals against the figures, comparison by comparison:
    the comparisons whose ``issue`` is ``issue`` (None: those of no later issue, i.e. #6's)."""
    threshold = str(_get(data, "config", "min_pixels", default=16))
    out = []
    shared_boxes = None
    for comparison in data.get("comparisons", []):
        if comparison.get("key") == "cutmix":
            shared_boxes = next((r["by_min_pixels"].get(threshold) for r in comparison.get("rows", [])
                                 if r["mixer"] == "detmix boxes only"), None)
    for comparison in data.get("comparisons", []):
        if comparison.get("issue") != issue:
            continue
        rows = {r["mixer"]: r["by_min_pixels"].get(threshold) for r in comparison.get("rows", [])}
        title = comparison.get("title", comparison.get("key", "?"))
        for name in _DETMIX_MASKS:
            s = rows.get(name)
            if not s:
                continue
            ok = s["missed"] == 0 and s["phantom"] == 0 and (s["mean_iou"] or 0) >= 0.99
            out.append(f"- {title}, **{name}**: {s['missed']} missed, {s['phantom']} phantom, mean IoU "
                       f"{_iou(s['mean_iou'])} (min {_iou(s['min_iou'])}): goal (0, 0, >= 0.99) "
                       f"{'**met**' if ok else '**not met**'}.")
        mixed, skipped = comparison.get("ultralytics_mixed_trials"), comparison.get("ultralytics_skipped_trials")
        if mixed is not None and skipped is not None and mixed + skipped:
            out.append(f"- {title}: Ultralytics CutMix mixed in {mixed} of {mixed + skipped} trials "
                       f"({100 * mixed / (mixed + skipped):.0f}%); it only pastes a cut that overlaps no box of the "
                       "image, and returns the image unchanged when none of its 3 random cuts does. The rows of this "
                       "table count the trials where it mixed.")
        boxes = rows.get("detmix boxes only")
        peers = {k: v for k, v in rows.items() if v and not k.startswith("detmix")}
        if shared_boxes is not None and not any(k.startswith("detmix") for k in rows):  # e.g. Mosaic's own draws
            for peer, s in peers.items():
                out.append(f"- {title}: {peer} {s['missed_pct']:.1f}% missed, {s['phantom_pct']:.1f}% phantom, vs "
                           f"detmix boxes only on the shared CutMix cuts {shared_boxes['missed_pct']:.1f}% and "
                           f"{shared_boxes['phantom_pct']:.1f}%: rates of different draws, not a paired comparison.")
        if boxes and peers:
            for peer, s in peers.items():
                verdicts = [f"{_compare(boxes[key], s[key])} {key}" for key in ("missed", "phantom")]
                met = boxes["missed"] < s["missed"] and boxes["phantom"] < s["phantom"]
                out.append(f"- {title}: **detmix boxes only** ({boxes['missed']} missed, {boxes['phantom']} phantom) "
                           f"vs {peer} ({s['missed']} missed, {s['phantom']} phantom): {' and '.join(verdicts)}; "
                           f"goal (fewer of both) {'**met**' if met else '**not met**'}.")
    return out


def _compare(ours: float, theirs: float) -> str:
    return "fewer" if ours < theirs else "as few" if ours == theirs else "more"


def family_table(data: dict[str, Any]) -> str | None:
    """The region family (issue 14) at a glance: per mode, the classification version against
    detmix without and with masks (missed % of visible objects, phantom % of boxes, mean IoU)."""
    threshold = str(_get(data, "config", "min_pixels", default=16))
    rows = []
    for comparison in data.get("comparisons", []):
        if comparison.get("issue") != 14:
            continue
        by_name = {r["mixer"]: r["by_min_pixels"].get(threshold) or {} for r in comparison.get("rows", [])}
        naive = next((v for k, v in by_name.items() if k.startswith("classification")), {})
        recipe = next((v for k, v in by_name.items() if k.startswith("detmix boxes only, ")), {})

        def cell(s: dict[str, Any]) -> str:
            if not s:
                return "–"
            return f"{_pct(s.get('missed_pct'))} / {_pct(s.get('phantom_pct'))} / {_iou(s.get('mean_iou'))}"

        rows.append([comparison.get("title", comparison.get("key")), cell(naive),
                     cell(by_name.get("detmix boxes only", {})), cell(recipe),
                     cell(by_name.get("detmix with masks", {}))])
    if not rows:
        return None
    return md_table(["mode (shared draw)", "classification version", "detmix boxes only",
                     "detmix boxes only, the mode's recipe", "detmix with masks"], rows, "lrrrr")


def render_fidelity(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"Annotation fidelity (`{name}`)")
    config = data.get("config", {})
    threshold = str(config.get("min_pixels", 16))
    strict = [str(t) for t in config.get("thresholds", []) if str(t) != threshold]
    section.add(provenance(data), "")
    datasets = ", ".join(f"`{_shown(a)}`" for a, _ in config.get("datasets", []))
    section.add(
        f"{config.get('pairs')} random pairs of {config.get('images')} photographs ({datasets}), letterboxed to "
        f"{config.get('size')}x{config.get('size')}; seed {config.get('seed')}. The truth is computed from the "
        f"instance masks (see `bench/fidelity.py` for every definition). An object is *visible* with at least "
        f"{threshold} visible pixels; objects with fewer (but some) are slivers, don't care. **Missed**: a visible "
        "object with no box of its class at IoU >= 0.5 (one-to-one greedy matching). **Phantom**: a box matched to "
        "no visible object or sliver. **Mean IoU**: of the matched boxes to the true visible boxes. **Weight MAE**: "
        "mean |weight - true weight| of the matched boxes (true weight: visible fraction for CutMix and the region "
        "family, the image's share for MixUp), for mixers that give weights.", "")
    if data.get("not_available"):
        section.add("Not installed when this ran, so left out: " +
                    "; ".join(f"`{k}` ({v})" for k, v in data["not_available"].items()), "")
    goals = fidelity_goals(data)
    if goals:
        section.add("### The goals of issue #6, checked", "", *goals, "")
    glance = family_table(data)
    if glance:
        section.add(
            "### The region family (issue #14): Cutout, ResizeMix, FMix, SaliencyMix", "",
            "Each mode on its own draw (its named recipe's sampler, shared by every mixer of its table), scored "
            "against its *classification version*: the same pixels, the annotation left as the dataset gave it "
            "(`a`'s boxes as they were, none of `b`'s), which is what an image-classification implementation "
            "(timm, torchvision, mmpretrain) hands a detection pipeline. Cells: missed % / phantom % / mean IoU "
            f"(min_pixels {threshold}); each mode's full table is below.", "", glance, "")
        family_goals = fidelity_goals(data, issue=14)
        if family_goals:
            section.add("### The goals of issue #14, checked", "", *family_goals, "")

    headers = ["mixer", "trials", "visible", "missed", "boxes", "phantom", "mean IoU", "IoU ≥ 0.99", "weight MAE"]
    plot_rows: list[tuple[str, float, float]] = []
    for comparison in data.get("comparisons", []):
        section.add(f"### {comparison.get('title')}", "", f"*{comparison.get('note', '')}*", "")
        rows = []
        for row in comparison.get("rows", []):
            s = row["by_min_pixels"].get(threshold, {})
            rows.append([row["mixer"], s.get("trials"), s.get("visible_objects"),
                         f"{s.get('missed')} ({_pct(s.get('missed_pct'))})", s.get("boxes"),
                         f"{s.get('phantom')} ({_pct(s.get('phantom_pct'))})", _iou(s.get("mean_iou")),
                         _pct(s.get("iou_ge_0.99_pct")), fmt(s.get("weight_mae"), 3)])
            plot_rows.append((f"{row['mixer']} [{comparison.get('key')}]", s.get("missed_pct") or 0.0,
                              s.get("phantom_pct") or 0.0))
        section.add(md_table(headers, rows), "")
        extra = {k: v for k, v in comparison.items() if k.startswith("ultralytics_") and v is not None}
        if extra:
            section.add("; ".join(f"{k.replace('_', ' ')}: {fmt(v)}" for k, v in extra.items()), "")
        section.add("How each was driven: " + "; ".join(f"*{r['mixer']}*: {r.get('how', '')}"
                                                          for r in comparison.get("rows", [])) + ".", "")
    for t in strict:
        section.add(f"### Strict reading: every visible pixel counts (min_pixels = {t})", "")
        rows = []
        for comparison in data.get("comparisons", []):
            for row in comparison.get("rows", []):
                s = row["by_min_pixels"].get(t)
                if s:
                    rows.append([f"{row['mixer']} — {comparison.get('title')}", s.get("visible_objects"),
                                 f"{s.get('missed')} ({_pct(s.get('missed_pct'))})", s.get("boxes"),
                                 f"{s.get('phantom')} ({_pct(s.get('phantom_pct'))})", _iou(s.get("mean_iou"))])
        section.add(md_table(["mixer — comparison", "visible", "missed", "boxes", "phantom", "mean IoU"], rows), "")

    if plot_rows:
        def draw(fig: Any) -> None:
            labels = [r[0] for r in plot_rows]
            ax = fig.add_subplot(1, 1, 1)
            ys = list(range(len(labels)))[::-1]
            ax.barh([y + 0.2 for y in ys], [r[1] for r in plot_rows], height=0.4, color="#c0392b", label="missed %")
            ax.barh([y - 0.2 for y in ys], [r[2] for r in plot_rows], height=0.4, color="#7f8c8d", label="phantom %")
            ax.set_yticks(ys)
            ax.set_yticklabels(labels, fontsize=7)
            ax.set_xlabel(f"missed: % of visible objects; phantom: % of boxes (min_pixels {threshold})")
            ax.legend(loc="lower right", fontsize=8)
            ax.grid(axis="x", alpha=0.3)

        image = plots.save("fidelity", draw, size=(9.0, 0.28 * len(plot_rows) + 1.5))
        if image:
            section.add(image, "")
    return section


def render_per_sample(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"Per-sample speed, CPU (`{name}`)")
    config = data.get("config", {})
    section.add(provenance(data), "")
    section.add(f"One sample at a time, {config.get('images')} photographs resized to {config.get('size')}x"
                f"{config.get('size')} ({fmt(config.get('mean_boxes_per_image'))} boxes each on average), median of "
                f"{config.get('repeats')} calls per case, cases interleaved round-robin in one process. `x copy`: "
                "median / median of the numpy copy of one image (the memory bound).", "")
    rows = data.get("rows", [])
    section.add(md_table(["method", "median ms", "p10–p90 ms", "calls/s", "x copy", "note"],
                         [[r["method"], fmt(r.get("median_ms")), f"{fmt(r.get('p10_ms'))}–{fmt(r.get('p90_ms'))}",
                           fmt(r.get("calls_per_s")), fmt(r.get("x_copy")), r.get("note", "")] for r in rows],
                         "lrrrrl"), "")
    for r in rows:
        if r.get("median_ms_when_mixed") is not None or r.get("median_ms_when_skipped") is not None:
            section.add(f"{r['method']}: median {fmt(r.get('median_ms_when_mixed'))} ms on the calls that mixed, "
                        f"{fmt(r.get('median_ms_when_skipped'))} ms on those that did nothing.", "")
    if data.get("not_available"):
        section.add("Not available when this ran: " + "; ".join(data["not_available"]), "")
    usable = [r for r in rows if r.get("median_ms")]
    if usable:
        image = plots.save(
            Path(name).stem, lambda fig: _barh(fig, [r["method"] for r in usable], [r["median_ms"] for r in usable],
                                               "ms per call (median, p10–p90), log scale",
                                               "One sample, 640x640, CPU", log=True,
                                               errors=([r.get("p10_ms", r["median_ms"]) for r in usable],
                                                       [r.get("p90_ms", r["median_ms"]) for r in usable]),
                                               highlight=lambda label: label.startswith("detmix")),
            size=(9.0, 0.35 * len(usable) + 1.5))
        if image:
            section.add(image, "")
    return section


def render_core(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"Core kernels, one pair at a time (`{name}`)")
    section.add(provenance(data), "")
    section.add(f"{data.get('image', '')}, {data.get('boxes_per_image', '?')} boxes per image, median of "
                f"{data.get('repeats', '?')} runs.", "")
    rows = data.get("rows", [])
    section.add(md_table(["case", "what", "ms", "images/s", "x copy"],
                         [[r.get("case"), r.get("what"), fmt(r.get("ms")), fmt(r.get("images_per_s")),
                           fmt(r.get("x_copy"))] for r in rows], "llrrr"), "")
    usable = [r for r in rows if r.get("ms")]
    if usable:
        image = plots.save(Path(name).stem, lambda fig: _barh(
            fig, [f"{r.get('case')}: {r.get('what')}" for r in usable], [r["ms"] for r in usable],
            "ms per pair (median), log scale", "detmix.functional, one pair, CPU", log=True,
            highlight=lambda label: "detmix" in label), size=(9.0, 0.3 * len(usable) + 1.5))
        if image:
            section.add(image, "")
    return section


def render_batch(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"Batches (`{name}`)")
    section.add(provenance(data), "")
    config = data.get("config", {})
    if config:
        section.add("Configuration: " + ", ".join(f"{k} {v}" for k, v in config.items() if v is not None), "")
    rows = data.get("results", [])
    table = []
    for r in rows:
        median = r.get("median_s")
        table.append([r.get("method"), r.get("dtype"), fmt(None if median is None else 1e3 * median),
                      fmt(r.get("images_per_s")), fmt(r.get("x_copy")), r.get("note", "")])
    section.add(md_table(["method", "dtype", "median ms", "images/s", "x copy", "note"], table, "llrrrl"), "")
    usable = [r for r in rows if r.get("images_per_s")]
    if usable:
        image = plots.save(Path(name).stem, lambda fig: _barh(
            fig, [f"{r.get('method')} [{r.get('dtype')}]" for r in usable], [r["images_per_s"] for r in usable],
            "images per second (median), log scale", f"Batch of {config.get('batch', '?')} x {config.get('size', '?')}"
            f"px on {config.get('device', '?')}", log=True, highlight=lambda label: "BatchMix" in label),
            size=(9.0, 0.28 * len(usable) + 1.5))
        if image:
            section.add(image, "")
    return section


def render_service(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"REST service (`{name}`)")
    section.add(provenance(data), "")
    settings = data.get("settings", {})
    bound = data.get("codec_bound", {})
    if settings:
        section.add(f"`{settings.get('endpoint', '')}`, batches of {settings.get('batch')} photographs, "
                    f"{settings.get('workers')} server workers, {settings.get('seconds_per_level')} s per level.", "")
    if bound:
        section.add(f"Codec bound (decode + encode in one process): {fmt(bound.get('images_per_s_per_core'))} "
                    "images/s per core.", "")
    if data.get("goal"):
        section.add(f"Goal: {data['goal']}.", "")
    levels = data.get("levels", [])
    section.add(md_table(["variant", "concurrency", "images/s", "p50 ms", "p99 ms", "images/s per core",
                          "of bound per core", "images per server CPU-s", "of bound per CPU-s"],
                         [[lv.get("variant", ""), lv.get("concurrency"), fmt(lv.get("images_per_s")),
                           fmt(lv.get("p50_ms")),
                           fmt(lv.get("p99_ms")), fmt(lv.get("images_per_s_per_core")),
                           _pct(None if lv.get("fraction_of_bound_per_core") is None
                                else 100 * lv["fraction_of_bound_per_core"]),
                           fmt(lv.get("images_per_server_cpu_s")),
                           _pct(None if lv.get("fraction_of_bound_per_cpu_s") is None
                                else 100 * lv["fraction_of_bound_per_cpu_s"])] for lv in levels], "lrrrrrrrr"), "")
    breakdown = data.get("breakdown", {})
    if breakdown:
        stages = list(dict.fromkeys(k for b in breakdown.values() for k in b.get("stages_ms", {})))
        budget = f", so the 70% goal allows {fmt(bound['ms_per_batch'] / 0.7)} ms" if bound.get("ms_per_batch") else ""
        section.add(f"Where a batch's server CPU goes, in ms (codec bound {fmt(bound.get('ms_per_batch'))} ms per "
                    f"batch{budget}); stages from cProfile of the service's own `run_mix` in one process, "
                    "HTTP etc. = server CPU per batch under load minus that in-process total:", "")
        section.add(md_table(["variant", "server", "in-process", *stages, "HTTP etc."],
                             [[variant, fmt(b.get("server_cpu_ms_per_batch")), fmt(b.get("cpu_ms_per_batch")),
                               *[fmt(b["stages_ms"].get(k)) for k in stages], fmt(b.get("http_and_rest_ms"))]
                              for variant, b in breakdown.items()], "l" + "r" * (len(stages) + 3)), "")
    if levels:
        def draw(fig: Any) -> None:
            ax = fig.add_subplot(1, 2, 1)
            ax2 = fig.add_subplot(1, 2, 2)
            for variant in dict.fromkeys(lv.get("variant", "") for lv in levels):
                pts = sorted((lv["concurrency"], lv.get("images_per_s"), lv.get("p50_ms"), lv.get("p99_ms"))
                             for lv in levels if lv.get("variant", "") == variant)
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], marker="o", label=variant or "service")
                ax2.plot(xs, [p[2] for p in pts], marker="o", label=f"{variant} p50")
                ax2.plot(xs, [p[3] for p in pts], marker="x", linestyle="--", label=f"{variant} p99")
            cores = _get(data, "machine", "cores")
            if bound.get("images_per_s_per_core") and cores:
                ax.axhline(bound["images_per_s_per_core"] * cores, color="#999999", linestyle=":",
                           label="codec bound x cores")
            for a, ylabel in ((ax, "images/s"), (ax2, "ms per request")):
                a.set_xscale("log", base=2)
                a.set_xlabel("concurrent clients")
                a.set_ylabel(ylabel)
                a.grid(alpha=0.3)
                a.legend(fontsize=7)
            ax.set_title("Throughput", fontsize=10)
            ax2.set_title("Latency", fontsize=10)

        image = plots.save(Path(name).stem, draw, size=(10.0, 4.0))
        if image:
            section.add(image, "")
    return section


def render_training(name: str, data: dict[str, Any], plots: Plots) -> Section:
    section = Section(f"Training effect (`{name}`)")
    section.add(provenance(data), "")
    arms = data.get("arms", [])
    options = data.get("train_options", {})
    if data.get("smoke"):
        section.add("**A CPU smoke test**, not a result: a few iterations on the embedded synthetic dataset show "
                    "that the three arms run the same schedule end to end and are scored by COCOeval; their mAPs at "
                    "this length are noise. The real comparison needs a GPU and COCO (command in "
                    "`bench/training_effect.py`).",
                    "")
    if arms:
        first = arms[0]
        section.add(f"Model `{options.get('model')}`, data `{first.get('data')}` ({first.get('train_images')} train / "
                    f"{first.get('val_images')} val images), {options.get('epochs')} epochs"
                    + (f" of at most {options.get('max_iters')} iterations" if options.get("max_iters") else "")
                    + f", batch {options.get('batch_size')}, lr {options.get('lr')}, recipe `{options.get('recipe')}`"
                    f" ({options.get('mix_per')}), seed {options.get('seed')}, device {options.get('device')}.", "")
    section.add(md_table(["arm", "mixer", "box weights", "mAP", "AP50", "AP75", "last train loss", "seconds"],
                         [[a.get("arm"), a.get("mixer") or "none", a.get("box_weights"),
                           fmt(_get(a, "final", "mAP"), 4), fmt(_get(a, "final", "AP50"), 4),
                           fmt(_get(a, "final", "AP75"), 4), fmt(a.get("final_train_loss"), 4), fmt(a.get("seconds"))]
                          for a in arms], "lllrrrrr"), "")
    section.add("Training losses are computed on each arm's own targets (the classification arm drops the partner's "
                "boxes, so it has less to fit): compare them within an arm, not across arms.", "")
    if any(a.get("history") for a in arms):
        def draw(fig: Any) -> None:
            ax = fig.add_subplot(1, 2, 1)
            ax2 = fig.add_subplot(1, 2, 2)
            for a in arms:
                hist = a.get("history", [])
                xs = [h["epoch"] for h in hist]
                ax.plot(xs, [h.get("loss") for h in hist], marker="o", label=a.get("arm"))
                ax2.plot(xs, [h.get("bbox_mAP") for h in hist], marker="o", label=a.get("arm"))
            ax.set_title("training loss (own targets)", fontsize=10)
            ax2.set_title("val bbox mAP (COCOeval)", fontsize=10)
            from matplotlib.ticker import MaxNLocator

            for a_ in (ax, ax2):
                a_.xaxis.set_major_locator(MaxNLocator(integer=True))
                a_.set_xlabel("epoch")
                a_.grid(alpha=0.3)
                a_.legend(fontsize=8)

        image = plots.save(Path(name).stem, draw, size=(10.0, 3.8))
        if image:
            section.add(image, "")
    return section


def render_service_budget(name: str, data: dict[str, Any], plots: Plots) -> Section:
    """bench/service_budget.py: one row per request, the server's peak RSS and CPU for it."""
    section = Section(f"REST service: memory and CPU of one batch (`{name}`)")
    budget = data.get("budget")
    section.add(f"**machine** {data.get('machine', '–')}, python {data.get('python', '–')}; memory budget per "
                f"batch: {'the default' if budget is None else fmt(budget) + ' bytes'} (the file records no date). "
                "Peak RSS above the server's RSS before the request, CPU seconds of the server "
                "(`bench/service_budget.py`; the prices and limits they back are in docs/service.md).", "")
    rows = data.get("rows") if isinstance(data.get("rows"), dict) else {}
    section.add(md_table(["request", "status", "error type", "body MiB", "peak MiB", "CPU s", "wall s", "idle RSS MiB"],
                         [[k, v.get("status"), v.get("type") or "", v.get("body_mib"), v.get("peak_mib"),
                           v.get("cpu_s"), v.get("wall_s"), v.get("idle_rss_mib")] for k, v in rows.items()],
                         "lrlrrrrr"), "")
    return section


def render_other(name: str, data: Any, plots: Plots) -> Section:
    """Any JSON: its provenance and every list of flat records as a table."""
    section = Section(f"Other results (`{name}`)")
    if isinstance(data, dict):
        section.add(provenance(data), "")
        for key, value in data.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                columns = [k for k in value[0] if not isinstance(value[0][k], (dict, list))]
                section.add(f"`{key}`:", "", md_table(columns, [[v.get(c) for c in columns] for v in value],
                                                       "l" * len(columns)), "")
    else:
        section.add(f"(a JSON {type(data).__name__}, not rendered)")
    return section


RENDERERS: dict[str, Callable[[str, Any, Plots], Section]] = {
    "fidelity": render_fidelity,
    "per-sample": render_per_sample,
    "core": render_core,
    "batch": render_batch,
    "service-budget": render_service_budget,
    "service": render_service,
    "training-effect": render_training,
    "other": render_other,
}


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


def generate(results: Path, out: Path, images: Path, *, plots: bool = True,
             now: datetime | None = None) -> dict[str, Any]:
    """Write ``out`` from the JSON files in ``results``; returns what was done: ``files`` (name ->
    kind or error), ``missing`` (expected names absent), ``plots`` (paths written), ``stale``
    (old plots removed)."""
    now = now or datetime.now(timezone.utc)
    painter = Plots(images, out, enabled=plots)
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    status: dict[str, str] = {}
    sections: dict[str, list[str]] = {kind: [] for kind, _ in KINDS}
    sections["other"] = []
    problems: list[str] = []
    for path in files:
        kind = kind_of(path.name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            status[path.name] = f"unreadable: {error}"
            problems.append(f"- `{path.name}` could not be read: {error}")
            continue
        try:
            if kind != "other" and not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got a {type(data).__name__}")
            sections[kind].append(RENDERERS[kind](path.name, data, painter).render())
            status[path.name] = kind
        except Exception as error:  # noqa: BLE001 - a bad file must not stop the report
            status[path.name] = f"not rendered: {type(error).__name__}: {error}"
            last = traceback.extract_tb(error.__traceback__)[-1]
            problems.append(f"- `{path.name}` could not be rendered as {kind}: {type(error).__name__}: {error} "
                            f"(report.py line {last.lineno}); its generic table follows.")
            sections["other"].append(render_other(path.name, data, painter).render())
    missing = [name for name in EXPECTED if not (results / name).is_file()]
    stale = painter.remove_stale()

    shown_results = _relpath(results, REPO) if results.is_absolute() else results
    lines = [
        "# Benchmarks",
        "",
        f"*Generated by `python bench/report.py` on {now.strftime('%Y-%m-%d %H:%M UTC')} (Python "
        f"{platform.python_version()}) from the JSON files in `{shown_results}/`. "
        "Do not edit by hand: `make bench` runs every benchmark and regenerates this page. Each section "
        "names the machine, versions and date of its own run.*",
        "",
        "| results file | section | recorded |",
        "| --- | --- | --- |",
    ]
    for path in files:
        recorded = ""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                recorded = str(data.get("date") or _get(data, "machine", "date") or "")
        except (OSError, ValueError):
            pass
        lines.append(f"| `{path.name}` | {fmt(status.get(path.name, ''))} | {recorded} |")
    if not files:
        lines.append("| (none) | | |")
    lines.append("")
    if missing:
        lines += ["**Missing** (not in the results folder, so not in this report):", ""]
        lines += [f"- `{name}`: `{EXPECTED[name]}`" for name in missing]
        lines.append("")
    if problems:
        lines += ["**Problems:**", "", *problems, ""]
    if painter.unavailable:
        lines += [f"*No plots: {painter.unavailable}.*", ""]
    for kind, _ in (*KINDS, ("other", "")):
        for text in sections[kind]:
            lines.append(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return {"files": status, "missing": missing, "plots": painter.written, "stale": stale,
            "plots_unavailable": painter.unavailable}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="folder of the JSON results")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of the bench-*.png plots")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    done = generate(args.results, args.out, args.images, plots=not args.no_plots)
    print(f"wrote {args.out}: {len(done['files'])} results files, {len(done['plots'])} plots"
          + (f", missing {done['missing']}" if done["missing"] else "")
          + (f" ({done['plots_unavailable']})" if done["plots_unavailable"] else ""))
    for name, kind in done["files"].items():
        if kind.startswith(("unreadable", "not rendered")):
            print(f"  {name}: {kind}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
