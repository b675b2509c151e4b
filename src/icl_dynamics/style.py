"""One figure style for every matplotlib figure of the package: sizes for a two-column paper, fonts, colours,
and the files a figure is written to (:func:`save_formats`: png, pdf, svg).

Widths follow a two-column layout (one column 3.4 in, the full page 7.0 in); fonts are 8 pt (9 pt titles),
so a figure placed at its natural width needs no rescaling. Figures are drawn inside :func:`context`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import UserError  # noqa: E402

COLUMN = 3.4  # in, one column of a two-column paper
FULL = 7.0  # in, the full page width
ROW = 2.3  # in, the height of one row of panels
DPI = 200  # PNG resolution: sharp at the widths above

DOMINANT, MINOR, BALANCED = "#c0392b", "#2c7fb8", "#238b45"
PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
PHASE_NAMES = ("I", "II", "III", "IV")
FORMATS = ("png", "pdf", "svg")
THEORY = "0.35"  # grey of theory reference lines

RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "legend.handlelength": 1.6,
    "legend.labelspacing": 0.3,
    "legend.borderaxespad": 0.3,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.direction": "out",
    "ytick.direction": "out",
    "axes.grid": False,
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "svg.fonttype": "none",
    "mathtext.default": "regular",
}


@contextmanager
def context() -> Iterator[None]:
    """Draw inside this so that every figure gets the same fonts and line widths."""
    with plt.rc_context(RC):
        yield


def figsize(width: float = COLUMN, rows: float = 1.0, height: float | None = None) -> tuple[float, float]:
    """(width, height) in inches: ``rows`` rows of panels of height ``ROW`` unless ``height`` is given."""
    return width, height if height is not None else ROW * rows


def check_formats(formats) -> tuple[str, ...]:
    """The requested figure formats, deduplicated in order; UserError for an unknown one."""
    out = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in (formats or ("png",))))
    bad = [f for f in out if f not in FORMATS]
    if bad:
        raise UserError(f"--format '{bad[0]}' is not one of {', '.join(FORMATS)}")
    return out


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` atomically in the format of ``path``'s suffix (the folder must exist) and close it."""
    from .storage import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=(path.suffix.lstrip(".") or "png").lower(), dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


def save_formats(fig, stem: str | Path, formats=("png",), dpi: int = DPI) -> list[Path]:
    """Write ``fig`` as stem.<format> for every format; returns the paths."""
    from .storage import atomic_write_bytes

    stem = Path(stem)  # its folder comes from safe_dir / prepare_owned_dir: never made here
    paths = []
    for fmt in check_formats(formats):
        buf = io.BytesIO()
        # constrained layout already fits the figure: no second draw for a tight bounding box
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches=None if fig.get_layout_engine() else "tight")
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
