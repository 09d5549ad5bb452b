"""The web studio in a real headless Chromium (Debian's, driven by Playwright), as a person uses it.

Upload a CSV and preview it, create a classification experiment on a tiny model, start it, stop it while it trains,
resume it, see it finish with its accuracy in the table and open its report; chat with a SmolLM2 quick-start run and
watch the answer stream in; compare two runs; look at the export page.

The browser is required: without Chromium these tests fail (``make test`` installs it). ``TUNELAB_SKIP_BROWSER=1``
skips them on purpose. With ``TUNELAB_STUDIO_SCREENSHOTS=DIR`` each page is saved as a PNG into DIR (that is how
``docs/studio/*.png`` are made: ``docs/studio/make_screenshots.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_studio import classification_values, stop_leftovers, studio_server

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("TUNELAB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("TUNELAB_STUDIO_SCREENSHOTS")
TUNELAB = str(Path(sys.executable).parent / "tunelab")
# Enough for the Stop click to land while the run trains (each tiny step takes milliseconds); more when the pages are
# photographed, so that the live chart has something to show.
STEPS = 3000 if SHOTS else 1000
PAGE_ERRORS: list[str] = []


def shot(page, name: str, full_page: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)


@pytest.fixture(scope="module")
def chromium_page(tmp_path_factory):
    """One browser page on a fresh, empty profile, for the whole module."""
    if os.environ.get("TUNELAB_SKIP_BROWSER") == "1":
        pytest.skip("TUNELAB_SKIP_BROWSER=1: browser tests skipped on request")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run 'apt-get install chromium' (make test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]' (make test does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(60_000)
        page = context.new_page()
        page.on("pageerror", lambda exc: PAGE_ERRORS.append(str(exc)))
        yield page
        context.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A real studio process with a 1 MB upload limit; tiny runs train on one thread (they gain nothing from two)."""
    root = tmp_path_factory.mktemp("studio")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        with studio_server(root / "out", root / "studio_data", "--max-upload-mb", "1", cwd=root, env=env) as url:
            yield {"url": url, "root": root, "out": root / "out"}
    finally:
        stop_leftovers(root / "studio_data")


@pytest.fixture(scope="module")
def quickstart_run(studio):
    """The SmolLM2 quick start (LoRA), cut to one training step on one row so it is fast; started at once in the
    background, in the studio's output directory, the way a user runs it from a terminal."""
    overrides = [
        f"output_directory={studio['out']}",
        "training.max_steps=1",
        "training.batch_size=1",
        "training.evaluate_before_training=false",
        "dataset.validation_size=1",
        "prediction.max_length_inference=4",
    ]
    args = [TUNELAB, "train", *[x for item in overrides for x in ("--set", item)]]
    log = open(studio["root"] / "quickstart.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=studio["root"])
    yield proc
    if proc.poll() is None:  # a test failed before waiting for it
        proc.kill()
    proc.wait(60)
    log.close()


def quickstart_faq() -> str:
    from tunelab.quickstart import faq_path

    return faq_path()


def open_page(page, url: str, hash_: str) -> None:
    page.goto(f"{url}/#/{hash_}")
    page.wait_for_selector("#page[data-ready='1']")


def test_upload_and_preview_a_csv(chromium_page, studio, sentiment_csv, tiny_bert, tmp_path, quickstart_run):
    page = chromium_page
    open_page(page, studio["url"], "datasets")
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "a,b\n" * 400_000)  # 1.6 MB, over the 1 MB limit
    page.set_input_files("#upload-file", str(big))
    page.click("#upload")
    page.wait_for_selector("#upload-error:has-text('larger than the upload limit')")
    page.set_input_files("#upload-file", str(sentiment_csv))
    page.click("#upload")
    page.wait_for_function("document.querySelector('#data-path')?.value.endsWith('sentiment.csv')")
    assert page.input_value("#ds-problem") == "classification" and page.input_value("#ds-label") == "label"
    page.fill("#ds-backbone", str(tiny_bert))
    page.click("#inspect")
    page.wait_for_selector("#detected-format")
    assert page.inner_text("#detected-format") == "classification"
    assert "nothing wrong" in page.inner_text("#findings")
    assert page.locator(".preview-row").count() == 5 and "great movie 0 great" in page.inner_text(
        ".preview-row >> nth=0"
    )
    assert page.locator("svg.chart[aria-label='token lengths'] rect").count() > 2
    shot(page, "datasets", full_page=True)


