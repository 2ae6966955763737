"""The dashboard in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``) driven by
Selenium, pages opened from ``file://`` as a reader would.

Skipped when Chromium, its driver or Selenium is missing, except under CI (the CI environment variable is
set), where a missing browser fails the run: these tests must not be silently skipped there. One driver
session serves the whole module; every test ends by checking the browser console held no error.
"""

from __future__ import annotations

import os
import shutil

import pytest

from saex.dashboard.site import write_site
from tests.dashboard import _synth as synth

CHROMEDRIVER = "/usr/bin/chromedriver"
BIG = 20_000


def _browser_or_skip():
    reason = None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[test]')"
    if reason is None and not chromium:
        reason = "Debian chromium is not installed (apt-get install chromium chromium-driver)"
    if reason is None and not os.access(CHROMEDRIVER, os.X_OK):
        reason = f"{CHROMEDRIVER} is missing (apt-get install chromium-driver)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    return chromium


@pytest.fixture(scope="module")
def driver():
    chromium = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver's path given explicitly: Selenium Manager would try to download one
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return write_site(tmp_path_factory.mktemp("browser") / "dash", synth.META, synth.rows(), synth.payloads())


@pytest.fixture(scope="module")
def big_site(tmp_path_factory):
    rows = [
        {
            "id": i,
            "density": (i % 97) / 1e4,
            "max": float(i % 11),
            "score": None if i % 3 else (i % 89) / 89,
            "explanation": f"feature number {i}",
        }
        for i in range(BIG)
    ]
    return write_site(tmp_path_factory.mktemp("browser-big") / "dash", {"dictionary": "big"}, rows, [synth.payload(0)])


@pytest.fixture
def browser(driver):
    """The driver, with the console checked for errors after the test."""
    driver.get_log("browser")  # drop what earlier tests left
    yield driver
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors


def _wait(driver, cond, timeout=10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def _open(driver, url, ready):
    """Load a page and wait until it has drawn (body data-ready: "1" on the index, the id on a feature page)."""
    driver.get(url)
    _wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == ready)


def _ids(driver) -> list[int]:
    return [
        int(x)
        for x in driver.execute_script(
            "return Array.from(document.querySelectorAll('#rows tr')).map(tr => tr.getAttribute('data-id'))"
        )
    ]


def _search(driver, text):
    box = driver.find_element("id", "search")
    box.clear()
    if text:
        box.send_keys(text)
    else:  # clear() fires no input event
        driver.execute_script("arguments[0].dispatchEvent(new Event('input'))", box)
    _wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-query") == text)


def _assert_not_pwned(driver):
    from selenium.common.exceptions import NoAlertPresentException

    assert driver.execute_script("return window.__pwned") is None
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    # only our own scripts (each with a src) are in the document
    assert driver.execute_script("return document.querySelectorAll('script:not([src])').length") == 0
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0


def test_index_lists_every_row(browser, site):
    _open(browser, site.joinpath("index.html").as_uri(), "1")
    assert _ids(browser) == synth.IDS
    assert browser.find_element("id", "status").text == f"{len(synth.IDS)} features"
    cells = browser.find_elements("css selector", f'#rows tr[data-id="{synth.HTML_EXPL}"] td')
    assert cells[4].text == synth.HOSTILE_EXPLANATION  # HTML in an explanation is shown as text
    _assert_not_pwned(browser)


def test_search_filters_by_explanation_and_id(browser, site):
    _open(browser, site.joinpath("index.html").as_uri(), "1")
    _search(browser, "RIVER")
    assert _ids(browser) == [i for i in synth.IDS if "river" in (synth.explanation(i) or "").lower()]
    _search(browser, "7")
    assert _ids(browser) == [i for i in synth.IDS if "7" in str(i) or "7" in (synth.explanation(i) or "")]
    _search(browser, "onerror")
    assert _ids(browser) == [synth.HTML_EXPL]
    _search(browser, "")
    assert len(_ids(browser)) == len(synth.IDS)


