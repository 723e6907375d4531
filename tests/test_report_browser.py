"""The HTML report as a person sees it: rendered by headless Chromium (skipped where none is installed)."""

import matplotlib.image
import pytest

from nora.cli import main
from nora.errors import NoraError
from nora.report import write_report
from nora.report.browser import find_browser, rendered_dom


@pytest.fixture(scope="module")
def curve_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = root / "run.yaml"
    config.write_text(f"name: shown\noutput_dir: {root}\ndata: {{dataset: digits}}\nmodel: {{arch: lenet5}}\n"
                      "train: {epochs: 2, lr: 0.003, progress: false}\n")
    assert main(["train", "--config", str(config)]) == 0
    out = root / "curve"
    assert main(["curve", "--checkpoint", str(root / "shown"), "--sigma-range", "0.01", "10", "--per-decade", "2",
                 "--repeats", "2", "--output", str(out)]) == 0
    return out


needs_browser = pytest.mark.skipif(find_browser() is None, reason="no Chromium installed (apt-get install chromium)")


@needs_browser
def test_report_renders_with_its_plot_in_chromium(curve_folder):
    written = write_report(curve_folder, screenshot=True)
    shot = curve_folder / "report.png"
    assert shot in written
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[1] == 1200 and 300 < pixels.shape[0] < 8000
    # the plot's coloured lines are drawn: text and table rules are grey, the curve is blue and the
    # clean line green; an image that failed to load would leave none
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    assert (spread > 0.3).mean() > 0.001
    # the plot is embedded, not linked: the page holds no reference to a file beside it
    dom = rendered_dom(curve_folder / "report.html")
    assert dom.count('src="data:image/png;base64,') == 1 and 'src="curve.png"' not in dom
    assert "Measurements" in dom and "model lenet5" in dom


@needs_browser
def test_screenshot_from_the_command_line(curve_folder, capsys):
    assert main(["report", str(curve_folder), "--screenshot"]) == 0
    assert "report.png" in capsys.readouterr().out
    assert (curve_folder / "report.png").stat().st_size > 10_000


def test_screenshot_without_a_browser_is_one_clear_line(curve_folder, monkeypatch, capsys):
    monkeypatch.setenv("NORA_CHROMIUM", "no-such-browser-here")
    assert main(["report", str(curve_folder), "--screenshot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Chromium found") and "apt-get install chromium" in err


def test_screenshot_needs_the_html_format(curve_folder):
    with pytest.raises(NoraError, match="add html to --format"):
        write_report(curve_folder, ["md"], screenshot=True)


def test_embedded_plot_matches_the_file(curve_folder):
    import base64

    write_report(curve_folder, ["html"])
    html = (curve_folder / "report.html").read_text()
    embedded = html.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(embedded) == (curve_folder / "curve.png").read_bytes()
