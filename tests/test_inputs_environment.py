"""Environments a user meets: a compute node without internet, a damaged download, a terminal that
cannot show every character. Each test names the public report it was rebuilt from."""
from __future__ import annotations

import io
import sys
import urllib.error

import pytest
import torch

from apga.errors import ConfigError
from apga.models import build_classifier


def test_imagenet_weights_without_internet_or_damaged_are_one_line(tmp_path, monkeypatch):
    """`--pretrained 1` on a node without internet (pytorch/vision#1876, facebookresearch/pycls#133:
    URLError tracebacks) and with a truncated file from an interrupted download in torch.hub's folder
    (a RuntimeError from torch.load): one line saying where the file goes, or to delete it."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, destination, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match=r"cannot download the ImageNet weights https://download.pytorch.org/models/"
                                          r"densenet121-a639ec97.pth \(<urlopen error .*copy densenet121-a639ec97.pth "
                                          r"into .*hub/checkpoints .*--pretrained 0"):
        build_classifier("densenet121", pretrained=True)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)  # made by the first try
    (tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth").write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(ConfigError, match=r"densenet121-a639ec97.pth cannot be read .*delete the file and rerun"):
        build_classifier("densenet121", pretrained=True)


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped(monkeypatch, capsys):
    """A data set named `左肘` printed to an ASCII or Latin-1 terminal (yadayada/acd_cli#168,
    projecthamster/hamster#94: UnicodeEncodeError once the work was done): escaped, not a traceback."""
    from apga.utils import configure_logging

    with capsys.disabled():
        raw = io.BytesIO()
        ascii_terminal = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
        monkeypatch.setattr(sys, "stdout", ascii_terminal)
        configure_logging()
        print("| \u5de6\u8098-all-val | R\u00f6ntgen |")
        ascii_terminal.flush()
        monkeypatch.undo()
    assert raw.getvalue() == b"| \\u5de6\\u8098-all-val | R\\xf6ntgen |\n"


def test_a_title_in_a_script_the_plot_font_lacks_is_one_notice(tmp_path, capsys):
    """A data set named in Chinese (a CSV `左肘.csv`): matplotlib warns once per missing glyph and per
    draw (matplotlib/matplotlib#14269, #20251); the plot is written and one notice names them."""
    import warnings

    from apga.reporting.plots import _pyplot, _save

    figure, axis = _pyplot().subplots()
    axis.set_title("\u5de6\u8098: paired differences from the baseline")
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _save(figure, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000 and not [w for w in caught if "Glyph" in str(w.message)]
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "plot.png: matplotlib's font has no" in notices[0] and "5DE6" in notices[0]