def test_sorting_by_score_and_density(browser, site):
    from selenium.webdriver.support.ui import Select

    _open(browser, site.joinpath("index.html").as_uri(), "1")
    Select(browser.find_element("id", "sort")).select_by_value("score")
    scored = sorted((i for i in synth.IDS if synth.score(i) is not None), key=lambda i: (-synth.score(i), i))
    unscored = [i for i in synth.IDS if synth.score(i) is None]
    assert _ids(browser) == scored + unscored  # descending, missing scores last
    browser.find_element("id", "dir").click()
    assert _ids(browser) == sorted(scored, key=lambda i: (synth.score(i), i)) + unscored
    browser.find_element("css selector", 'th[data-key="density"]').click()
    assert _ids(browser) == sorted(synth.IDS, key=lambda i: (-synth.density(i), i))
    browser.find_element("css selector", 'th[data-key="density"]').click()
    assert _ids(browser) == sorted(synth.IDS, key=lambda i: (synth.density(i), i))


def test_clicking_a_row_opens_its_feature_page(browser, site):
    _open(browser, site.joinpath("index.html").as_uri(), "1")
    browser.find_element("css selector", '#rows tr[data-id="12"] td:nth-child(5)').click()
    _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "12")
    assert browser.current_url.endswith("feature.html#12")
    assert browser.find_element("id", "feature-title").text == "Feature 12"
    # prev / next skip the missing id 13
    browser.find_element("id", "next").click()
    _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "14")
    assert browser.find_element("id", "feature-title").text == "Feature 14"
    browser.find_element("id", "prev").click()
    _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "12")
    browser.back()
    browser.back()
    browser.back()
    _wait(browser, lambda d: d.current_url.split("#")[0].endswith("index.html"))


def test_hostile_tokens_are_text_and_run_nothing(browser, site):
    _open(browser, site.joinpath("feature.html").as_uri() + f"#{synth.RICH}", str(synth.RICH))
    spans = browser.find_elements("css selector", "#examples section:first-child .tok")
    texts = [s.get_attribute("textContent") for s in spans]
    visible = {"\n": "↵", "\t": "→", "": "∅"}
    assert texts == [visible.get(t, t) for t in synth.RICH_TOKENS]
    assert synth.SCRIPT in texts and synth.IMG in texts and "&amp;" in texts and '"quoted"' in texts
    titles = [s.get_attribute("title") for s in spans]
    assert titles[2] == '"<script>alert(1)</script>"  activation 3.5'
    assert titles[6] == '"\\n"  activation 2'  # exact value on hover, the raw token JSON-quoted
    # colour ∝ activation / max (3.5): the script token is fully coloured, " river" at 1/14
    bg = [browser.execute_script("return arguments[0].style.backgroundColor", s) for s in spans]
    assert bg[2] == "rgb(255, 120, 0)" and bg[0] == ""
    assert bg[1].startswith("rgba(255, 120, 0, ") and abs(float(bg[1][18:-1]) - 0.25 / 3.5) < 0.005
    assert bg[5].startswith("rgba(255, 120, 0, ") and abs(float(bg[5][18:-1]) - 0.125 / 3.5) < 0.005
    assert bg[10] == "rgb(40, 110, 255)"  # the one negative activation, at the negative scale
    _assert_not_pwned(browser)


def test_explanation_with_html_is_text(browser, site):
    _open(browser, site.joinpath("feature.html").as_uri() + f"#{synth.HTML_EXPL}", str(synth.HTML_EXPL))
    assert browser.find_element("css selector", "#explanation blockquote").text == synth.HOSTILE_EXPLANATION
    assert browser.find_elements("css selector", "#explanation b") == []
    _assert_not_pwned(browser)


