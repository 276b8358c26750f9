"""The report opens in headless Chromium with no console error and every chart drawn.

The run comes from the ``report_run_dir`` fixture (conftest.py): point it at a
real ``python -m sim`` run there and this test checks that run's report.
"""
from __future__ import annotations

import re

import pytest

from browser_driver import check_page, find_chromium
from results.report import build_report

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium binary on PATH (install Debian's `chromium` to run the browser check)")


@pytest.fixture(scope="module")
def report(report_run_dir):
    return build_report(report_run_dir, progress=False)


def test_report_renders_in_chromium_without_errors(report):
    check = check_page(report.html_path, timeout_s=90)
    assert check.console_errors == []
    assert check.chart_errors == []
    assert check.empty_charts == []
    assert check.charts_total == len(report.charts) >= 7
    assert check.charts_rendered == check.charts_total


def test_every_chart_file_is_non_empty(report):
    names = set(report.charts)
    for name in names:
        png = report.html_path.parent / "charts" / f"{name}.png"
        svg = report.html_path.parent / "charts" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
        text = svg.read_text()
        assert text.lstrip().startswith("<svg") and "<path" in text, svg


def test_the_check_catches_a_broken_page(report, tmp_path, report_run_dir):
    if "synthetic" not in report_run_dir.name:
        pytest.skip("checked once, on the synthetic run's page")
    # The same page with a chart whose spec is broken and a stray fetch must fail.
    html = report.html_path.read_text()
    name = next(iter(report.charts))
    broken = re.sub(f'(id="spec-{name}">)[^<]*', r'\1{"mark": "nonsense"}', html, count=1)
    broken = broken.replace("</main>", '<img src="https://example.invalid/x.png"></main>')
    page = tmp_path / "broken.html"
    page.write_text(broken)
    check = check_page(page, timeout_s=90)
    assert not check.ok
    assert any(name in e for e in check.chart_errors)
    assert any("example.invalid" in e for e in check.console_errors)
