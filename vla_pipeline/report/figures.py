"""The report's pictures, as bytes ready to embed: training curves (matplotlib, PNG) and
rollout previews (a still strip and an animated WebP per evaluation video: lossy WebP is
about 8x smaller than GIF here, which keeps a page of ~300 previews openable)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json

VIDEO_NAME = re.compile(r"^(?P<task>.+)-(?P<split>test|validation|train)-(?P<variation_seed>\d+)-(?P<variation>\d+)"
                        r"-(?P<outcome>success|fail)\.mp4$")
STRIP_FRAMES = 6  # stills per strip, evenly spaced over the episode
PREVIEW_FRAMES = 24  # frames of the animated preview
PREVIEW_SIZE = 96  # pixels, the animated preview's side (a view of the video)
STRIP_SIZE = 72  # pixels, the height of one still
WEBP_QUALITY = 75


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # No timestamps or software tags inside outputs: the same curves give the same bytes.
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _new_figure(panels: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 3.4), squeeze=False)
    return fig, list(axes[0])


def _records(path: Path) -> list[dict]:
    data = read_json(path, "training curve")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise PipelineError(f"{path}: not a training curve (a list of records)")
    return data


SMOOTHING = 5  # iterations per moving mean: one iteration's rollout success is noisy (~1,000 env steps)


def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` finite values (NaN where there are none yet)."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        part = values[max(0, i - window + 1):i + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out


def rl_curves(metrics_dir: Path, chains: dict[str, list[str]]) -> bytes | None:
    """Success rate and steps to success of the rollouts against cumulative env steps, one line
    per RL chain (its rounds joined in order)."""
    lines = {}
    for chain, rounds in chains.items():
        steps, success, to_success, total = [], [], [], 0
        for name in rounds:
            path = metrics_dir / f"train-{name}.json"
            if not path.is_file():
                continue
            for rec in _records(path):
                if "env_steps" not in rec:
                    break  # a supervised round of the chain: no env steps
                total += rec["env_steps"]
                steps.append(total)
                success.append(rec.get("success_rate"))
                to_success.append(rec.get("steps_to_success"))
        if steps:
            lines[chain] = (steps, success, to_success)
    if not lines:
        return None
    fig, (left, right) = _new_figure(2)
    colours = _distinct_colours(len(lines))
    for colour, (chain, (steps, success, to_success)) in zip(colours, lines.items()):
        for ax, values in ((left, success), (right, to_success)):
            raw = np.array([np.nan if v is None else v for v in values], float)
            ax.plot(steps, raw, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _moving_mean(raw, SMOOTHING), color=colour, label=chain)
    for ax in (left, right):
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k")  # 140000 crowds the axis
    left.set(xlabel="env steps", ylabel="rollout success rate",
             title=f"RL chains: success (faint: per iteration; bold: mean of {SMOOTHING})")
    right.set(xlabel="env steps", ylabel="steps to success", title="RL chains: steps to success")
    left.legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


def _distinct_colours(n: int) -> list:
    """Matplotlib's 10 default colours, or tab20's 20 when more lines share an axis."""
    import matplotlib

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return [matplotlib.colormaps["tab20"](i % 20) for i in range(n)]


def loss_curves(metrics_dir: Path, names: list[str], title: str) -> bytes | None:
    """Supervised loss against optimiser step, one line per run."""
    fig, (ax,) = _new_figure(1, 6.0)
    drawn = 0
    for name in names:
        path = metrics_dir / f"train-{name}.json"
        if path.is_file():
            recs = [r for r in _records(path) if "loss" in r]
            if recs:
                ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label=name)
                drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


OFFLINE_PANELS = (("td_loss", "TD loss"), ("q_data", "Q on data chunks"), ("bc_loss", "BC loss (chunk MSE)"),
                  ("cql_term", "conservative term"))


def offline_curves(metrics_dir: Path, names: list[str]) -> bytes | None:
    """CO-RFT's offline curves: TD loss, Q on the data, BC loss and the conservative term."""
    curves = {n: _records(metrics_dir / f"train-{n}.json") for n in names if (metrics_dir / f"train-{n}.json").is_file()}
    if not curves:
        return None
    fig, axes = _new_figure(len(OFFLINE_PANELS), 3.6)
    for ax, (key, title) in zip(axes, OFFLINE_PANELS):
        for name, recs in curves.items():
            pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set(xlabel="step", title=title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


@dataclass(frozen=True)
class Preview:
    method: str
    task: str
    outcome: str  # success | fail
    episode: str  # split, variation seed and variation, to find it in the tables
    strip_webp: bytes
    animation_webp: bytes


def _read_frames(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        frames = iio.imread(path)
    except Exception as exc:  # a truncated or foreign file: say which (ffmpeg's first line only)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: not a readable video ({first})") from None
    if frames.ndim != 4 or len(frames) == 0:
        raise PipelineError(f"{path}: not a video (frames of shape {frames.shape})")
    return frames


def _resize(frame: np.ndarray, height: int):
    from PIL import Image

    image = Image.fromarray(frame)
    width = round(image.width * height / image.height)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _strip(frames: np.ndarray) -> bytes:
    from PIL import Image

    picks = np.linspace(0, len(frames) - 1, STRIP_FRAMES).round().astype(int)
    tiles = [_resize(frames[i], STRIP_SIZE) for i in picks]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), STRIP_SIZE), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    buf = io.BytesIO()
    strip.save(buf, format="WEBP", quality=WEBP_QUALITY, method=4)
    return buf.getvalue()


def _animation(frames: np.ndarray, fps: int = 20) -> bytes:
    picks = np.linspace(0, len(frames) - 1, min(PREVIEW_FRAMES, len(frames))).round().astype(int)
    tiles = [_resize(frames[i], PREVIEW_SIZE) for i in picks]
    # Real-time pace: each kept frame stands for the frames skipped before the next one.
    duration = max(20, round(1000 * len(frames) / fps / len(tiles)))
    buf = io.BytesIO()
    tiles[0].save(buf, format="WEBP", save_all=True, append_images=tiles[1:], duration=duration, loop=0,
                  quality=WEBP_QUALITY, method=4)
    return buf.getvalue()


def previews(videos_dir: Path, method: str) -> list[Preview]:
    """One success and one failure per task (where the evaluation recorded them), in task order."""
    folder = videos_dir / method
    if not folder.is_dir():
        return []
    chosen: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.glob("*.mp4")):
        match = VIDEO_NAME.match(path.name)
        if match:
            chosen.setdefault((match["task"], match["outcome"]), path)
    out = []
    for (task, outcome), path in sorted(chosen.items()):
        match = VIDEO_NAME.match(path.name)
        frames = _read_frames(path)
        out.append(Preview(method, task, outcome, f"{match['split']} {match['variation_seed']}/{int(match['variation'])}",
                           _strip(frames), _animation(frames)))
    return out