def test_analysis_panels_show_their_data(browser, site):
    _open(browser, site.joinpath("feature.html").as_uri() + f"#{synth.RICH}", str(synth.RICH))
    h = synth.histogram()
    rects = browser.execute_script(
        "return Array.from(document.querySelectorAll('#histogram rect')).map(r => "
        "[r.getAttribute('data-label'), +r.getAttribute('data-count'), +r.getAttribute('height')])"
    )
    want = [(s["label"], c) for b in range(10) for s in h["series"] if (c := s["counts"][b])]
    assert [(r[0], r[1]) for r in rects] == want
    ymax = max(sum(s["counts"][b] for s in h["series"]) for b in range(10))
    assert all(abs(r[2] - r[1] / ymax * 178) < 0.01 for r in rects)  # bar height ∝ count (plot height 178)
    legend = [li.get_attribute("textContent") for li in browser.find_elements("css selector", "#histogram li")]
    assert legend == [f"{synth.SCRIPT} 16", "↵ 3", "other 28"]
    assert "47 activations counted of 120" in browser.find_element("id", "histogram").text

    def col(sel):
        return [e.get_attribute("textContent") for e in browser.find_elements("css selector", sel)]

    oe = synth.output_effect()
    assert col("#output-effect table.neg .tok") == [x["token"] for x in oe["decreased"]]
    assert col("#output-effect table.pos .tok") == [x["token"] for x in oe["increased"]]
    assert col("#output-effect table.neg td.num") == ["-0.75", "-0.25"]
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('#output-effect table.neg .bar')).map(b => b.style.width)"
    )
    assert widths == ["100%", "33.3%"]
    lens = synth.logit_lens()
    assert col("#logit-lens .two > div:first-child .tok") == [x["token"] for x in lens["top"]]
    assert col("#logit-lens .two > div:last-child .tok") == [x["token"] for x in lens["bottom"]]
    assert "3 high-norm tokens excluded" in browser.find_element("id", "logit-lens").text
    assert col("#upstream .fid") == ["7", "42", "5", "43"]
    assert col("#upstream ul.tree > li > ul > li > ul > li .fid") == ["5"]  # nesting kept
    assert col("#upstream .effect") == [" effect 0.75", " effect 0.125", " effect 0.0625"]
    scores = col("#scores tbody td")
    assert scores[:4] == ["offline-table-8/cunningham2023", f"{synth.score(synth.RICH):.3f}", "0.500", "—"]
    assert col("#examples h3") == ["Top activations", "Decile 10 of 10 (highest)", "Random <activating>"]
    assert col("#examples section:nth-child(2) .empty") == ["no examples"]
    _assert_not_pwned(browser)


def test_null_fields_say_not_computed(browser, site):
    _open(browser, site.joinpath("feature.html").as_uri() + f"#{synth.EMPTY}", str(synth.EMPTY))
    for panel in ("explanation", "scores", "histogram", "output-effect", "logit-lens", "upstream"):
        assert browser.find_element("id", panel).text == "not computed", panel
    # a feature with examples but no analyses
    browser.find_element("id", "prev").click()
    _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == str(synth.RICH))
    browser.find_element("id", "goto-id").send_keys("0\n")
    _wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "0")
    assert browser.find_element("id", "histogram").text == "not computed"
    assert browser.find_element("id", "explanation").text == synth.explanation(0)


def test_not_computed_says_why(browser, tmp_path):
    why = {"logit_lens": f"MLP neurons {synth.IMG}", "output_effect": "run saex case-study"}
    p = synth.payload(synth.EMPTY) | {"not_computed": why}
    site = write_site(tmp_path / "dash", synth.META, [r for r in synth.rows() if r["id"] == synth.EMPTY], [p])
    _open(browser, site.joinpath("feature.html").as_uri() + f"#{synth.EMPTY}", str(synth.EMPTY))
    assert browser.find_element("id", "logit-lens").text == f"not computed (MLP neurons {synth.IMG})"
    assert browser.find_element("id", "output-effect").text == "not computed (run saex case-study)"
    assert browser.find_element("id", "histogram").text == "not computed"
    _assert_not_pwned(browser)


def test_a_missing_feature_says_so(driver, site):
    driver.get_log("browser")
    _open(driver, site.joinpath("feature.html").as_uri() + "#13", "missing")
    assert driver.find_element("id", "message").text == "Feature 13 is not in this dashboard."
    # the only console entry is the failed load of its data file
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 1 and "data/f/0/13.js" in errors[0]["message"], errors


def test_twenty_thousand_features_render_one_page(browser, big_site):
    _open(browser, big_site.joinpath("index.html").as_uri(), "1")
    assert browser.find_element("id", "status").text == f"{BIG} features"
    assert _ids(browser) == list(range(100))  # one page of rows in the document, not 20,000
    assert browser.execute_script("return document.querySelectorAll('tr').length") == 101
    assert browser.find_element("id", "page").text == f"page 1 of {BIG // 100}"
    browser.find_element("id", "next-page").click()
    assert _ids(browser) == list(range(100, 200))
    browser.find_element("id", "last-page").click()
    assert _ids(browser) == list(range(BIG - 100, BIG))
    _search(browser, "number 1999")
    assert _ids(browser) == [1999] + list(range(19990, 20000))
    assert browser.find_element("id", "page").text == "page 1 of 1"
    # the view is kept in the URL, so coming back from a feature page restores it
    assert "q=number%201999" in browser.current_url