def test_experiment_start_stop_resume_finish_and_report(chromium_page, studio, sentiment_csv, tiny_bert):
    page = chromium_page
    page.click("#use-dataset")  # from the Datasets page: file, problem type and columns come along
    page.wait_for_selector("#page[data-ready='1'] [name='training.max_steps']")
    assert page.input_value("[name='dataset.train_dataframe']").endswith("sentiment.csv")
    assert page.input_value("[name='problem_type']") == "classification"
    shot(page, "new_experiment")
    page.fill("[name='training.learning_rate']", "fast")
    page.wait_for_selector("[data-error-for='training.learning_rate']:has-text('valid number')")
    if SHOTS:
        page.locator("[data-field='training.learning_rate']").evaluate("e => e.scrollIntoView({block: 'center'})")
        shot(page, "new_experiment_error")
    values = classification_values(tiny_bert, sentiment_csv, "sentiment-tiny", STEPS)
    if SHOTS:
        values["training.evaluation_epochs"] = "25"  # metric curves with more than two points, for the pictures
    came_along = ("problem_type", "dataset.train_dataframe", "dataset.prompt_column", "dataset.label_column")
    for path in [p for p in values if p not in came_along]:
        group = page.locator(f"details[data-group='{path.split('.')[0] if '.' in path else 'basics'}']")
        if group.get_attribute("open") is None:
            group.locator("summary").click()  # a collapsed section opens like any <details>
        page.fill(f"[name='{path}']", values[path])
    page.wait_for_selector("[data-error-for='training.learning_rate']:text-is('')", state="attached")
    page.click("#review")
    page.wait_for_selector("#plan-summary, #plan .error-box, #form-error .error-box")
    assert page.locator("#plan-summary").count() == 1, page.inner_text("#page")[-2000:]
    assert "fits" in page.inner_text("#plan-summary") and f"{STEPS:,} steps" in page.inner_text("#plan-summary")
    page.locator("#start").scroll_into_view_if_needed()
    shot(page, "new_experiment_plan")
    page.click("#start")
    page.wait_for_selector("#run-charts svg.chart polyline")  # the live chart has points: the run trains
    if SHOTS:
        page.wait_for_timeout(5000)
        shot(page, "run_live")
    page.click("[data-action='stop']")
    ended = "#run-head .badge[data-status='{}'], #run-head .badge[data-status='failed']"
    page.wait_for_selector(ended.format("stopped"), timeout=120_000)
    assert page.get_attribute("#run-head .badge", "data-status") == "stopped", page.inner_text("#run-error")
    page.click("[data-action='resume']")
    page.wait_for_selector(ended.format("finished"), timeout=300_000)
    assert page.get_attribute("#run-head .badge", "data-status") == "finished", page.inner_text("#run-error")
    shot(page, "run_finished")
    open_page(page, studio["url"], "runs")
    row = page.locator("tr[data-name='sentiment-tiny']")
    assert row.get_attribute("data-status") == "finished"
    assert "accuracy" in row.locator("td.metrics").inner_text()
    row.locator("a").click()
    page.click("#open-report")
    frame = page.frame_locator("#report-frame")
    frame.locator("text=accuracy").first.wait_for()
    shot(page, "report")
    page.click("text=← back to the run")
    page.click("text=New experiment from this config")  # start from a previous run's config
    page.wait_for_function(  # the form is rendered after the page changes: the field may not exist yet
        "document.querySelector(\"[name='experiment_name']\")?.value === 'sentiment-tiny-2'"
    )
    assert page.input_value("[name='llm_backbone']") == str(tiny_bert)
    assert page.input_value("[name='training.max_steps']") == str(STEPS)
    assert not PAGE_ERRORS


def test_chat_with_the_quickstart_run_streams(chromium_page, studio, quickstart_run):
    page = chromium_page
    assert quickstart_run.wait(600) == 0, (studio["root"] / "quickstart.log").read_text()[-3000:]
    open_page(page, studio["url"], "chat")
    page.select_option("#chat-a", label="quickstart (fine-tuned)")
    page.select_option("#chat-b", label="quickstart — its base model")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-input", "What is tunelab?")
    page.click("#chat-send")
    # streamed: text shows while the answer is still being generated, then the answer completes
    page.wait_for_function(
        "[...document.querySelectorAll('#transcript-A .msg.assistant.streaming')].some(e => e.textContent.length > 0)"
    )
    page.wait_for_selector("#transcript-A .msg.assistant.done")
    page.wait_for_selector("#transcript-B .msg.assistant.done")
    answer = page.inner_text("#transcript-A .msg.assistant")
    assert len(answer.strip()) > 3 and "Error" not in answer
    shot(page, "chat")


def test_compare_and_export_pages(chromium_page, studio):
    page = chromium_page
    # a chat-template rendering: the prompt's tokens are shown masked, the answer's trained
    open_page(page, studio["url"], "datasets")
    page.fill("#data-path", quickstart_faq())
    page.select_option("#ds-problem", "causal_lm")
    page.fill("#ds-backbone", "smollm2-135m-instruct")
    page.fill("#ds-prompt", "question")
    page.fill("#ds-answer", "answer")
    page.fill("#ds-label", "")
    page.click("#inspect")
    page.wait_for_selector("#detected-format:text-is('columns')")
    first = page.locator(".preview-row pre.tokens").first
    assert "<|im_start|>" in first.locator(".tok:not(.trained)").first.inner_text()  # SmolLM2's chat template
    assert first.locator(".tok.trained").count() >= 1 and first.locator(".tok:not(.trained)").count() >= 1
    page.locator("text=Rows as the model sees them").evaluate("e => e.scrollIntoView()")
    shot(page, "datasets_chat_template")
    open_page(page, studio["url"], "runs")
    shot(page, "experiments")
    for name in ("sentiment-tiny", "quickstart"):
        page.locator(f"tr[data-name='{name}'] input[type=checkbox]").check()
    page.click("#compare")
    page.wait_for_selector("#config-diff")
    assert "llm_backbone" in page.inner_text("#config-diff") and "problem_type" in page.inner_text("#config-diff")
    shot(page, "compare", full_page=True)
    open_page(page, studio["url"], "export")
    page.select_option("#export-run", label="sentiment-tiny (classification)")
    page.click("#export-start")
    page.wait_for_selector("#exports-table tr[data-export='adapter'] .badge[data-status='passed']", timeout=300_000)
    shot(page, "export")
    assert not PAGE_ERRORS
