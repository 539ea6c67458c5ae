"""The qgen command: one-line expected errors, tracebacks for bugs, listings, help, and a torch-free start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from qgen import cli, vocab
from qgen.cli import LISTABLE, build_parser, main
from qgen.corruptions import CORRUPTIONS
from qgen.errors import QgenError

ROOT = Path(__file__).resolve().parents[1]


def qgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qgen.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help_show_no_raw_restructured_text() -> None:
    assert qgen("--version").stdout.strip() == f"qgen {cli.__version__}"
    parser = build_parser()
    subcommands = next(
        a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))
    )
    helps = [parser.format_help(), *(sub.format_help() for sub in subcommands.choices.values())]
    assert len(helps) > 15
    for text in helps:
        assert not re.search(r"``|:(func|class|mod|data|attr):", text), text


@pytest.mark.parametrize("what", LISTABLE)
def test_list_names_every_entry_of_the_vocabulary(what: str) -> None:
    names = [line.split()[0] for line in cli._listing(what)]
    expected = {
        "models": sorted(vocab.MODEL_ARGUMENTS),
        "datasets": list(vocab.DATASETS),
        "precisions": list(vocab.PRECISIONS),
        "measures": [m.name for m in vocab.MEASURES],
        "summaries": list(vocab.SUMMARIES),
        "augmentations": list(vocab.AUGMENTATIONS),
        "corruptions": list(CORRUPTIONS),
    }[what]
    assert names == expected
    assert "nin  depth=2 width=8 base_width=25" in cli._listing("models")


def test_table_jobs_and_listings_import_no_torch() -> None:
    """`qgen summarize/render/report` and `qgen list` start without torch (it costs seconds per call)."""
    code = (
        "import sys; import qgen.cli, qgen.summary, qgen.tables, qgen.report, qgen.config; "
        "from qgen.cli import _listing; [_listing(w) for w in ('models', 'datasets', 'summaries')]; "
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, caplog) -> None:
    proc = qgen("render", "table9", "--csv", "x.csv", "--config", "x.json", "--template", "t", "--out", "o")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1

    def bug(args: object) -> None:
        raise RuntimeError("CUDA out of memory")

    def expected(args: object) -> None:
        raise QgenError("results/x.csv: stale")

    parser = build_parser()
    for func, outcome in ((bug, RuntimeError), (expected, 1)):
        monkeypatch.setattr(cli, "build_parser", lambda func=func: _with_func(parser, func))
        if outcome is RuntimeError:
            with pytest.raises(RuntimeError, match="CUDA out of memory"):
                main(["list", "models"])
        else:
            assert main(["list", "models"]) == 1
            assert "results/x.csv: stale" in caplog.text


def _with_func(parser, func):
    """``parser`` whose `list` subcommand runs ``func``."""
    parser.set_defaults(func=func)
    subcommands = next(
        a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))
    )
    subcommands.choices["list"].set_defaults(func=func)
    return parser
